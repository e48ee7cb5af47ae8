"""Training: ``python -m egoexor.train --config configs/egoexor.yaml [--flag value ...]``.

A subclass of the HF ``Trainer`` that overrides only what differs from it:

* ``compute_loss``: cross entropy weighted per target token, w = 1 / (ln count + 1) from
  ``--token_weight_path``; tokens absent from the file (EOS included) get min(w) / 100; normalised by
  the sum of weights (``CrossEntropyLoss(weight=w)``, the reference's loss). Plain mean CE without a file.
* ``create_optimizer``: the reference's four groups (decay or not x projector or not), the projector
  at ``--mm_projector_lr``.
* ``_get_train_sampler``: ``--group_by_modality_length``, the reference's length-grouped sampler.
* ``_save`` / ``_load_from_checkpoint``: a checkpoint holds the peft adapter, every other trained
  weight in ``non_lora_trainables.safetensors`` (projector, pooler, encoders, unfrozen CLIP layers,
  and the frozen random PTv3 draw with its statistics), the resolved ``egoexor_config.json`` and the
  tokenizer; resuming restores all of it (the reference restored only LoRA). Only the writing rank
  (``should_save``) writes them.
* ``_save_checkpoint``: a checkpoint appears under its name only when complete (see there).
* ``evaluation_loop``: the Trainer's ``eval_loss`` on ``--eval_data_path`` (``compute_loss``, the weighted loss),
  and with ``--eval_generate_samples N`` the macro F1 of answers generated for N of its samples
  (``eval_macro_f1``, :func:`egoexor.infer.generate_shard` scored by :func:`egoexor.evaluate.evaluate`).
* ``_load_best_model``: ``--load_best_model_at_end`` restores the best checkpoint's weights as a resume does; the
  final model saved in ``--output_dir`` is then that checkpoint's.

DeepSpeed (``--deepspeed configs/zero2.json``), torchrun DDP, mixed precision (``--bf16``), gradient
checkpointing, logging (``--report_to``) and resume (``--resume_from_checkpoint``) are the Trainer's.

The command follows :mod:`egoexor.cli`: a bad flag, sample file, HDF5 file or output folder is one line
``egoexor.train: error: ...`` (exit 2) before any model is loaded. A stop signal during training (SIGTERM
from a cluster stopping or preempting the job, SIGHUP, SIGQUIT, Ctrl-C) lets the current step finish, saves
``checkpoint-N`` and exits with one line naming it and 128 + the signal's number (143 for SIGTERM);
``--save_on_signal False`` stops at once without saving. Before and after training a signal stops at once. An
``--output_dir`` holding an earlier run is refused unless it is resumed (``--resume_from_checkpoint``
True or one of its checkpoints) or replaced (``--overwrite_output_dir``); one that is an input folder or
holds an input file is always refused. ``kill -9`` at any moment leaves every ``checkpoint-N`` complete;
the next run removes what the killed one left in ``<output_dir>/.partial`` and names it.

The Python API is :func:`train`, given the :class:`TrainSetup` that :func:`egoexor.config.parse_train_args`
makes of the flags; :func:`build_training` stops short of training and returns the trainer.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import reprlib
import shutil
import sys
import tempfile
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import fields, replace
from pathlib import Path

import torch
from huggingface_hub.utils import logging as hub_logging
from torch.utils.data import Sampler
from transformers import Trainer, TrainerCallback
from transformers.trainer import TRAINER_STATE_NAME, TRAINING_ARGS_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from egoexor import atomic, cli, signals
from egoexor.config import (
    COMMON_NAMES,
    ConfigError,
    TrainSetup,
    asks_for_help,
    checkpoint_config,
    data_for_model,
    parse_train_args,
    read_checkpoint_config,
    train_help,
)
from egoexor.convert_reference import is_reference_checkpoint
from egoexor.data import layout
from egoexor.data.dataset import EgoExorDataset
from egoexor.data.processor import Collator, SampleInputError
from egoexor.data.reader import ReadError
from egoexor.data.samples import Sample, SampleError, check_in_hdf5, load_samples
from egoexor.model.build import CONFIG_FILE, NON_LORA_FILE, load_checkpoint_weights, save_checkpoint
from egoexor.model.egoexor_llava import next_token_loss

COMMAND = "egoexor.train"
logger = logging.getLogger(COMMAND)

#: The folder in ``--output_dir`` where checkpoints (and the final model) are written before they are
#: renamed into place; what a killed run leaves there is removed by the next one.
STAGING = ".partial"
#: Where ``--overwrite_output_dir`` keeps the earlier run's checkpoints until this run has saved its model.
EARLIER_RUN = ".earlier-run"
#: Files a checkpoint cannot be resumed without. The Trainer writes trainer_state.json last.
CHECKPOINT_FILES = (NON_LORA_FILE, CONFIG_FILE, TRAINER_STATE_NAME)
_CHECKPOINT_NAME = re.compile(rf"{PREFIX_CHECKPOINT_DIR}-(\d+)")
#: Ranges of the ``TrainingArguments`` fields training depends on, which the Trainer itself accepts
#: (a negative learning rate or batch size fails only after the model is built, or trains nonsense):
#: (field, low, high, low excluded). num_train_epochs: any finite value (max_steps may override it).
_TRAINER_RANGES = (
    ("learning_rate", 0, None, True),
    ("per_device_train_batch_size", 1, None, False),
    ("per_device_eval_batch_size", 1, None, False),
    ("gradient_accumulation_steps", 1, None, False),
    ("num_train_epochs", None, None, False),
    ("warmup_steps", 0, None, False),
    ("weight_decay", 0, None, False),
    ("max_grad_norm", 0, None, False),
    ("adam_beta1", 0, 1, False),
    ("adam_beta2", 0, 1, False),
    ("adam_epsilon", 0, None, True),
    ("dataloader_num_workers", 0, None, False),
    ("seed", 0, 2**32 - 1, False),
)


def token_weights(path: str | os.PathLike, tokenizer, vocab_size: int) -> torch.Tensor:
    """Per-token loss weights from a ``{piece: count}`` file (see the module docstring)."""
    try:
        counts = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ConfigError(f"{path}: cannot read the token-frequency file ({error})") from None
    if not isinstance(counts, dict) or not all(isinstance(c, int) and c >= 1 for c in counts.values()):
        raise ConfigError(f"{path}: expected a JSON object of token -> count >= 1")
    if not counts:
        raise ConfigError(f"{path}: the token-frequency file is empty")
    ids = tokenizer.convert_tokens_to_ids(list(counts))
    unknown = [piece for piece, i in zip(counts, ids, strict=True) if i is None or i == tokenizer.unk_token_id]
    if unknown:
        raise ConfigError(f"{path}: {len(unknown)} token(s) unknown to the tokenizer, e.g. {unknown[:3]}")
    listed = torch.tensor([1.0 / (math.log(count) + 1.0) for count in counts.values()])
    weights = torch.full((vocab_size,), float(listed.min()) / 100)
    weights[torch.tensor(ids)] = listed
    return weights


def modality_length(sample: Sample) -> int:
    """The reference's sampling length: words over both turns."""
    return len(sample.question.split()) + len(sample.answer.split())


def length_grouped_indices(lengths: Sequence[int], batch_size: int, world_size: int, generator) -> list[int]:
    """The reference's order: random megabatches of ``world_size x batch_size``, each sorted by length
    (longest first) and split greedily into ``world_size`` chunks of balanced total length."""
    indices = torch.randperm(len(lengths), generator=generator).tolist()
    size = world_size * batch_size
    order = []
    for start in range(0, len(indices), size):
        megabatch = sorted(indices[start : start + size], key=lambda i: lengths[i], reverse=True)
        chunks: list[list[int]] = [[] for _ in range(world_size)]
        totals = [0] * world_size
        per_chunk = len(megabatch) // world_size
        for i in megabatch:
            open_chunks = [c for c in range(world_size) if len(chunks[c]) < per_chunk] or list(range(world_size))
            target = min(open_chunks, key=lambda c: totals[c])
            chunks[target].append(i)
            totals[target] += lengths[i]
        order += [i for chunk in chunks for i in chunk]
    return order


class LengthGroupedSampler(Sampler):
    def __init__(self, lengths: Sequence[int], batch_size: int, world_size: int, seed: int) -> None:
        self.lengths, self.batch_size, self.world_size, self.seed = list(lengths), batch_size, world_size, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.lengths)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(length_grouped_indices(self.lengths, self.batch_size, self.world_size, generator))


class _EpochToDataset(TrainerCallback):
    """Tells the dataset the epoch, so that its random view subsets and dropout change every epoch."""

    def __init__(self, dataset: EgoExorDataset) -> None:
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.dataset.set_epoch(int(state.epoch or 0))


class _StopAfterStep(TrainerCallback):
    """``--save_on_signal``: a stop signal held back during a step (:func:`egoexor.signals.deferred`) ends
    training once the step is done, with a checkpoint. Every rank stops at the same step: the ranks agree on
    the signal before they decide (a signal may reach one rank a step before another)."""

    def on_step_end(self, args, state, control, **kwargs):
        received = torch.tensor([signals.pending() or 0], device=args.device)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(received, torch.distributed.ReduceOp.MAX)
        if received.item():
            control.should_save = control.should_training_stop = True


def spread(samples: Sequence[Sample], n: int) -> list[Sample]:
    """``n`` samples spread evenly over ``samples`` (every take of a validation file, not the first one's frames)."""
    return [samples[i * len(samples) // n] for i in range(n)]


class EgoExorTrainer(Trainer):
    def __init__(self, *args, setup: TrainSetup, token_weights: torch.Tensor | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.setup = setup
        self.token_weights = token_weights
        #: The fixed validation samples whose generated answers make ``eval_macro_f1`` (``--eval_generate_samples``).
        self.generation_dataset = None
        if setup.train.eval_generate_samples:
            dataset = self.eval_dataset
            self.generation_dataset = EgoExorDataset(
                spread(dataset.samples, setup.train.eval_generate_samples),
                setup.train.hdf5_path,
                dataset.tokenizer,
                dataset.config,
                "generate",
            )
        self.add_callback(_EpochToDataset(self.train_dataset))
        if setup.train.save_on_signal:
            self.add_callback(_StopAfterStep())
        self._saving_checkpoint = False

    def _prepare_inputs(self, inputs):
        """As the Trainer's, but point coordinates keep float32: DeepSpeed would cast metres to bf16 (~1 cm steps)."""
        prepared = super()._prepare_inputs(inputs)
        prepared["point_cloud"] = inputs["point_cloud"].to(self.args.device)
        return prepared

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs["labels"]
        outputs = model(**{k: v for k, v in inputs.items() if k != "labels"})
        loss = next_token_loss(outputs["logits"], labels, self.token_weights)
        return (loss, outputs) if return_outputs else loss

    def create_optimizer(self, model=None):
        if self.optimizer is not None:
            return self.optimizer
        model = self.model if model is None else model
        decay = set(self.get_decay_parameter_names(model))
        projector_lr = self.setup.train.mm_projector_lr or self.args.learning_rate
        groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
        for name, parameter in model.named_parameters():
            if parameter.requires_grad:
                groups.setdefault((name in decay, "mm_projector" in name), []).append(parameter)
        parameter_groups = [
            {
                "params": params,
                "weight_decay": self.args.weight_decay if decayed else 0.0,
                **({"lr": projector_lr} if projector else {}),
            }
            for (decayed, projector), params in sorted(groups.items())
        ]
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
        self.optimizer = optimizer_cls(parameter_groups, **optimizer_kwargs)
        return self.optimizer

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if not self.setup.train.group_by_modality_length:
            return super()._get_train_sampler(train_dataset)
        world = self.args.world_size * self.args.gradient_accumulation_steps
        lengths = [modality_length(s) for s in dataset.samples]
        return LengthGroupedSampler(lengths, self.args.train_batch_size, world, self.args.seed)

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        if not self.args.should_save:  # under torchrun every rank gets here; one writes
            return
        output = Path(output_dir or self.args.output_dir)
        model = self.accelerator.unwrap_model(self.model)
        save_checkpoint(model, output, checkpoint_config(self.setup.model, self.setup.data))
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output)
        with atomic.atomic_output(output / TRAINING_ARGS_NAME) as temporary:
            torch.save(self.args, temporary)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        load_checkpoint_weights(self.accelerator.unwrap_model(model or self.model), Path(resume_from_checkpoint))

    def _load_best_model(self) -> None:
        """The best checkpoint's weights, as a resume loads them (the Trainer's looks for a plain peft model)."""
        logger.info("loading the best model, %s (%s)", self.state.best_model_checkpoint, self.state.best_metric)
        self._load_from_checkpoint(self.state.best_model_checkpoint)

    def evaluation_loop(self, *args, metric_key_prefix: str = "eval", **kwargs):
        """The Trainer's (the loss), and the generated macro F1 with ``--eval_generate_samples``."""
        output = super().evaluation_loop(*args, metric_key_prefix=metric_key_prefix, **kwargs)
        if self.generation_dataset is not None:
            output.metrics[f"{metric_key_prefix}_macro_f1"] = self.generated_macro_f1()
        return output

    def generated_macro_f1(self) -> float:
        """Macro F1 (``--eval_protocol``) of greedy answers for the fixed validation subset; NaN where the protocol
        scores no pair. Every process generates the same answers (a small subset), so all agree on the best model;
        the random state is forked: evaluating does not change what training draws next."""
        from egoexor import evaluate
        from egoexor.infer import MAX_NEW_TOKENS, generate_shard

        dataset, device = self.generation_dataset, self.args.device
        model = self.accelerator.unwrap_model(self.model)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            with tempfile.TemporaryDirectory() as folder:
                log = Path(folder) / "answers.jsonl"
                texts = generate_shard(
                    model, dataset, log, self.args.eval_batch_size, MAX_NEW_TOKENS, device, progress=False
                )
        records = [sample.to_record() for sample in dataset.samples]
        macro = evaluate.evaluate(texts, records, self.setup.train.eval_protocol, bootstrap=0)["overall"]["macro"]
        return math.nan if macro is None else macro["f1-score"]

    def train(self, *args, **kwargs):
        """The Trainer's, once the writing rank has prepared ``--output_dir`` (:func:`prepare_output_dir`)."""
        if self.args.should_save:
            prepare_output_dir(Path(self.args.output_dir), self.setup.train.overwrite_output_dir)
        return super().train(*args, **kwargs)

    def _get_output_dir(self, trial) -> str:
        """The staging folder while a checkpoint is saved: the Trainer writes ``checkpoint-N`` there."""
        run_dir = super()._get_output_dir(trial)
        return os.path.join(run_dir, STAGING) if self._saving_checkpoint else run_dir

    def _save_checkpoint(self, model, trial) -> None:
        """The Trainer's checkpoint, made to appear under its name only when complete.

        The Trainer writes ``checkpoint-N`` file by file (model, optimizer, scheduler, each rank's RNG
        state, trainer state last). Here it writes them into ``<output_dir>/.partial/checkpoint-N``; once
        every rank is done, the writing rank fsyncs the folder and renames it to ``checkpoint-N``
        (:func:`egoexor.atomic.atomic_folder`; an existing one is swapped out atomically), then applies
        ``--save_total_limit``, which the Trainer's own rotation, run on the staging folder, leaves
        undone, never removing the best checkpoint (``--load_best_model_at_end`` loads it at the end). The
        Trainer names the best checkpoint by the folder it saved into: when that is this one, the name becomes
        its final one, in the state and in the checkpoint's ``trainer_state.json``.
        """
        run_dir = Path(self._get_output_dir(trial))
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        self._saving_checkpoint = True
        try:
            with atomic.naming_full_disk(run_dir / name):
                super()._save_checkpoint(model, trial)
        except BaseException:  # Ctrl-C included: leave no half-written folder behind
            if self.args.should_save:
                shutil.rmtree(run_dir / STAGING, ignore_errors=True)
            raise
        finally:
            self._saving_checkpoint = False
        best = self.state.best_model_checkpoint
        if best is not None and Path(best) == run_dir / STAGING / name:
            self.state.best_model_checkpoint = str(run_dir / name)
            if self.args.should_save:
                self.state.save_to_json(str(run_dir / STAGING / name / TRAINER_STATE_NAME))
        self.accelerator.wait_for_everyone()  # every rank has written its part
        if self.args.should_save:
            with atomic.atomic_folder(run_dir / name) as temporary:
                os.replace(run_dir / STAGING / name, temporary)
            for old in rotated_out(run_dir, name, self.args.save_total_limit, self.state.best_model_checkpoint):
                remove_checkpoint(old)
            (run_dir / STAGING).rmdir()

    def save_final_model(self) -> None:
        """The trained model and the trainer state in ``--output_dir`` (what ``egoexor.infer`` reads): written
        into the staging folder, then moved into place file by file, each atomically."""
        staged = Path(self.args.output_dir) / STAGING / "model"
        try:
            self.save_model(str(staged))
            if self.args.should_save:
                self.state.save_to_json(str(staged / TRAINER_STATE_NAME))
                for file in sorted(staged.iterdir()):
                    with atomic.atomic_output(staged.parents[1] / file.name) as temporary:
                        os.replace(file, temporary)
                remove_earlier_run(staged.parents[1])
        finally:  # a stop signal included: no staging folder left behind
            if self.args.should_save:
                shutil.rmtree(staged.parent, ignore_errors=True)


def checkpoint_folders(output_dir: str | os.PathLike) -> list[Path]:
    """The ``checkpoint-N`` folders in ``output_dir``, oldest step first."""
    output = Path(output_dir)
    if not output.is_dir():
        return []
    steps = {int(m.group(1)): p for p in output.iterdir() if (m := _CHECKPOINT_NAME.fullmatch(p.name)) and p.is_dir()}
    return [steps[step] for step in sorted(steps)]


def rotated_out(output_dir: Path, written: str, limit: int | None, best: str | None = None) -> list[Path]:
    """The checkpoints ``--save_total_limit`` removes once ``written`` is saved: all but ``written``, ``best``
    (the best checkpoint's path, which counts towards the limit, as in the Trainer's rotation) and the highest
    steps among the others up to the limit. ``written`` stays even when higher steps exist (after a resume from
    an older checkpoint), and so does ``best`` under a limit of 1; None or 0: no limit."""
    kept = {written, Path(best).name if best else None}
    others = [folder for folder in checkpoint_folders(output_dir) if folder.name not in kept]
    if best and Path(best).name != written:
        limit = limit and max(limit - 1, 1)
    return others[: max(len(others) - limit + 1, 0)] if limit else []


def incomplete(checkpoint: Path) -> str | None:
    """Why ``checkpoint`` cannot be resumed from, or None. (Folders of an older egoexor, written in place,
    or damaged by hand can lack files; a checkpoint this module writes is complete or absent.)"""
    if checkpoint.resolve().parent.name == STAGING:
        return "an interrupted save"
    missing = [name for name in CHECKPOINT_FILES if not (checkpoint / name).is_file()]
    return f"no {', '.join(missing)}" if missing else None


def remove_checkpoint(checkpoint: Path) -> None:
    """Delete a checkpoint folder: renamed into the staging folder first, so that a ``kill -9`` during the
    deletion never leaves a half-deleted folder under the checkpoint's name."""
    aside = checkpoint.parent / STAGING / f"removed-{checkpoint.name}"
    aside.parent.mkdir(exist_ok=True)
    os.replace(checkpoint, aside)
    shutil.rmtree(aside)


def prepare_output_dir(output: Path, overwrite: bool) -> None:
    """Run by the writing rank as training starts, before any rank writes. Removes what killed saves left
    (the staging folder; a checkpoint killed while being renamed into place, i.e. ``atomic``'s temporary of
    a dead process); a warning names what went.

    With ``--overwrite_output_dir`` the earlier run's checkpoints move into :data:`EARLIER_RUN`, out of a
    resume's sight, and are removed only once this run has saved its model (:func:`remove_earlier_run`): a
    stopped run leaves them there. Where that folder exists already (an overwriting run was stopped), it keeps
    the complete run's checkpoints and the stopped run's own are removed."""
    earlier = checkpoint_folders(output) if overwrite else []
    names = ", ".join(folder.name for folder in earlier)
    aside = output / EARLIER_RUN
    if earlier and aside.is_dir():
        for folder in earlier:
            remove_checkpoint(folder)
        cli.warn(COMMAND, f"--overwrite_output_dir: removed {names} of a stopped run ({aside} keeps the earlier run's)")
    elif earlier:
        aside.mkdir()
        for folder in earlier:
            folder.rename(aside / folder.name)
        cli.warn(COMMAND, f"--overwrite_output_dir: the earlier run's {names} moved to {aside} until this run is saved")
    left = []
    for name in sorted({entry.name.split(".")[1] for entry in output.glob(f".{PREFIX_CHECKPOINT_DIR}-*.tmp")}):
        left += atomic.remove_stale_temporaries(output / name)
    if (output / STAGING).is_dir():  # after the removals above, it holds only what killed saves left
        left += sorted((output / STAGING).iterdir())
        shutil.rmtree(output / STAGING)
    if left:
        cli.warn(COMMAND, f"removed what interrupted saves left: {', '.join(map(str, left))}")


def remove_earlier_run(output: Path) -> None:
    """The run has saved its model: the checkpoints ``--overwrite_output_dir`` kept aside go."""
    if (output / EARLIER_RUN).is_dir():
        shutil.rmtree(output / EARLIER_RUN)


def resume_checkpoint(args) -> str | None:
    """``--resume_from_checkpoint``: a complete checkpoint folder, or True for the newest complete one in
    ``--output_dir`` (a warning names the newer, incomplete ones it skips)."""
    value = args.resume_from_checkpoint
    if value is None or str(value).lower() in ("false", "0", "no", ""):
        return None
    if str(value).lower() not in ("true", "1", "yes"):
        folder = Path(value)
        if not folder.is_dir():
            raise cli.CommandError(f"--resume_from_checkpoint {value}: no such folder")
        why = incomplete(folder)
        if why:
            raise cli.CommandError(f"--resume_from_checkpoint {value}: not a complete checkpoint ({why})")
        return str(folder)
    folders = checkpoint_folders(args.output_dir)
    complete = [folder for folder in folders if not incomplete(folder)]
    if not complete:
        found = f" (incomplete: {', '.join(f.name for f in folders)})" if folders else ""
        raise cli.CommandError(
            f"--resume_from_checkpoint True: no complete checkpoint-N folder in {args.output_dir}{found}"
        )
    skipped = folders[folders.index(complete[-1]) + 1 :]
    if skipped:
        cli.warn(
            COMMAND,
            f"resuming from {complete[-1]}, skipping incomplete "
            + ", ".join(f"{folder.name} ({incomplete(folder)})" for folder in skipped),
        )
    return str(complete[-1])


def _input_paths(setup: TrainSetup, resume: str | None) -> tuple[dict[str, str], dict[str, str]]:
    """The run's input files and local input folders, by flag (what ``--output_dir`` may not be or hold)."""
    train, model, data = setup.train, setup.model, setup.data
    files = {
        "--data_path": train.data_path,
        "--eval_data_path": train.eval_data_path,
        "--hdf5_path": train.hdf5_path,
        "--token_weight_path": train.token_weight_path,
        "--audio_cache": data.audio_cache,
        "--config": setup.config_file,
        "--init_from": train.init_from,  # a folder, which --output_dir may not hold either
    }
    folders = {
        "--tokenizer": train.tokenizer,
        "--model_name_or_path": model.model_name_or_path,
        "--vision_tower": model.vision_tower,
        "--audio_encoder": data.audio_encoder,
        "--resume_from_checkpoint": resume,
        "--init_from": train.init_from,
    }
    return (
        {flag: path for flag, path in files.items() if path is not None},
        {flag: path for flag, path in folders.items() if path is not None and Path(path).is_dir()},
    )


def check_output_dir(setup: TrainSetup, resume: str | None) -> None:
    """The overwrite rule for ``--output_dir``: never an input folder nor one holding an input file; an
    earlier run there (checkpoints, a trained model) is refused unless this run resumes it (from a
    checkpoint in it) or replaces it (``--overwrite_output_dir``)."""
    output = Path(setup.trainer.output_dir)
    files, folders = _input_paths(setup, resume)
    for flag, folder in folders.items():
        if cli.same_file(folder, output):
            raise cli.CommandError(f"--output_dir {output}: is the {flag} folder; write the output elsewhere")
    for flag, file in files.items():
        if output.resolve() in Path(file).resolve().parents:
            raise cli.CommandError(f"--output_dir {output}: holds the {flag} file {file}; write the output elsewhere")
    output = cli.check_output(output, folder=True, overwrite=True, flag="--output_dir")
    overwrite = setup.train.overwrite_output_dir
    continues = resume is not None and Path(resume).resolve().parent == output.resolve()
    if overwrite and continues:
        raise cli.CommandError(f"--overwrite_output_dir would remove the checkpoint to resume from ({resume})")
    earlier = [folder.name for folder in checkpoint_folders(output)]
    earlier += [name for name in (NON_LORA_FILE, EARLIER_RUN) if (output / name).exists()]
    if earlier and not (overwrite or continues):
        raise cli.CommandError(
            f"--output_dir {output}: holds an earlier run ({', '.join(earlier)}); pass --resume_from_checkpoint "
            "True to continue it or --overwrite_output_dir to replace it"
        )


#: Model settings a resumed run may change: where the pretrained weights are found, the precision they load in.
RESUMABLE_CHANGES = ("model_name_or_path", "vision_tower", "bits", "dtype")


def check_resumed_model(setup: TrainSetup, resume: str | None) -> None:
    """A resumed run continues the checkpoint's model: every other model setting (``--lora_r``,
    ``--fusion_layers``, ...) must be the checkpoint's, else its weights would not fit (a traceback after the
    model is built) or would silently train another model."""
    if resume is None:
        return
    saved, _ = read_checkpoint_config(resume, "--resume_from_checkpoint")
    changed = [
        (field.name, getattr(saved, field.name), getattr(setup.model, field.name))
        for field in fields(saved)
        if field.name not in RESUMABLE_CHANGES and getattr(saved, field.name) != getattr(setup.model, field.name)
    ]
    if changed:
        said = ", ".join(f"{name} {reprlib.repr(then)} (now {reprlib.repr(now)})" for name, then, now in changed)
        raise ConfigError(
            f"--resume_from_checkpoint {resume}: the checkpoint was trained with {said}; resume with its settings, "
            "or train afresh into another --output_dir"
        )


def check_training_arguments(args) -> None:
    """The ranges of :data:`_TRAINER_RANGES`, and something to train (epochs or steps)."""
    for name, low, high, exclusive_low in _TRAINER_RANGES:
        cli.check_range(f"--{name}", getattr(args, name), low, high, exclusive_low=exclusive_low)
    if args.save_total_limit is not None:
        cli.check_range("--save_total_limit", args.save_total_limit, 0)
    if args.save_strategy == "steps":
        cli.check_range("--save_steps", args.save_steps, 0, exclusive_low=True)
    if args.max_steps == 0 or args.max_steps < -1:
        raise cli.CommandError(f"--max_steps {args.max_steps}: must be >= 1 (or -1: train --num_train_epochs)")
    if args.max_steps <= 0 and args.num_train_epochs <= 0:
        raise cli.CommandError(
            f"--num_train_epochs {args.num_train_epochs} and --max_steps {args.max_steps}: nothing to train "
            "(set one of them above 0)"
        )


def check_pretrained_names(setup: TrainSetup) -> None:
    """Each pretrained name (tokenizer, LLM, vision tower, audio encoder) is a folder, in the Hugging Face
    cache, or answers one quick hub request: else one line naming the flag, not a minute of retries."""
    tokenizer = setup.train.tokenizer
    for flag, name in (
        ("--tokenizer", None if tokenizer == "tiny" else tokenizer),
        ("--model_name_or_path", setup.model.model_name_or_path),
        ("--vision_tower", setup.model.vision_tower),
        ("--audio_encoder", setup.data.audio_encoder),
    ):
        cli.check_pretrained(name, flag)


def train(setup: TrainSetup) -> EgoExorTrainer:
    """The command as a function: check everything, build, train (resuming where ``--resume_from_checkpoint``
    says), save the final model into ``--output_dir``; returns the trainer, its model trained. User mistakes
    raise :class:`cli.CommandError` (a :class:`ConfigError`, a :class:`SampleError`...) before the model is built."""
    for warning in setup.warnings:
        cli.warn(COMMAND, warning)
    resume = resume_checkpoint(setup.trainer)
    check_output_dir(setup, resume)
    check_resumed_model(setup, resume)
    trainer = build_training(setup)
    cli.checks_done()
    output = Path(setup.trainer.output_dir)
    writing = atomic.output_lock(output) if trainer.args.should_save else nullcontext()  # a second run: refused
    with writing, signals.deferred() if setup.train.save_on_signal else nullcontext():
        trainer.train(resume_from_checkpoint=resume)
        checkpoint = output / f"{PREFIX_CHECKPOINT_DIR}-{trainer.state.global_step}"
        stopped_early = signals.pending() is not None and checkpoint.is_dir()  # by _StopAfterStep
        if not stopped_early:  # a signal after the last step still gets the trained model saved
            trainer.save_final_model()
    if signals.pending() is not None:
        saved = f"{checkpoint} (--resume_from_checkpoint True continues from it)" if stopped_early else output
        raise signals.Stopped(signals.pending(), f"saved {saved}")
    return trainer


def build_training(setup: TrainSetup) -> EgoExorTrainer:
    """Everything :func:`train` runs, checked in order of cost: flags, inputs, tokenizer, model, trainer."""
    from egoexor.model.build import build_model

    check_training_arguments(setup.trainer)
    samples, eval_samples = check_inputs(setup)
    check_pretrained_names(setup)
    tokenizer = _tokenizer(setup)
    train = setup.train
    weights = token_weights(train.token_weight_path, tokenizer, len(tokenizer)) if train.token_weight_path else None

    torch.manual_seed(setup.trainer.seed)
    model = build_model(setup.model)
    if train.init_from is not None:
        _init_from(model, Path(train.init_from))
    vocab_size = model.language_model.get_input_embeddings().num_embeddings
    if vocab_size < len(tokenizer):
        raise ConfigError(f"the tokenizer has {len(tokenizer)} tokens, the LLM's vocabulary only {vocab_size}")
    if weights is not None:  # ids past the tokenizer's (padding rows of the vocabulary) get the floor weight
        weights = torch.cat([weights, weights.min().expand(vocab_size - len(weights))])
    data_config = replace(
        data_for_model(setup.data, setup.model, model.vision_tower.vision_tower.config.image_size),
        modality_dropout=setup.data.modality_dropout if train.do_multimodal_augment else 0.0,
    )
    dataset = EgoExorDataset(samples, train.hdf5_path, tokenizer, data_config, "train", seed=setup.trainer.seed)
    eval_dataset = (
        EgoExorDataset(eval_samples, train.hdf5_path, tokenizer, data_config, "eval") if eval_samples else None
    )
    return EgoExorTrainer(
        model=model,
        args=setup.trainer,
        train_dataset=dataset,
        eval_dataset=eval_dataset,
        data_collator=Collator(tokenizer.pad_token_id),
        processing_class=tokenizer,
        setup=replace(setup, data=data_config),
        token_weights=weights,
    )


def check_evaluation(setup: TrainSetup) -> None:
    """Evaluating (``--eval_strategy``, ``--load_best_model_at_end``) needs ``--eval_data_path``; the generated
    F1 and the best model need evaluations, and ``--metric_for_best_model`` is a metric they log."""
    train, args = setup.train, setup.trainer
    evaluating = args.eval_strategy != "no"
    wanted = [f"--eval_strategy {args.eval_strategy.value}"] if evaluating else []
    wanted += ["--load_best_model_at_end"] if args.load_best_model_at_end else []
    if wanted and train.eval_data_path is None:
        raise ConfigError(
            f"{' and '.join(wanted)} {'needs' if len(wanted) == 1 else 'need'} validation samples: pass "
            "--eval_data_path (python -m egoexor.data.make_samples --split validation writes them)"
        )
    for flag, on in (
        ("--eval_generate_samples", train.eval_generate_samples),
        ("--load_best_model_at_end", args.load_best_model_at_end),
    ):
        if on and not evaluating:
            raise ConfigError(f"{flag}: nothing evaluates; pass --eval_strategy steps or epoch")
    metrics = ["eval_loss"] + (["eval_macro_f1"] if train.eval_generate_samples else [])
    best = args.metric_for_best_model
    if best is not None and (best if best.startswith("eval_") else f"eval_{best}") not in metrics:
        hint = "" if train.eval_generate_samples else " (eval_macro_f1 needs --eval_generate_samples)"
        raise ConfigError(f"--metric_for_best_model {best}: evaluation logs {', '.join(metrics)}{hint}")


def _read_samples(path: str, flag: str) -> list[Sample]:
    """A sample file's samples (at least one)."""
    samples = load_samples(cli.input_file(path, flag))
    if not samples:
        raise cli.CommandError(f"{flag} {path}: the sample list is empty")
    return samples


def check_inputs(setup: TrainSetup) -> tuple[list[Sample], list[Sample] | None]:
    """The training and validation samples, once they, the HDF5 file, the audio cache and the token-frequency
    file passed their checks (takes without RGB frames are named in a warning)."""
    train = setup.train
    for common in ("samples", "hdf5"):  # train's own names are the reference's
        if getattr(train, COMMON_NAMES[common]) is None:
            raise ConfigError(f"--{common} (--{COMMON_NAMES[common]}) is required")
    check_evaluation(setup)
    samples = _read_samples(train.data_path, "--data_path")
    eval_samples = None if train.eval_data_path is None else _read_samples(train.eval_data_path, "--eval_data_path")
    if eval_samples is not None and len(eval_samples) < train.eval_generate_samples:
        raise ConfigError(
            f"--eval_generate_samples {train.eval_generate_samples}: --eval_data_path {train.eval_data_path} "
            f"holds {len(eval_samples)} samples"
        )
    with layout.open_checked(train.hdf5_path, "--hdf5_path") as h5:
        for checked in (samples, eval_samples or []):
            check_in_hdf5(checked, h5)
        without_rgb = sorted(key.path for key in {s.take for s in samples} if layout.RGB not in h5[key.path])
    if without_rgb:
        n = sum(s.take.path in without_rgb for s in samples)
        cli.warn(COMMAND, f"{n} samples have no images: take(s) without {layout.RGB}: {', '.join(without_rgb)}")
    if setup.data.audio_cache is not None:
        cli.open_hdf5(setup.data.audio_cache, "--audio_cache").close()
    if train.token_weight_path is not None:
        cli.input_file(train.token_weight_path, "--token_weight_path")
    if train.init_from is not None:
        _check_init_from(Path(train.init_from))
    return samples, eval_samples


def _check_init_from(folder: Path) -> None:
    """``--init_from`` is an egoexor checkpoint folder (a released one must be converted first)."""
    cli.input_folder(folder, "--init_from")
    if is_reference_checkpoint(folder):
        raise cli.CommandError(
            f"--init_from {folder}: a released reference folder; convert it first: "
            f"python -m egoexor.convert_reference {folder} CONVERTED, then pass --init_from CONVERTED"
        )
    for name in (CONFIG_FILE, NON_LORA_FILE):
        cli.input_file(folder / name, "--init_from")


def _init_from(model, folder: Path) -> None:
    """The weights of ``--init_from`` in the freshly built model; a checkpoint of another shape is one line."""
    try:
        load_checkpoint_weights(model, folder)
    except (OSError, ValueError, RuntimeError) as error:  # torch: RuntimeError on a shape mismatch
        raise cli.CommandError(f"--init_from {folder}: cannot load its weights: {cli.one_line(error)}") from None


def _tokenizer(setup: TrainSetup):
    """``--tokenizer``: the built-in tiny one, a hub name or folder, or (unset) the LLM's."""
    from egoexor.data.tokenizer import build_tiny_tokenizer, load_tokenizer

    if setup.train.tokenizer != "tiny":
        return load_tokenizer(setup.train.tokenizer or setup.model.model_name_or_path, setup.data.model_max_length)
    tokenizer = build_tiny_tokenizer()
    tokenizer.pad_token = tokenizer.unk_token
    return tokenizer


def _run(argv: list[str]) -> int:
    if asks_for_help(argv):
        print(train_help())
        return 0
    train(parse_train_args(argv))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    # INFO from egoexor's loggers only: a root logger at INFO would add every library's INFO lines, and repeat
    # huggingface_hub's, which it prints with its own handler too.
    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("egoexor").setLevel(logging.INFO)
    hub_logging.disable_propagation()
    argv = list(sys.argv[1:] if argv is None else argv)
    return cli.run(COMMAND, lambda: _run(argv), errors=(ConfigError, SampleError, SampleInputError, ReadError))


if __name__ == "__main__":
    sys.exit(main())
