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
import tempfile
import time
import zlib
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch
from tqdm import tqdm

from egoexor import evaluate, scene_graph
from egoexor.atomic import atomic_output
from egoexor.data.dataset import Collator, EgoExorDataset
from egoexor.data.samples import SampleError, load_samples


def _distributed() -> tuple[int, int]:
    """(rank, world size), initialising torch.distributed under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (torch.distributed.get_rank(), world) if world > 1 else (0, 1)


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
                   device: torch.device, progress: bool = True) -> dict[str, str]:  # fmt: skip
    """Generate the dataset's samples not yet in ``log``, appending each batch to it; all texts."""
    tokenizer = dataset.tokenizer
    done = _read_log(log)
    todo = [i for i, sample in enumerate(dataset.samples) if sample.id not in done]
    collate = Collator(tokenizer.pad_token_id, padding_side="left")
    model.eval()
    with log.open("a") as handle, tqdm(total=len(todo), unit="sample", disable=not progress, desc="generating") as bar:
        for start in range(0, len(todo), batch_size):
            indices = todo[start : start + batch_size]
            batch = collate([dataset[i] for i in indices])
            batch = {k: v.to(device) for k, v in batch.items()}
            # PTv3 shuffles its serialisation orders even in eval mode (as the reference): a seed per batch
            # makes a rerun, a resumed run and a sharded run give the same answers for the same batches.
            torch.manual_seed(zlib.crc32(dataset.samples[indices[0]].id.encode()))
            ids = model.generate(batch, max_new_tokens, tokenizer.eos_token_id, tokenizer.pad_token_id)
            texts = tokenizer.batch_decode(ids.tolist(), skip_special_tokens=True)
            for i, text in zip(indices, texts, strict=True):
                sample_id = dataset.samples[i].id
                done[sample_id] = text
                handle.write(json.dumps({"id": sample_id, "text": text}) + "\n")
            handle.flush()
            bar.update(len(indices))
    return done


def reference_predictions(texts: dict[str, str]) -> dict[str, list[list[str]]]:
    """The reference's saved format: raw ``[subject, predicate, object]`` strings of each text."""
    return {i: [[s, p, o] for s, o, p in scene_graph.split_fields(text, "reference")] for i, text in texts.items()}


def _write_json(path: Path, payload: object) -> None:
    with atomic_output(path) as temporary:
        temporary.write_text(json.dumps(payload, indent=2))


def load_model(checkpoint: Path, bits: int, device: torch.device):
    """The model, tokenizer and data configuration of an egoexor or a released reference checkpoint."""
    from transformers import AutoTokenizer

    from egoexor.convert_reference import convert, is_reference_checkpoint
    from egoexor.model.build import CONFIG_FILE, load_trained

    if is_reference_checkpoint(checkpoint):
        converted = Path(tempfile.mkdtemp(prefix="egoexor_converted_"))
        convert(checkpoint, converted)
        checkpoint = converted
    elif not (checkpoint / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{checkpoint}: neither an egoexor checkpoint nor the released reference folder")
    model, data_config = load_trained(checkpoint, bits=bits)
    tokenizer_source = checkpoint if (checkpoint / "tokenizer_config.json").is_file() else model.config.name_or_path
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_source))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token
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
    parser.add_argument("--prompt_roles", choices=("train", "reference_inference"), default=None,
                        help="reference_inference: the reference's human:/gpt: roles (default: the training roles)")
    parser.add_argument("--flip_rule", choices=("train", "all"), default=None,
                        help="all: reverse every camera's channels as the reference's inference did "
                        "(default: the training rule)")
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
    rank, world = _distributed()
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if torch.cuda.is_available() else "cpu")
    try:
        model, tokenizer, data_config = load_model(args.checkpoint, args.bits, device)
    except (OSError, ValueError) as error:
        return fail(str(error))
    overrides = {k: v for k, v in (("prompt_roles", args.prompt_roles), ("flip_rule", args.flip_rule),
                                    ("audio_cache", args.audio_cache and str(args.audio_cache))) if v}
    dataset = EgoExorDataset(samples[rank::world], args.hdf5, tokenizer, replace(data_config, **overrides), "generate")
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    generate_shard(model, dataset, args.out / f"raw_predictions.rank{rank}.jsonl", args.batch_size,
                   args.max_new_tokens, device, progress=rank == 0)  # fmt: skip
    if world > 1:
        torch.distributed.barrier()
    if rank != 0:
        return 0
    texts = {}
    for shard in range(world):
        texts.update(_read_log(args.out / f"raw_predictions.rank{shard}.jsonl"))
    print(f"generated {len(texts)} answers in {time.perf_counter() - start:.1f} s")
    _write_json(args.out / "raw_predictions.json", texts)
    _write_json(args.out / "predictions.json", reference_predictions(texts))
    records = [s.to_record() for s in samples]
    result = evaluate.evaluate(texts, records, args.protocol, progress=len(records) >= 10_000)
    evaluate.write_outputs(result, args.out)
    print(evaluate.format_headline(result))
    print(f"wrote {args.out}: predictions.json, raw_predictions.json, metrics.json, report.md, plots")
    return 0


if __name__ == "__main__":
    sys.exit(main())
