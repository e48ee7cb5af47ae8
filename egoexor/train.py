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
  tokenizer; resuming restores all of it (the reference restored only LoRA).

DeepSpeed (``--deepspeed configs/zero2.json``), torchrun DDP, mixed precision (``--bf16``), gradient
checkpointing, logging (``--report_to``) and resume (``--resume_from_checkpoint``) are the Trainer's.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch
from torch.utils.data import Sampler
from transformers import Trainer, TrainerCallback

from egoexor.config import ConfigError, TrainSetup, parse_train_args, resolved_config, train_help
from egoexor.data.dataset import IGNORE_INDEX, Collator, EgoExorDataset
from egoexor.data.samples import Sample, SampleError, load_samples
from egoexor.model.build import NON_LORA_FILE, load_checkpoint_weights, save_checkpoint
from egoexor.model.egoexor_llava import next_token_loss

logger = logging.getLogger("egoexor.train")

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


@torch.no_grad()
def teacher_forced_accuracy(model, dataset: EgoExorDataset, batch_size: int = 8) -> float:
    """Share of supervised answer tokens (EOS included) that greedy next-token prediction gets right."""
    from torch.utils.data import DataLoader

    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=Collator(dataset.tokenizer.pad_token_id))
    was_training = model.training
    model.eval()
    correct = total = 0
    for batch in loader:
        batch = {k: v.to(model.device) for k, v in batch.items()}
        logits = model(**{k: v for k, v in batch.items() if k != "labels"})["logits"]
        predicted, target = logits[:, :-1].argmax(-1), batch["labels"][:, 1:]
        supervised = target != IGNORE_INDEX
        correct += int((predicted[supervised] == target[supervised]).sum())
        total += int(supervised.sum())
    model.train(was_training)
    return correct / max(total, 1)


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


class EgoExorTrainer(Trainer):
    def __init__(self, *args, setup: TrainSetup, token_weights: torch.Tensor | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.setup = setup
        self.token_weights = token_weights
        self.add_callback(_EpochToDataset(self.train_dataset))

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
            {"params": params, "weight_decay": self.args.weight_decay if decayed else 0.0,
             **({"lr": projector_lr} if projector else {})}
            for (decayed, projector), params in sorted(groups.items())
        ]  # fmt: skip
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
        output = Path(output_dir or self.args.output_dir)
        output.mkdir(parents=True, exist_ok=True)
        model = self.accelerator.unwrap_model(self.model)
        save_checkpoint(model, output, resolved_config(self.setup))
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output)
        torch.save(self.args, output / "training_args.bin")

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        load_checkpoint_weights(self.accelerator.unwrap_model(model or self.model), Path(resume_from_checkpoint))


def resume_checkpoint(args) -> str | None:
    """``--resume_from_checkpoint``: a checkpoint folder, or True for the newest one in ``--output_dir``."""
    from transformers.trainer_utils import get_last_checkpoint

    value = args.resume_from_checkpoint
    if value is None or str(value).lower() in ("false", "0", "no", ""):
        return None
    if str(value).lower() in ("true", "1", "yes"):
        value = get_last_checkpoint(args.output_dir) if Path(args.output_dir).is_dir() else None
        if value is None:
            raise ConfigError(f"--resume_from_checkpoint: no checkpoint-N folder in {args.output_dir}")
    for name in (NON_LORA_FILE, "trainer_state.json"):
        if not (Path(value) / name).is_file():
            raise ConfigError(f"--resume_from_checkpoint {value}: no {name} there (not a training checkpoint)")
    return str(value)


def build_training(setup: TrainSetup) -> EgoExorTrainer:
    """Everything ``main`` runs, checked in order of cost: inputs, tokenizer, model, trainer."""
    from egoexor.data.tokenizer import build_tiny_tokenizer, load_tokenizer
    from egoexor.model.build import build_model

    train = setup.train
    for flag in ("data_path", "hdf5_path"):
        if getattr(train, flag) is None:
            raise ConfigError(f"--{flag} is required")
        if not Path(getattr(train, flag)).is_file():
            raise ConfigError(f"--{flag} {getattr(train, flag)}: no such file")
    samples = load_samples(train.data_path)
    if not samples:
        raise ConfigError(f"--data_path {train.data_path}: no samples")
    if train.tokenizer == "tiny":
        tokenizer = build_tiny_tokenizer()
        tokenizer.pad_token = tokenizer.unk_token
    else:
        tokenizer = load_tokenizer(train.tokenizer or setup.model.model_name_or_path, setup.data.model_max_length)
    if train.token_weight_path is not None and not Path(train.token_weight_path).is_file():
        raise ConfigError(f"--token_weight_path {train.token_weight_path}: no such file")

    torch.manual_seed(setup.trainer.seed)
    model = build_model(setup.model)
    vocab_size = model.language_model.get_input_embeddings().num_embeddings
    if vocab_size < len(tokenizer):
        raise ConfigError(f"the tokenizer has {len(tokenizer)} tokens, the LLM's vocabulary only {vocab_size}")
    weights = token_weights(train.token_weight_path, tokenizer, vocab_size) if train.token_weight_path else None
    vision = model.vision_tower.vision_tower.config
    data_config = replace(
        setup.data, image_size=vision.image_size, tokens_per_branch=setup.model.tokens_per_branch,
        modality_dropout=setup.data.modality_dropout if train.do_multimodal_augment else 0.0,
    )  # fmt: skip
    dataset = EgoExorDataset(samples, train.hdf5_path, tokenizer, data_config, "train", seed=setup.trainer.seed)
    return EgoExorTrainer(
        model=model, args=setup.trainer, train_dataset=dataset, data_collator=Collator(tokenizer.pad_token_id),
        processing_class=tokenizer, setup=replace(setup, data=data_config), token_weights=weights,
    )  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--help" in argv or "-h" in argv:
        print(train_help())
        return 0
    try:
        setup = parse_train_args(argv)
        for warning in setup.warnings:
            logger.warning(warning)
        resume = resume_checkpoint(setup.trainer)
        trainer = build_training(setup)
    except (ConfigError, SampleError, OSError) as error:
        print(f"egoexor.train: error: {error}", file=sys.stderr)
        return 2
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_model()
    trainer.save_state()
    return 0


if __name__ == "__main__":
    sys.exit(main())
