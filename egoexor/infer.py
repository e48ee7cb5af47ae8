"""Inference and evaluation: ``python -m egoexor.infer --checkpoint DIR --hdf5 F --samples S.json --out DIR``.

Batched greedy generation (left padding, KV cache) with the training prompt template, then the
evaluation of :mod:`egoexor.evaluate` on the result. Writes into ``--out``:

* ``predictions.json``: the reference's format, ``{sample_id: [[subject, predicate, object], ...]}``
  of raw strings as the reference parses them;
* ``raw_predictions.json``: ``{sample_id: generated text}``;
* ``metrics.json``, ``report.md`` and the plots of :mod:`egoexor.evaluate` (a one-line warning
  counts predictions the parser dropped: unparsable text, unknown names);
* ``memory.json`` (with ``--temporal``): ``{sample_id: memory text}``, the memory in each prompt;
* ``run.json``: what the predictions come from (checkpoint, samples, HDF5, every setting that changes
  the outputs); ``.egoexor.infer`` marks the folder as this command's.

Resumable: generated texts are appended to ``raw_predictions.rank<R>.jsonl`` as each batch finishes;
a rerun of the same run (same ``run.json``) skips the samples found there, so an interrupted or
killed run loses at most one batch. ``torchrun --nproc_per_node K -m egoexor.infer ...`` shards the
samples over the ranks (accelerate's ``split_between_processes``: rank r takes the r-th of K contiguous
shares) and each rank logs into its own ``raw_predictions.rank<r>.jsonl``; rank 0 merges them and evaluates.

``--temporal oracle|online`` puts scene-graph memory in every prompt: each take's samples are walked in
frame order, takes side by side in a batch, the memory made from the ground truth of the take's earlier
frames (``oracle``) or the model's own earlier answers (``online``); see :mod:`egoexor.temporal_inference`.
A process of a sharded run then takes whole takes.

The Python API is :func:`infer` (the command is its flags); :func:`teacher_forced_accuracy` scores a model
on a dataset without generation.

The overwrite rule of :mod:`egoexor.cli`, with resuming: ``--out`` may be absent, empty or hold this
very run; anything else (another run's predictions, other files) is refused unless ``--overwrite``,
which replaces an earlier run's folder by a fresh one (never a folder of other files). An ``--out`` that
is, holds, or is a file inside an input (the checkpoint and the model folders it names included) is always
refused. ``--out`` appears only once the model has loaded; every result file is written atomically. With
``--overwrite``, the earlier run's folder stays as it was, complete, until the new run is: the new one is
generated and evaluated in a temporary folder that replaces it at the end (a stopped run leaves the earlier
results and a temporary that the next run removes; only a run without ``--overwrite`` is resumable).

Everything checkable is checked before the model is loaded, each failure one line naming the flag,
file or sample (exit status 2): the checkpoint folder and its weight files (present, safetensors headers
readable), the HDF5 file, the samples (each sample's take and frame must be in the HDF5 file; takes
without RGB frames are named in a warning), the audio cache (an embedding for every take whose samples
use audio), the output rule, and that every pretrained part the checkpoint names (LLM, CLIP, the CLAP
audio encoder when samples use audio and no ``--audio_cache`` is given) is a folder, in the Hugging Face
cache, or reachable on the hub. Weights that still fail to load (not fitting the configuration, an LLM
folder without its files) are one line too.

``--checkpoint`` is an egoexor checkpoint (``checkpoint-N/`` of ``python -m egoexor.train``) or the
authors' released folder, converted on the fly into ``--out``/converted (see :mod:`egoexor.convert_reference`).
"""

from __future__ import annotations

import json
import os
import sys
import time
import typing
import warnings
import zlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
from safetensors import SafetensorError, safe_open
from tqdm import tqdm

from egoexor import atomic, cli, cpus, evaluate, metrics, modalities, scene_graph
from egoexor.atomic import write_json
from egoexor.config import (
    CONFIG_FILE,
    NON_LORA_FILE,
    ConfigError,
    DataConfig,
    ModelConfig,
    read_checkpoint_config,
)
from egoexor.convert_reference import (
    DEFAULT_BASE,
    REFERENCE_FILES,
    check_reference_folder,
    convert,
    is_reference_checkpoint,
    model_config_from,
)
from egoexor.data import layout
from egoexor.data.reader import ReadError
from egoexor.data.samples import (
    Sample,
    SampleError,
    SampleInputError,
    check_in_hdf5,
    check_unique_ids,
    load_samples,
)
from egoexor.memory import MEMORY_START, STYLES, MemoryStyle
from egoexor.metrics import Protocol
from egoexor.prompt import IGNORE_INDEX
from egoexor.temporal_inference import TEMPORAL_MODES, TakeWalk, TemporalMode, take_groups

if TYPE_CHECKING:  # torch, accelerate and the data and model code load where they run: --help loads none of them
    import torch
    from accelerate import PartialState

    from egoexor.data.dataset import EgoExorDataset

COMMAND = "egoexor.infer"
RUN_FILE = "run.json"
#: The longest answer generated (the reference's inference setting).
MAX_NEW_TOKENS = 300
#: With ``--temporal``: the memory text in each sample's prompt (before the token budget), by sample id.
MEMORY_FILE = "memory.json"
ADAPTER_FILE = "adapter_model.safetensors"
#: Errors that are the user's input (besides :class:`cli.CommandError` and ``OSError``): one line, exit 2.
ERRORS = (ConfigError, SampleInputError, ReadError)
_AUDIO_HINT = "pass --audio_cache with embeddings from python -m egoexor.data.precompute_audio"
#: The :class:`DataConfig` fields the command has a flag for (without it: the checkpoint's value), with its help.
DATA_OVERRIDES = {
    "prompt_roles": "reference_inference: the reference's human:/gpt: roles (default: the training roles)",
    "flip_rule": "all: reverse every camera's channels as the reference's inference did (default: the checkpoint's)",
    "row_matching": "reference: depth and hand rows by the reference's inference rule, camera minus the first "
    "non-black ego camera (default: the checkpoint's)",
    "camera_selection": "reference: every camera in the index range of a branch, blank ones as black views "
    "(default: the checkpoint's)",
    "rescale_dark_frames": "true: multiply frames whose maximum is 1 by 255, as the reference did "
    "(default: the checkpoint's)",
}
#: How a flag of :data:`DATA_OVERRIDES` spells the values of a boolean field.
_BOOLEANS = {"true": True, "false": False}


def _read_log(path: Path, field: str = "text") -> dict[str, str]:
    """Generated texts (or another ``field``: ``memory``) of a (possibly interrupted) run by sample id; a torn
    line is ignored."""
    done = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            if field in entry:
                done[entry["id"]] = entry[field]
    return done


def generate_shard(
    model,
    dataset: EgoExorDataset,
    log: Path,
    batch_size: int,
    max_new_tokens: int,
    device: torch.device,
    num_workers: int = 0,
    progress: bool = True,
) -> dict[str, str]:
    """Generate the dataset's samples not yet in ``log``, appending each batch to it; all texts."""
    from torch.utils.data import DataLoader, Subset

    from egoexor.data.processor import Collator

    tokenizer = dataset.tokenizer
    done = _read_log(log)
    todo = [i for i, sample in enumerate(dataset.samples) if sample.id not in done]
    loader = DataLoader(
        Subset(dataset, todo),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=Collator(tokenizer.pad_token_id, padding_side="left"),
    )
    model.eval()
    with _open_log(log) as handle, tqdm(total=len(todo), unit="sample", disable=not progress, desc="generating") as bar:
        for start, batch in zip(range(0, len(todo), batch_size), loader, strict=True):
            ids = [dataset.samples[i].id for i in todo[start : start + batch_size]]
            texts = _generate_batch(model, batch, ids, tokenizer, max_new_tokens, device)
            _append(handle, done, ids, texts)
            bar.update(len(ids))
    return done


def generate_takes(
    model,
    dataset: EgoExorDataset,
    log: Path,
    batch_size: int,
    max_new_tokens: int,
    device: torch.device,
    temporal: TemporalMode,
    memory_style: MemoryStyle = "longshort",
    progress: bool = True,
) -> dict[str, str]:
    """:func:`generate_shard` with scene-graph memory: takes walked in time order, ``batch_size`` side by
    side (:class:`egoexor.temporal_inference.TakeWalk`). Items are read in this process: a sample's prompt
    waits for the answers before it."""
    from egoexor.data.processor import Collator

    tokenizer = dataset.tokenizer
    done = _read_log(log)
    walk = TakeWalk(dataset.samples, temporal, memory_style, batch_size, done)
    collate = Collator(tokenizer.pad_token_id, padding_side="left")
    todo = sum(sample.id not in done for sample in dataset.samples)
    model.eval()
    with _open_log(log) as handle, tqdm(total=todo, unit="sample", disable=not progress, desc="generating") as bar:
        while batch := walk.next_batch():
            for index, sample, _ in batch:
                dataset.samples[index] = sample  # the sample with its memory
            ids = [sample.id for _, sample, _ in batch]
            items = collate([dataset[index] for index, _, _ in batch])
            texts = _generate_batch(model, items, ids, tokenizer, max_new_tokens, device)
            for (index, _, _), text in zip(batch, texts, strict=True):
                walk.record(index, text)
            _append(handle, done, ids, texts, [memory for _, _, memory in batch])
            bar.update(len(ids))
    return done


def _generate_batch(model, batch: dict, ids: list[str], tokenizer, max_new_tokens: int, device) -> list[str]:
    """Greedy answers of one collated batch whose samples are ``ids``."""
    import torch

    batch = {k: v.to(device) for k, v in batch.items()}
    # PTv3 shuffles its serialisation orders even in eval mode (as the reference): a seed per batch
    # makes a rerun, a resumed run and a sharded run give the same answers for the same batches.
    torch.manual_seed(zlib.crc32(ids[0].encode()))
    generated = model.generate(
        **batch, max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    return tokenizer.batch_decode(generated.tolist(), skip_special_tokens=True)


def _open_log(log: Path):
    """The log opened for appending, after a line break if a killed run left its last line torn (which
    would otherwise swallow the first new answer)."""
    handle = log.open("a")
    if handle.tell() > 0 and not log.read_bytes().endswith(b"\n"):
        handle.write("\n")
    return handle


def _append(handle, done: dict[str, str], ids: list[str], texts: list[str], memories: list[str] | None = None) -> None:
    """Log a batch's texts, and the memory in each prompt (one JSON line each, flushed: a killed run keeps
    every finished batch)."""
    for sample_id, text, memory in zip(ids, texts, memories or [None] * len(ids), strict=True):
        done[sample_id] = text
        entry = {"id": sample_id, "text": text} | ({} if memory is None else {"memory": memory})
        handle.write(json.dumps(entry) + "\n")
    handle.flush()


def teacher_forced(model, dataset: EgoExorDataset, batch_size: int = 8) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Per batch of an ``eval``-mode dataset, in order: the logits of each next token [B, L-1, V] and its
    target [B, L-1] (``IGNORE_INDEX`` where not supervised), computed in eval mode without gradients."""
    import torch
    from torch.utils.data import DataLoader

    from egoexor.data.processor import Collator

    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=Collator(dataset.tokenizer.pad_token_id))
    was_training = model.training
    model.eval()
    try:
        for batch in loader:
            batch = {k: v.to(model.device) for k, v in batch.items()}
            with torch.no_grad():
                logits = model(**{k: v for k, v in batch.items() if k != "labels"})["logits"]
            yield logits[:, :-1], batch["labels"][:, 1:]
    finally:
        model.train(was_training)


def teacher_forced_accuracy(model, dataset: EgoExorDataset, batch_size: int = 8) -> float:
    """Share of supervised answer tokens (EOS included) that greedy next-token prediction gets right."""
    correct = total = 0
    for logits, target in teacher_forced(model, dataset, batch_size):
        supervised = target != IGNORE_INDEX
        correct += int((logits.argmax(-1)[supervised] == target[supervised]).sum())
        total += int(supervised.sum())
    return correct / max(total, 1)


def _without_worker_traceback(error: Exception) -> str:
    """The message of an error raised in a DataLoader worker: torch re-raises it in the main process with
    the worker's traceback in the message, whose last line is ``module.Class: original message``."""
    message = str(error)
    if "Original Traceback" not in message:
        return message
    return message.strip().splitlines()[-1].split(": ", 1)[-1]


def reference_predictions(texts: dict[str, str]) -> dict[str, list[list[str]]]:
    """The reference's saved format: raw ``[subject, predicate, object]`` strings of each text."""
    return {i: [[s, p, o] for s, o, p in scene_graph.split_fields(text, "reference")] for i, text in texts.items()}


def checkpoint_configs(folder: Path, bits: int) -> tuple[ModelConfig, DataConfig]:
    """The model and data configuration of an egoexor or a released checkpoint folder, read without weights.

    A released folder gets the configuration :func:`convert` writes: the reference preset and the default
    data configuration (whose image size the loaded CLIP tower sets).
    """
    cli.input_folder(folder, "--checkpoint")
    if is_reference_checkpoint(folder):
        llava, adapter = check_reference_folder(folder, "--checkpoint")
        return replace(model_config_from(llava, adapter, DEFAULT_BASE, None), bits=bits), DataConfig()
    if not (folder / CONFIG_FILE).is_file() or not (folder / NON_LORA_FILE).is_file():
        inside = sorted(path.parent.name for path in folder.glob(f"*/{CONFIG_FILE}"))
        hint = f"; it holds checkpoints: pass one of them, e.g. {folder / inside[-1]}" if inside else ""
        raise cli.CommandError(
            f"--checkpoint {folder}: neither an egoexor checkpoint ({CONFIG_FILE}, {NON_LORA_FILE}) nor the "
            f"released reference folder ({', '.join(REFERENCE_FILES)}){hint}"
        )
    model, data = read_checkpoint_config(folder, "--checkpoint", bits=bits)
    if model.model_name_or_path is None and not (folder / "tokenizer_config.json").is_file():
        raise cli.CommandError(f"--checkpoint {folder}: no tokenizer_config.json, and no LLM to take a tokenizer from")
    return model, data


def check_weights(folder: Path, model: ModelConfig) -> None:
    """The weight files of an egoexor checkpoint are there, their safetensors headers read (a truncated file fails
    here, in one line naming it, instead of after the model is built), and the weights are of its
    ``fusion_output``."""
    for name in (NON_LORA_FILE, ADAPTER_FILE) if model.lora_enable else (NON_LORA_FILE,):
        path = cli.input_file(folder / name, "--checkpoint")
        try:
            with safe_open(path, framework="pt") as weights:
                keys = set(weights.keys())
        except SafetensorError as error:
            raise cli.CommandError(f"--checkpoint {path}: not a readable safetensors file ({error})") from None
        if name == NON_LORA_FILE:
            slots = any(key.startswith("image_pooler.output_") for key in keys)
            if slots != (model.fusion_output != "first_view"):
                has = "hold" if slots else "hold no"
                raise cli.CommandError(
                    f"--checkpoint {folder}: its configuration says fusion_output {model.fusion_output}, but its "
                    f"weights {has} fusion output slots (image_pooler.output_*): config and weights do not match"
                )


def read_samples(path: Path) -> list[Sample]:
    """The samples to generate for: a readable, non-empty list with one record per id."""
    try:
        samples = load_samples(cli.input_file(path, "--samples"))
        check_unique_ids(samples, str(path))
    except SampleError as error:  # names the file and the record
        raise cli.CommandError(f"--samples {error}") from None
    if not samples:
        raise cli.CommandError(f"--samples {path}: an empty list: nothing to generate")
    return samples


def check_model_inputs(args) -> list[Sample]:
    """What a command that evaluates a checkpoint on samples (``ablate``, ``probe``) checks before loading the model
    (``args``: its ``--checkpoint``, ``--hdf5``, ``--samples``, ``--bits``, ``--audio_cache``); the samples."""
    samples = read_samples(args.samples)
    with layout.open_checked(args.hdf5, "--hdf5") as h5:
        try:
            check_in_hdf5(samples, h5)
        except SampleError as error:
            raise cli.CommandError(f"--hdf5 {error}") from None
    model_config, data_config = checkpoint_configs(args.checkpoint, args.bits)
    if not is_reference_checkpoint(args.checkpoint):
        check_weights(args.checkpoint, model_config)
    if args.audio_cache is not None:
        check_audio_cache(args.audio_cache, samples, data_config.audio_norm)
    uses_audio = args.audio_cache is None and any("audio" in sample.modalities for sample in samples)
    where = f"--checkpoint {args.checkpoint}"
    cli.check_pretrained(model_config.model_name_or_path, f"{where}: its LLM")
    cli.check_pretrained(model_config.vision_tower, f"{where}: its vision tower")
    cli.check_pretrained(data_config.audio_encoder if uses_audio else None, f"{where}: its audio encoder")
    return samples


def check_audio_cache(path: Path, samples: Sequence[Sample], audio_norm: str) -> None:
    """The cache is readable, made with ``audio_norm``, and has an embedding for every sample that uses audio."""
    from egoexor.data.audio import AudioCache

    last_frame: dict[str, int] = {}
    for sample in samples:
        if "audio" in sample.modalities:
            last_frame[sample.take.path] = max(last_frame.get(sample.take.path, 0), sample.frame)
    with cli.open_hdf5(path, "--audio_cache") as h5:
        for take, frame in sorted(last_frame.items()):
            name = f"{take}/audio/{AudioCache.DATASET}"
            if not isinstance(h5.get(name), h5py.Dataset) or len(h5[name]) <= frame:
                raise cli.CommandError(f"--audio_cache {path}: no embedding of frame {frame} of {take}")
    try:
        AudioCache(path, audio_norm)
    except ValueError as error:  # made with another audio_norm; the message names the file
        raise cli.CommandError(f"--audio_cache {error}") from None


def _stamp(path: Path) -> list[int]:
    """Size and modification time: a file replaced in place makes another run."""
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


def check_out(out: Path, inputs: Sequence[Path | None], run: dict, overwrite: bool) -> bool:
    """Apply the overwrite rule to ``--out``; ``True`` when it holds this very run, to be resumed."""
    # without --overwrite, only what it cannot lift: the resume rule below decides about an existing folder
    owner = COMMAND if overwrite else None
    cli.check_output(out, inputs=inputs, overwrite=True, folder=True, owner=owner, flag="--out")
    if overwrite or not out.is_dir() or not any(out.iterdir()):
        return False
    record = out / RUN_FILE
    try:
        if json.loads(record.read_text()) == run:
            return True
        what = f"predictions of another run (see {record})"
    except (OSError, ValueError):
        what = f"files that are not a run of {COMMAND} (no readable {RUN_FILE})"
    raise cli.CommandError(f"--out {out}: holds {what}; pass --overwrite to replace it, or another --out")


def load_model(checkpoint: Path, bits: int, device: torch.device, converted: Path):
    """The model, tokenizer and data configuration of an egoexor or a released reference checkpoint.

    A released folder is converted into ``converted`` unless it is there already. Weights that do not
    load (files that do not fit the configuration, an LLM folder without its files) are a
    :class:`cli.CommandError` naming the checkpoint.
    """
    from egoexor.data.tokenizer import load_tokenizer
    from egoexor.model.build import load_trained

    if is_reference_checkpoint(checkpoint):
        if not (converted / CONFIG_FILE).is_file():
            convert(checkpoint, converted, bits=bits)
        checkpoint = converted
    try:
        with warnings.catch_warnings():  # peft reads the property transformers 5 deprecated: noise in every run
            warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
            model, data_config = load_trained(checkpoint, bits=bits)
        source = checkpoint if (checkpoint / "tokenizer_config.json").is_file() else model.config.name_or_path
        tokenizer = load_tokenizer(source, data_config.model_max_length)
    except (OSError, ValueError, RuntimeError, SafetensorError) as error:
        raise cli.CommandError(f"--checkpoint {checkpoint}: cannot load the model: {cli.one_line(error)}") from None
    return model.to(device), tokenizer, data_config


def add_generation_flags(parser: cli.ArgumentParser) -> None:
    """The options of a generation run that ``egoexor.infer`` and ``egoexor.ablate`` share: batching, answer
    length, LLM bits, loading processes and the audio cache."""
    parser.add_argument(
        "--batch_size", type=cli.int_flag(1), default=16, help="samples per generation batch (reference: 16)"
    )
    parser.add_argument(
        "--max_new_tokens", type=cli.int_flag(1), default=MAX_NEW_TOKENS, help="longest answer (reference: 300)"
    )
    parser.add_argument(
        "--bits",
        type=int,
        choices=ModelConfig.choices("bits"),
        default=16,
        help="LLM weights at inference (reference: 16, bf16, although trained on 4-bit)",
    )
    parser.add_argument(
        "--num_workers",
        type=cli.int_flag(0),
        default=cpus.default_workers(),
        help="data loading processes (0: in the main one; default: the CPUs this process may use less one, at "
        "most 4: %(default)s here)",
    )
    parser.add_argument(
        "--audio_cache",
        type=Path,
        default=None,
        help="audio embeddings written by python -m egoexor.data.precompute_audio",
    )


def _parser() -> cli.ArgumentParser:
    parser = cli.ArgumentParser(prog=f"python -m {COMMAND}", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, type=Path, help="checkpoint folder (ours or the released one)")
    parser.add_argument("--hdf5", required=True, type=Path, help="merged EgoExOR file")
    parser.add_argument("--samples", required=True, type=Path, help="sample JSON of the split to evaluate (test)")
    parser.add_argument(
        "--out",
        required=True,
        type=Path,
        help="output folder (predictions, metrics, plots); a rerun of the same run resumes it",
    )
    parser.add_argument(
        "--protocol",
        choices=metrics.PROTOCOLS,
        default="paper",
        help="paper: the published evaluator; gt: ground-truth entity set (MM-OR/4D-OR)",
    )
    add_generation_flags(parser)
    parser.add_argument(
        "--temporal",
        choices=TEMPORAL_MODES,
        default="none",
        help="scene-graph memory in each prompt, takes walked in time order and batched side by side: oracle "
        "from the ground truth of the take's earlier frames (upper bound), online from the model's own earlier "
        "answers; none: the prompts of --samples as they are (default)",
    )
    parser.add_argument(
        "--memory_style",
        choices=STYLES,
        default="longshort",
        help="memory with --temporal: short (last 5 changes), long (first occurrences), longshort (both; MM-OR)",
    )
    for name, description in DATA_OVERRIDES.items():
        boolean = typing.get_type_hints(DataConfig)[name] is bool
        choices = tuple(_BOOLEANS) if boolean else DataConfig.choices(name)
        parser.add_argument(f"--{name}", choices=choices, default=None, help=description)
    parser.add_argument(
        "--drop_modalities",
        type=cli.names_flag(modalities.droppable()),
        default=None,
        help="comma-separated inputs to remove from every sample, as modality dropout does (e.g. "
        f"gaze,audio; '' removes none): {', '.join(modalities.droppable())} (default: the checkpoint's)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an --out holding another run's predictions or other files (a rerun of the "
        "same run resumes without it; with it, that run starts afresh)",
    )
    return parser


@dataclass
class Inference:
    """What :func:`infer` wrote into ``out``; the texts and the evaluation on the main process only
    (``None`` on the other processes of a sharded run)."""

    out: Path
    texts: dict[str, str] | None = None
    metrics: dict[str, Any] | None = None


def infer(
    checkpoint: str | os.PathLike,
    hdf5: str | os.PathLike,
    samples: str | os.PathLike,
    out: str | os.PathLike,
    *,
    protocol: Protocol = "paper",
    batch_size: int = 16,
    max_new_tokens: int = MAX_NEW_TOKENS,
    bits: int = 16,
    overrides: Mapping[str, Any] | None = None,
    audio_cache: str | os.PathLike | None = None,
    num_workers: int | None = None,
    temporal: TemporalMode = "none",
    memory_style: MemoryStyle = "longshort",
    overwrite: bool = False,
) -> Inference:
    """The command as a function (see the module docstring): generate for ``samples``, evaluate, write ``out``.

    ``overrides``: :class:`DataConfig` fields that replace the checkpoint's (:data:`DATA_OVERRIDES` has flags).
    Under torchrun every process calls it for its share of the samples. User mistakes raise
    :class:`cli.CommandError` or one of :data:`ERRORS`, before the model is loaded. ``num_workers`` None:
    :func:`egoexor.cpus.default_workers`."""
    import torch
    from accelerate import PartialState

    num_workers = cpus.default_workers() if num_workers is None else num_workers
    _check_settings(protocol, batch_size, max_new_tokens, num_workers, overrides or {}, temporal, memory_style)
    checkpoint, hdf5, out = Path(checkpoint), Path(hdf5), Path(out)
    audio_cache = None if audio_cache is None else Path(audio_cache)
    overrides = {**(overrides or {}), **({"audio_cache": str(audio_cache)} if audio_cache else {})}
    settings = dict(bits=bits, protocol=protocol, batch_size=batch_size, max_new_tokens=max_new_tokens)
    if temporal != "none":
        settings.update(temporal=temporal, memory_style=memory_style)
    state = PartialState(cpu=not torch.cuda.is_available())
    with atomic.output_lock(out) if state.is_main_process else nullcontext():  # a second run into out: refused
        all_samples, run, resume = check_run(
            state, checkpoint, hdf5, Path(samples), out, settings, overrides, audio_cache, overwrite
        )
        with_memory = next((s for s in all_samples if MEMORY_START in s.question), None)
        if temporal != "none" and with_memory is not None:
            raise cli.CommandError(
                f"--samples {samples}: sample {with_memory.id} has memory in its prompt already (a file made with "
                "make_samples --temporal); --temporal adds its own: pass a file made without it"
            )
        generation = dict(samples=all_samples, hdf5=hdf5, overrides=overrides, num_workers=num_workers)
        generation.update(protocol=protocol, batch_size=batch_size, max_new_tokens=max_new_tokens)
        generation.update(temporal=temporal, memory_style=memory_style)
        if overwrite and out.is_dir() and any(out.iterdir()):
            # the earlier run stays complete under its name until this one is: all of it happens in a temporary
            # folder that replaces it at the very end (a stopped run leaves the earlier one as it was)
            with _replacement(state, out) as work:
                with state.main_process_first():
                    record = run if state.is_main_process else None
                    loaded = _load_and_record(checkpoint, bits, state.device, work, record)
                return _generate_and_evaluate(state, loaded, work, out, **generation)
        loaded = _load_once_main_has(state, checkpoint, bits, out, None if resume else run)
        return _generate_and_evaluate(state, loaded, out, out, **generation)


def _generate_and_evaluate(
    state: PartialState,
    loaded: tuple,
    folder: Path,
    out: Path,
    *,
    samples: list[Sample],
    hdf5: Path,
    overrides: Mapping[str, Any],
    protocol: Protocol,
    batch_size: int,
    max_new_tokens: int,
    num_workers: int,
    temporal: TemporalMode,
    memory_style: MemoryStyle,
) -> Inference:
    """Generate (resuming the texts logged in ``folder``) and, on the main process, evaluate into ``folder``,
    which is ``out`` or the temporary folder that replaces it (messages name ``out``)."""
    from egoexor.data.dataset import EgoExorDataset

    cli.checks_done()  # the model has loaded: library messages from here on go straight to stderr
    model, tokenizer, data_config = loaded
    start = time.perf_counter()
    # the loaded configuration, not the checked one: a released folder's image size comes from its CLIP tower;
    # with memory, a process takes whole takes
    shares = samples if temporal == "none" else [[samples[i] for i in group] for group in take_groups(samples)]
    with state.split_between_processes(shares) as share, atomic.naming_full_disk(out):
        share = share if temporal == "none" else [sample for take in share for sample in take]
        dataset = EgoExorDataset(share, hdf5, tokenizer, replace(data_config, **overrides), "generate")
        log = _log(folder, state.process_index)
        _generate(model, dataset, log, batch_size, max_new_tokens, state, num_workers, temporal, memory_style)
    state.wait_for_everyone()
    if not state.is_main_process:
        return Inference(out)
    texts = {key: text for rank in range(state.num_processes) for key, text in _read_log(_log(folder, rank)).items()}
    print(f"generated {len(texts)} answers in {time.perf_counter() - start:.1f} s")
    with atomic.naming_full_disk(out):
        if temporal != "none":
            logs = [_log(folder, rank) for rank in range(state.num_processes)]
            write_json(folder / MEMORY_FILE, {k: m for log in logs for k, m in _read_log(log, "memory").items()})
        return Inference(out, texts, write_results(folder, texts, samples, protocol, shown=out))


def _check_settings(
    protocol: str,
    batch_size: int,
    max_new_tokens: int,
    num_workers: int,
    overrides: Mapping[str, Any],
    temporal: str = "none",
    memory_style: str = "longshort",
) -> None:
    """What the command's flags check by their types, for a caller of :func:`infer` that passes no flags
    (the values of ``overrides`` are :class:`DataConfig`'s to check)."""
    if protocol not in metrics.PROTOCOLS:
        raise cli.CommandError(f"--protocol {protocol!r}: expected one of {', '.join(metrics.PROTOCOLS)}")
    unknown = sorted(set(overrides) - {field.name for field in fields(DataConfig)})
    if unknown:
        raise cli.CommandError(f"overrides: {', '.join(unknown)}: not a field of the data configuration")
    cli.check_range("--batch_size", batch_size, 1)
    cli.check_range("--max_new_tokens", max_new_tokens, 1)
    cli.check_range("--num_workers", num_workers, 0)
    if temporal not in TEMPORAL_MODES:
        raise cli.CommandError(f"--temporal {temporal!r}: expected one of {', '.join(TEMPORAL_MODES)}")
    if memory_style not in STYLES:
        raise cli.CommandError(f"--memory_style {memory_style!r}: expected one of {', '.join(STYLES)}")


def check_run(
    state: PartialState,
    checkpoint: Path,
    hdf5: Path,
    samples_file: Path,
    out: Path,
    settings: Mapping[str, Any],
    overrides: Mapping[str, Any],
    audio_cache: Path | None,
    overwrite: bool,
) -> tuple[list[Sample], dict, bool]:
    """Everything checked before the model loads. Returns the samples, the identity of the run (``run.json``:
    the inputs as found now, every setting that changes the outputs) and whether ``out`` holds this very run."""
    samples, model_config, data_config, without_rgb = check_inputs(
        checkpoint, hdf5, samples_file, settings["bits"], overrides, audio_cache
    )
    models = check_pretrained(checkpoint, model_config, data_config, samples, audio_cache)
    weights = sorted(p for p in checkpoint.glob("*") if p.suffix in (".safetensors", ".bin"))
    run = {
        "checkpoint": str(checkpoint.resolve()),
        "weights": {p.name: _stamp(p) for p in weights},
        "samples": [str(samples_file.resolve()), *_stamp(samples_file)],
        "hdf5": [str(hdf5.resolve()), *_stamp(hdf5)],
        "world_size": state.num_processes,
        **settings,
        **overrides,
    }
    inputs = [checkpoint, hdf5, samples_file, audio_cache, *map(cli.local_path, models)]
    resume = check_out(out, inputs, run, overwrite)
    if without_rgb and state.is_main_process:
        cli.warn(COMMAND, f"samples of take(s) without {layout.RGB} get no images: {', '.join(without_rgb)}")
    return samples, run, resume


def check_inputs(
    checkpoint: Path, hdf5: Path, samples_file: Path, bits: int, overrides: Mapping[str, Any], audio_cache: Path | None
) -> tuple[list[Sample], ModelConfig, DataConfig, list[str]]:
    """The samples, the checkpoint's configurations (with ``overrides``) and the takes without RGB frames,
    once the samples, the HDF5 file, the checkpoint and the audio cache passed their checks."""
    samples = read_samples(samples_file)
    with layout.open_checked(hdf5, "--hdf5") as h5:
        try:
            check_in_hdf5(samples, h5)
        except SampleError as error:  # names the file, the first sample missing and the count
            raise cli.CommandError(f"--hdf5 {error}") from None
        without_rgb = sorted({s.take.path for s in samples if layout.RGB not in h5[s.take.path]})
    model_config, data_config = checkpoint_configs(checkpoint, bits)
    data_config = replace(data_config, **overrides)
    if not is_reference_checkpoint(checkpoint):
        check_weights(checkpoint, model_config)
    if audio_cache is not None:
        check_audio_cache(audio_cache, samples, data_config.audio_norm)
    return samples, model_config, data_config, without_rgb


def check_pretrained(
    checkpoint: Path, model: ModelConfig, data: DataConfig, samples: Sequence[Sample], audio_cache: Path | None
) -> list[str | None]:
    """Each pretrained part the run loads is reachable (:func:`cli.check_pretrained`); their names."""
    uses_audio = audio_cache is None and any("audio" in sample.modalities for sample in samples)
    where = f"--checkpoint {checkpoint}"
    cli.check_pretrained(model.model_name_or_path, f"{where}: its LLM")
    cli.check_pretrained(model.vision_tower, f"{where}: its vision tower")
    audio_encoder = data.audio_encoder if uses_audio else None
    cli.check_pretrained(audio_encoder, f"{where}: its audio encoder", _AUDIO_HINT)
    return [model.model_name_or_path, model.vision_tower, audio_encoder]


def _load_once_main_has(state: PartialState, checkpoint: Path, bits: int, out: Path, fresh_run: dict | None):
    """:func:`load_model` on every process, the main one first: ``out`` appears only once the model has
    loaded. For a ``fresh_run``, the main process loads (and converts a released folder) into a temporary
    folder that becomes ``out`` with ``run.json``; the others, and a resumed run, load from ``out``."""
    with state.main_process_first():
        if fresh_run is not None and state.is_main_process:
            with cli.output_folder(out, COMMAND) as temporary:
                return _load_and_record(checkpoint, bits, state.device, temporary, fresh_run)
        return load_model(checkpoint, bits, state.device, out / "converted")


def _load_and_record(checkpoint: Path, bits: int, device: torch.device, folder: Path, run: dict | None):
    """:func:`load_model` with a released checkpoint converted into ``folder``; ``run`` (if given) recorded there."""
    loaded = load_model(checkpoint, bits, device, folder / "converted")
    if run is not None:
        (folder / RUN_FILE).write_text(json.dumps(run, indent=2))
    return loaded


@contextmanager
def _replacement(state: PartialState, out: Path) -> Iterator[Path]:
    """The temporary folder that replaces ``out`` when the block succeeds (made by the main process, its
    path sent to the others)."""
    from accelerate.utils import broadcast_object_list

    if not state.is_main_process:
        yield broadcast_object_list([None])[0]
        return
    with cli.output_folder(out, COMMAND) as work:
        yield broadcast_object_list([work])[0]


def _log(out: Path, rank: int) -> Path:
    """The file a process appends its generated texts to, as each batch finishes."""
    return out / f"raw_predictions.rank{rank}.jsonl"


def _generate(
    model,
    dataset: EgoExorDataset,
    log: Path,
    batch_size: int,
    max_new_tokens: int,
    state: PartialState,
    workers: int,
    temporal: TemporalMode = "none",
    memory_style: MemoryStyle = "longshort",
) -> None:
    """:func:`generate_shard` (or :func:`generate_takes` with ``temporal``) on this process's share; a frame
    that cannot be read (a corrupt chunk) is one line."""
    progress = state.is_main_process
    try:
        if temporal == "none":
            generate_shard(model, dataset, log, batch_size, max_new_tokens, state.device, workers, progress)
        else:
            generate_takes(
                model, dataset, log, batch_size, max_new_tokens, state.device, temporal, memory_style, progress
            )
    except (SampleInputError, ReadError) as error:
        raise cli.CommandError(_without_worker_traceback(error)) from None


def write_results(
    out: Path, texts: dict[str, str], samples: Sequence[Sample], protocol: Protocol, shown: Path | None = None
) -> dict[str, Any]:
    """The predictions in both formats, the evaluation's files and its summary; returns the evaluation.
    ``shown``: the name the messages give ``out`` (the folder a temporary ``out`` becomes)."""
    shown = out if shown is None else shown
    write_json(out / "raw_predictions.json", texts)
    write_json(out / "predictions.json", reference_predictions(texts))
    records = [s.to_record() for s in samples]
    result = evaluate.evaluate(texts, records, protocol, progress=len(records) >= 10_000)
    evaluate.write_outputs(result, out)
    wrote = f"wrote {shown}: predictions.json, raw_predictions.json, metrics.json, report.md, plots"
    evaluate.report(result, shown, COMMAND, wrote)
    return result


def _run(args) -> int:
    flags = vars(args)
    overrides = {name: _BOOLEANS.get(value, value) for name in DATA_OVERRIDES if (value := flags.pop(name)) is not None}
    if (dropped := flags.pop("drop_modalities")) is not None:
        overrides["drop_modalities"] = list(dropped)  # a list, as run.json reads it back
    infer(**flags, overrides=overrides)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status (2 for bad input, 130 after Ctrl-C)."""
    return cli.run(COMMAND, lambda: _run(_parser().parse_args(argv)), errors=ERRORS)


if __name__ == "__main__":
    sys.exit(main())
