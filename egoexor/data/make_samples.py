"""Training/evaluation samples from a merged file: ``python -m egoexor.data.make_samples``.

Reproduces the reference's ``generate_dataset_format_for_llava.py`` record for record: the same
seeded RNG call sequence (validation/test frames are permuted, every optional modality draws a
dropout number even at probability 0, permutations shuffle the same list cumulatively, all samples
are shuffled at the end), the same ids, prompt, answers and file name. Differences: the list of
available modalities is written in a fixed order (the reference wrote a Python set), and the
token-frequency file is named after the split (the reference always wrote ``test_…``, so
generating the test split overwrote the training weights).

The token-frequency file counts ``tokenizer.tokenize(answer)`` pieces over every sample (all
permutations); training weights its loss with it.
"""

from __future__ import annotations

import argparse
import random
import re
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import h5py

from egoexor import vocab
from egoexor.atomic import write_json
from egoexor.data import layout
from egoexor.data.layout import LayoutError, TakeKey
from egoexor.data.samples import Sample
from egoexor.prompt import HUMAN_TURN
from egoexor.scene_graph import serialize, triplets_from_annotation

DEFAULT_TOKENIZER = "liuhaotian/llava-v1.5-7b"
_EXTERNAL = re.compile(r"external_[1-5]")
_EGO_GROUPS = ("eye_gaze", "eye_gaze_depth", "hand_tracking", "audio")


def samples_file_name(split: str, n_permutations: int, modality_dropout_prob: float) -> str:
    """The reference's file name (its dead temporal options still show in it)."""
    name = f"{split}_{n_permutations}perm_Falsetemp_Falsetempaug_EgoExOR_drophistory0.5"
    if modality_dropout_prob > 0:
        name += f"_modalitydrop{modality_dropout_prob}"
    return name + ".json"


def token_freqs_file_name(split: str, n_permutations: int) -> str:
    return f"{split}_token_freqs_7b_{n_permutations}perm_EgoExOR.json"


def _available_modalities(take: h5py.Group, sources: list[str], rng: random.Random, dropout: float) -> set[str]:
    """The reference's per-frame availability rule, with its RNG draws in the same order."""
    has_ego = any(s in vocab.EGO_SOURCES for s in sources)
    has_ultrasound = vocab.ULTRASOUND_SOURCE in sources
    has_external = any(_EXTERNAL.match(s) for s in sources)
    has_exo = has_external or any(s in ("or_light", "microscope", "simstation") for s in sources)
    has_frames = "frames" in take
    available = set()
    if has_ego:
        if has_frames:
            available.add("ego_frames")
        for group in _EGO_GROUPS:
            if group in take and rng.random() >= dropout:
                available.add(group)
    if has_exo and has_frames:
        available.add("exo_frames")
    if has_ultrasound and has_frames and rng.random() >= dropout:
        available.add("ultrasound")
    if has_external and "point_cloud" in take and rng.random() >= dropout:
        available.add("point_cloud")
    return available


def make_samples(
    h5: h5py.File, split: str, rng: random.Random, n_permutations: int = 1, modality_dropout_prob: float = 0.0,
    reduce_ratio: int = 1,
) -> tuple[list[Sample], list[str]]:  # fmt: skip
    """Samples of one split in generation order, and the frames skipped for lack of annotations.

    ``rng`` must be ``random.Random(seed)``; the reference then counts tokens in this order and
    shuffles the list with the same RNG (:func:`write_samples` does both).
    """
    if n_permutations < 1:
        raise ValueError(f"n_permutations must be at least 1, got {n_permutations}")
    rows = layout.read_split(h5, split)
    frames = [(str(r["surgery_type"]), int(r["procedure_id"]), int(r["take_id"]), int(r["frame_id"])) for r in rows]
    if split != "train":
        frames = rng.sample(frames, len(frames) // reduce_ratio)
    samples: list[Sample] = []
    skipped: list[str] = []
    sources_cache: dict[TakeKey, list[str]] = {}
    for surgery_type, procedure_id, take_id, frame in frames:
        key = TakeKey(surgery_type, procedure_id, take_id)
        if key.path not in h5:
            raise LayoutError(f"{h5.filename}: splits/{split} names {key.path}, which the file does not have")
        take = h5[key.path]
        sources = sources_cache.setdefault(key, layout.take_sources(take))
        modalities = _available_modalities(take, sources, rng, modality_dropout_prob)
        annotation = f"{layout.annotation_path(frame)}/{layout.REL_ANNOTATIONS}"
        if annotation not in take:
            skipped.append(f"{key.path}/{annotation}")
            continue
        triplets = triplets_from_annotation(take[annotation][()])
        for permutation in range(n_permutations):
            rng.shuffle(triplets)
            samples.append(Sample(
                id=f"{key.name}_{frame}_{permutation}", take=key, frame=frame, modalities=frozenset(modalities),
                question=HUMAN_TURN, answer=serialize(triplets),
            ))  # fmt: skip
    return samples, skipped


def count_tokens(samples: Sequence[Sample], tokenizer) -> dict[str, int]:
    """``{piece: count}`` over every answer, in first-seen order (the reference's format)."""
    counts: Counter[str] = Counter()
    for sample in samples:
        counts.update(tokenizer.tokenize(sample.answer))
    return dict(counts)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m egoexor.data.make_samples",
        description="Write LLaVA-format samples of one split of a merged EgoExOR file, and their token frequencies.",
    )
    parser.add_argument("--hdf5", required=True, help="merged EgoExOR file (egoexor-merge-h5 output)")
    parser.add_argument("--split", default="train", help="train, validation or test (default: train)")
    parser.add_argument("--n-permutations", type=int, default=1,
                        help="samples per frame, each with the triplets in another random order (paper: 4)")
    parser.add_argument("--modality-dropout-prob", type=float, default=0.0,
                        help="probability of dropping each optional modality from a frame's available list")
    parser.add_argument("--seed", type=int, default=42, help="random seed (reference: 42)")
    parser.add_argument("--reduce-ratio", type=int, default=1,
                        help="keep 1/N of the validation/test frames (reference: 1)")
    parser.add_argument("--out", default="data/llava_samples", help="output folder")
    parser.add_argument("--name", default=None, help="sample file name (default: the reference's name)")
    parser.add_argument("--tokenizer", default=DEFAULT_TOKENIZER,
                        help="tokenizer for the token-frequency file: hub name or local folder")
    parser.add_argument("--no-token-freqs", action="store_true", help="do not write the token-frequency file")
    args = parser.parse_args(argv)  # fmt: skip

    def fail(message: str) -> int:
        print(f"make_samples: error: {message}", file=sys.stderr)
        return 2

    if args.split not in layout.SPLIT_NAMES:
        return fail(f"unknown split {args.split!r}; choose one of {', '.join(layout.SPLIT_NAMES)}")
    if args.reduce_ratio < 1 or args.n_permutations < 1:
        return fail("--reduce-ratio and --n-permutations must be at least 1")
    if not 0.0 <= args.modality_dropout_prob <= 1.0:
        return fail(f"--modality-dropout-prob must be in [0, 1], got {args.modality_dropout_prob}")
    hdf5 = Path(args.hdf5)
    if not hdf5.is_file():
        return fail(f"{hdf5}: no such file")
    if not h5py.is_hdf5(hdf5):
        return fail(f"{hdf5}: not an HDF5 file")
    rng = random.Random(args.seed)
    try:
        with h5py.File(hdf5, "r") as h5:
            samples, skipped = make_samples(
                h5, args.split, rng, args.n_permutations, args.modality_dropout_prob, args.reduce_ratio
            )
    except (LayoutError, ValueError, OSError) as error:
        return fail(str(error))
    tokenizer = None
    if not args.no_token_freqs:
        from egoexor.data.tokenizer import load_tokenizer

        try:
            tokenizer = load_tokenizer(args.tokenizer)
        except OSError as error:
            return fail(f"{error} (pass --no-token-freqs to skip the token-frequency file)")
    token_counts = count_tokens(samples, tokenizer) if tokenizer is not None else None
    rng.shuffle(samples)
    out = Path(args.out)
    name = args.name or samples_file_name(args.split, args.n_permutations, args.modality_dropout_prob)
    write_json(out / name, [s.to_record() for s in samples], indent=4)
    print(f"wrote {out / name}: {len(samples)} samples, {len(skipped)} frames without annotations skipped")
    if token_counts is not None:
        freqs = out / token_freqs_file_name(args.split, args.n_permutations)
        write_json(freqs, token_counts, indent=4)
        print(f"wrote {freqs}: {len(token_counts)} distinct tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main())
