"""Inference and evaluation: ``python -m egoexor.infer --checkpoint DIR --hdf5 F --samples S.json --out DIR``.

Batched greedy generation (left padding, KV cache) with the training prompt template, then the
evaluation of :mod:`egoexor.evaluate` on the result. Writes into ``--out``:

* ``predictions.json``: the reference's format, ``{sample_id: [[subject, predicate, object], ...]}``
  of raw strings as the reference parses them;
* ``raw_predictions.json``: ``{sample_id: generated text}``;
* ``metrics.json``, ``report.md`` and the plots of :mod:`egoexor.evaluate`.

Resumable: generated texts are appended to ``raw_predictions.rank<R>.jsonl`` as each batch finishes;
a rerun skips the samples found there, so an interrupted run loses at most one batch.
``torchrun --nproc_per_node K -m egoexor.infer ...`` shards the samples over the ranks (rank r
takes every K-th sample from r); rank 0 merges the shards and evaluates.

``--checkpoint`` is an egoexor checkpoint (``checkpoint-N/`` of ``python -m egoexor.train``) or the
authors' released folder, converted on the fly (see :mod:`egoexor.convert_reference`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import zlib
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from egoexor import evaluate, scene_graph
from egoexor.atomic import write_json
from egoexor.config import DataConfig
from egoexor.data.dataset import Collator, EgoExorDataset
from egoexor.data.samples import SampleError, load_samples


def _distributed() -> tuple[int, int, torch.device]:
    """(rank, world size, device), initialising torch.distributed under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cpu")
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)  # 4-bit loading and NCCL use the current device
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return (torch.distributed.get_rank(), world, device) if world > 1 else (0, 1, device)


def _read_log(path: Path) -> dict[str, str]:
    """Generated texts of a (possibly interrupted) run; a torn last line is ignored."""
    done = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            done[entry["id"]] = entry["text"]
    return done


def generate_shard(model, dataset: EgoExorDataset, log: Path, batch_size: int, max_new_tokens: int,
                   device: torch.device, num_workers: int = 0, progress: bool = True) -> dict[str, str]:  # fmt: skip
    """Generate the dataset's samples not yet in ``log``, appending each batch to it; all texts."""
    tokenizer = dataset.tokenizer
    done = _read_log(log)
    todo = [i for i, sample in enumerate(dataset.samples) if sample.id not in done]
    loader = DataLoader(Subset(dataset, todo), batch_size=batch_size, num_workers=num_workers,
                        collate_fn=Collator(tokenizer.pad_token_id, padding_side="left"))  # fmt: skip
    model.eval()
    with log.open("a") as handle, tqdm(total=len(todo), unit="sample", disable=not progress, desc="generating") as bar:
        for start, batch in zip(range(0, len(todo), batch_size), loader, strict=True):
            ids = [dataset.samples[i].id for i in todo[start : start + batch_size]]
            batch = {k: v.to(device) for k, v in batch.items()}
            # PTv3 shuffles its serialisation orders even in eval mode (as the reference): a seed per batch
            # makes a rerun, a resumed run and a sharded run give the same answers for the same batches.
            torch.manual_seed(zlib.crc32(ids[0].encode()))
            generated = model.generate(batch, max_new_tokens, tokenizer.eos_token_id, tokenizer.pad_token_id)
            texts = tokenizer.batch_decode(generated.tolist(), skip_special_tokens=True)
            for sample_id, text in zip(ids, texts, strict=True):
                done[sample_id] = text
                handle.write(json.dumps({"id": sample_id, "text": text}) + "\n")
            handle.flush()
            bar.update(len(ids))
    return done


def _check_run(out: Path, run: dict, overwrite: bool) -> None:
    """Refuse to mix the logs of another run (other checkpoint, samples or settings) into this one."""
    record = out / "run.json"
    logs = sorted(out.glob("raw_predictions.rank*.jsonl"))
    if overwrite:
        for path in logs:
            path.unlink()
    elif logs and (not record.is_file() or json.loads(record.read_text()) != run):
        raise ValueError(f"{out} holds predictions of another run (see {record}); pass --overwrite or another --out")
    write_json(record, run)


def reference_predictions(texts: dict[str, str]) -> dict[str, list[list[str]]]:
    """The reference's saved format: raw ``[subject, predicate, object]`` strings of each text."""
    return {i: [[s, p, o] for s, o, p in scene_graph.split_fields(text, "reference")] for i, text in texts.items()}


def load_model(checkpoint: Path, bits: int, device: torch.device, converted: Path):
    """The model, tokenizer and data configuration of an egoexor or a released reference checkpoint.

    A released folder is converted once (by rank 0) into ``converted``.
    """
    from egoexor.convert_reference import convert, is_reference_checkpoint
    from egoexor.data.tokenizer import load_tokenizer
    from egoexor.model.build import CONFIG_FILE, load_trained

    if is_reference_checkpoint(checkpoint):
        if int(os.environ.get("RANK", "0")) == 0 and not (converted / CONFIG_FILE).is_file():
            convert(checkpoint, converted, bits=bits)
        if torch.distributed.is_initialized():
            torch.distributed.barrier()
        checkpoint = converted
    elif not (checkpoint / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{checkpoint}: neither an egoexor checkpoint nor the released reference folder")
    model, data_config = load_trained(checkpoint, bits=bits)
    has_tokenizer = (checkpoint / "tokenizer_config.json").is_file()
    tokenizer = load_tokenizer(checkpoint if has_tokenizer else model.config.name_or_path, data_config.model_max_length)
    return model.to(device), tokenizer, data_config


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m egoexor.infer", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, type=Path, help="checkpoint folder (ours or the released one)")
    parser.add_argument("--hdf5", required=True, type=Path, help="merged EgoExOR file")
    parser.add_argument("--samples", required=True, type=Path, help="sample JSON of the split to evaluate (test)")
    parser.add_argument("--out", required=True, type=Path, help="output folder (predictions, metrics, plots)")
    parser.add_argument("--protocol", choices=("paper", "gt"), default="paper",
                        help="paper: the published evaluator; gt: ground-truth entity set (MM-OR/4D-OR)")
    parser.add_argument("--batch_size", type=int, default=16, help="samples per generation batch (reference: 16)")
    parser.add_argument("--max_new_tokens", type=int, default=300, help="longest answer (reference: 300)")
    parser.add_argument("--bits", type=int, choices=(4, 8, 16), default=16,
                        help="LLM weights at inference (reference: 16, bf16, although trained on 4-bit)")
    parser.add_argument("--prompt_roles", choices=DataConfig.choices("prompt_roles"), default=None,
                        help="reference_inference: the reference's human:/gpt: roles (default: the training roles)")
    parser.add_argument("--flip_rule", choices=DataConfig.choices("flip_rule"), default=None,
                        help="all: reverse every camera's channels as the reference's inference did "
                        "(default: the checkpoint's)")
    parser.add_argument("--row_matching", choices=DataConfig.choices("row_matching"), default=None,
                        help="reference: depth and hand rows by the reference's inference rule, camera minus the "
                        "first non-black ego camera (default: the checkpoint's)")
    parser.add_argument("--camera_selection", choices=DataConfig.choices("camera_selection"), default=None,
                        help="reference: every camera in the index range of a branch, blank ones as black views "
                        "(default: the checkpoint's)")
    parser.add_argument("--rescale_dark_frames", choices=("true", "false"), default=None,
                        help="true: multiply frames whose maximum is 1 by 255, as the reference did "
                        "(default: the checkpoint's)")
    parser.add_argument("--num_workers", type=int, default=4, help="data loading processes (0: in the main one)")
    parser.add_argument("--overwrite", action="store_true",
                        help="discard predictions of an earlier run in --out instead of resuming it")
    parser.add_argument("--audio_cache", type=Path, default=None,
                        help="audio embeddings written by python -m egoexor.data.precompute_audio")
    args = parser.parse_args(argv)  # fmt: skip

    def fail(message: str) -> int:
        print(f"egoexor.infer: error: {message}", file=sys.stderr)
        return 2

    for flag in ("hdf5", "samples"):
        if not getattr(args, flag).is_file():
            return fail(f"--{flag} {getattr(args, flag)}: no such file")
    if args.batch_size < 1 or args.max_new_tokens < 1:
        return fail("--batch_size and --max_new_tokens must be at least 1")
    try:
        samples = load_samples(args.samples)
    except SampleError as error:
        return fail(str(error))
    rank, world, device = _distributed()
    overrides = {k: v for k, v in (
        ("prompt_roles", args.prompt_roles), ("flip_rule", args.flip_rule), ("row_matching", args.row_matching),
        ("camera_selection", args.camera_selection), ("audio_cache", args.audio_cache and str(args.audio_cache)),
        ("rescale_dark_frames", None if args.rescale_dark_frames is None else args.rescale_dark_frames == "true"),
    ) if v is not None}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    weights = sorted(p for p in args.checkpoint.glob("*") if p.suffix in (".safetensors", ".bin")) \
        if args.checkpoint.is_dir() else []  # fmt: skip
    run = {"checkpoint": str(args.checkpoint.resolve()), "samples": str(args.samples.resolve()),
           "weights": {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in weights},
           "hdf5": str(args.hdf5.resolve()), "bits": args.bits, "max_new_tokens": args.max_new_tokens,
           "world_size": world, **overrides}  # fmt: skip
    try:
        if rank == 0:
            _check_run(args.out, run, args.overwrite)
        if world > 1:
            torch.distributed.barrier()
        model, tokenizer, data_config = load_model(args.checkpoint, args.bits, device, args.out / "converted")
        data_config = replace(data_config, **overrides)
        dataset = EgoExorDataset(samples[rank::world], args.hdf5, tokenizer, data_config, "generate")
        start = time.perf_counter()
        generate_shard(model, dataset, args.out / f"raw_predictions.rank{rank}.jsonl", args.batch_size,
                       args.max_new_tokens, device, args.num_workers, progress=rank == 0)  # fmt: skip
    except (OSError, ValueError, TypeError, KeyError, LookupError) as error:
        return fail(str(error))
    if world > 1:
        torch.distributed.barrier()
    if rank != 0:
        return 0
    texts = {}
    for shard in range(world):
        texts.update(_read_log(args.out / f"raw_predictions.rank{shard}.jsonl"))
    print(f"generated {len(texts)} answers in {time.perf_counter() - start:.1f} s")
    write_json(args.out / "raw_predictions.json", texts)
    write_json(args.out / "predictions.json", reference_predictions(texts))
    records = [s.to_record() for s in samples]
    result = evaluate.evaluate(texts, records, args.protocol, progress=len(records) >= 10_000)
    evaluate.write_outputs(result, args.out)
    print(evaluate.format_headline(result))
    print(f"wrote {args.out}: predictions.json, raw_predictions.json, metrics.json, report.md, plots")
    return 0


if __name__ == "__main__":
    sys.exit(main())
