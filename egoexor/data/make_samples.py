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

``--temporal`` adds scene-graph memory (:mod:`egoexor.memory`) to every prompt as MM-OR's generator does
(the reference only names its temporal options in the file name): after the final shuffle, each take's
change log is built from the ground truth of its frames in the file (a frame's last sample in the written
order gives its graph; takes in name order), then each sample gets the memory of the changes before its
frame, in one style (``short``, ``long``, ``longshort``: MM-OR's non-augmented samples) or MM-OR's
augmentation mix (``aug``), with ``--drop-history`` (MM-OR: 0.5, applied to every style here, as its
augmentation does). The samples are otherwise those without ``--temporal``.

The command follows :mod:`egoexor.cli`: existing output files need ``--overwrite``, an output that is
the HDF5 file is always refused, a split that yields no sample is an error, and takes without
``frames/rgb`` (samples with no images) and split rows naming a take the file lacks (left out, as after a
merge of some of the procedures) are named in warnings.

The Python API: :func:`write_samples` is the command (its flags are its parameters); :func:`make_samples`
makes the samples of a split in memory.
"""

from __future__ import annotations

import os
import random
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import h5py

from egoexor import cli, memory, modalities
from egoexor.atomic import write_json
from egoexor.data import layout
from egoexor.data.layout import LayoutError, TakeKey
from egoexor.data.samples import Sample
from egoexor.prompt import HUMAN_TURN
from egoexor.scene_graph import serialize, split_fields, triplets_from_annotation

COMMAND = "egoexor.data.make_samples"
DEFAULT_TOKENIZER = "liuhaotian/llava-v1.5-7b"
Temporal = Literal["none", "short", "long", "longshort", "aug"]
TEMPORAL_CHOICES: tuple[str, ...] = ("none", *memory.STYLES, "aug")


def samples_file_name(
    split: str,
    n_permutations: int,
    modality_dropout_prob: float,
    temporal: Temporal = "none",
    drop_history: float = 0.0,
) -> str:
    """The reference's file name: without memory its dead temporal options (drop history 0.5) show in it;
    with memory ``Truetemp``, ``Truetempaug`` for ``aug``, the style for ``short``/``long`` (which the
    reference cannot name) and the real drop-history probability."""
    if temporal == "none":
        name = f"{split}_{n_permutations}perm_Falsetemp_Falsetempaug_EgoExOR_drophistory0.5"
    else:
        name = f"{split}_{n_permutations}perm_Truetemp_{temporal == 'aug'}tempaug_EgoExOR"
        name += f"_{temporal}" if temporal in ("short", "long") else ""
        name += f"_drophistory{drop_history}" if drop_history > 0.01 else ""
    if modality_dropout_prob > 0:
        name += f"_modalitydrop{modality_dropout_prob}"
    return name + ".json"


def token_freqs_file_name(split: str, n_permutations: int) -> str:
    return f"{split}_token_freqs_7b_{n_permutations}perm_EgoExOR.json"


def _available_modalities(take: h5py.Group, sources: list[str], rng: random.Random, dropout: float) -> set[str]:
    """The reference's per-frame availability rule, with its RNG draws in the same order: each input's groups
    the take holds (``available_groups``), in registry order, each kept unless ``dropout`` draws it away."""
    available = set()
    for modality in modalities.modalities():
        for group in modality.available_groups(take, sources):
            if not modality.dropped_when_sampling or rng.random() >= dropout:
                available.add(group)
    return available


def make_samples(
    h5: h5py.File,
    split: str,
    rng: random.Random,
    n_permutations: int = 1,
    modality_dropout_prob: float = 0.0,
    reduce_ratio: int = 1,
) -> tuple[list[Sample], list[str]]:
    """Samples of one split in generation order, and the frames skipped for lack of annotations. Rows naming a
    take the file lacks are left out: a merge of some of the procedures keeps every split row and warns about
    them, and so does :func:`write_samples` (:func:`rows_without_take`).

    ``rng`` must be ``random.Random(seed)``; the reference then counts tokens in this order and
    shuffles the list with the same RNG (:func:`write_samples` does both).
    """
    if n_permutations < 1:
        raise ValueError(f"n_permutations must be at least 1, got {n_permutations}")
    samples: list[Sample] = []
    skipped: list[str] = []
    sources_cache: dict[TakeKey, list[str]] = {}
    names = layout.vocabulary(h5)
    for key, frame in _split_frames(h5, split, rng, reduce_ratio):
        if key.path not in h5:
            continue
        take = h5[key.path]
        sources = sources_cache.setdefault(key, layout.take_sources(take))
        modalities = _available_modalities(take, sources, rng, modality_dropout_prob)
        annotation = f"{layout.annotation_path(frame)}/{layout.REL_ANNOTATIONS}"
        if annotation not in take:
            skipped.append(f"{key.path}/{annotation}")
            continue
        layout.check_annotation(h5, take[annotation], names)
        triplets = triplets_from_annotation(take[annotation][()])
        common = {"take": key, "frame": frame, "modalities": frozenset(modalities), "question": HUMAN_TURN}
        for permutation in range(n_permutations):
            rng.shuffle(triplets)
            samples.append(Sample(id=f"{key.name}_{frame}_{permutation}", answer=serialize(triplets), **common))
    return samples, skipped


def _split_frames(h5: h5py.File, split: str, rng: random.Random, reduce_ratio: int) -> list[tuple[TakeKey, int]]:
    """The split's frames in the reference's order: those of validation and test drawn at random (1 in
    ``reduce_ratio`` of them), those of train as listed."""
    rows = layout.read_split(h5, split)
    keys = [TakeKey(str(r["surgery_type"]), int(r["procedure_id"]), int(r["take_id"])) for r in rows]
    frames = list(zip(keys, (int(r["frame_id"]) for r in rows), strict=True))
    return frames if split == "train" else rng.sample(frames, len(frames) // reduce_ratio)


def rows_without_take(h5: h5py.File, split: str) -> dict[str, int]:
    """The split's rows per take the file lacks (what a merge of some of the procedures keeps)."""
    rows = layout.read_split(h5, split)
    paths = Counter(TakeKey(str(r["surgery_type"]), int(r["procedure_id"]), int(r["take_id"])).path for r in rows)
    return {path: n for path, n in sorted(paths.items()) if path not in h5}


def with_memory(samples: Sequence[Sample], temporal: Temporal, drop_history: float, rng: random.Random) -> list[Sample]:
    """``samples`` (in written order) with the memory of their take before their frame in the question.

    The RNG calls are MM-OR's: the change logs' shuffles take by take, then per sample the augmentation
    draw (``aug``) and the drop-history draws.
    """
    if temporal == "none":
        return list(samples)
    answers: dict[TakeKey, dict[int, str]] = {}
    for sample in samples:
        answers.setdefault(sample.take, {})[sample.frame] = sample.answer  # a frame's last sample wins
    logs = {
        take: memory.change_log([(frame, split_fields(answer)) for frame, answer in by_frame.items()], rng)
        for take, by_frame in sorted(answers.items(), key=lambda item: item[0].name)
    }
    out = []
    for sample in samples:
        style = memory.augmented_style(rng) if temporal == "aug" else temporal
        if style is not None:
            text = memory.memory_text(logs[sample.take], sample.frame, style, drop_history, rng)
            sample = replace(sample, question=memory.insert_memory(sample.question, text))
        out.append(sample)
    return out


def count_tokens(samples: Sequence[Sample], tokenizer) -> dict[str, int]:
    """``{piece: count}`` over every answer, in first-seen order (the reference's format)."""
    counts: Counter[str] = Counter()
    for sample in samples:
        counts.update(tokenizer.tokenize(sample.answer))
    return dict(counts)


def _parser() -> cli.ArgumentParser:
    parser = cli.ArgumentParser(
        prog=f"python -m {COMMAND}",
        description="Write LLaVA-format samples of one split of a merged EgoExOR file, and their token frequencies.",
    )
    parser.add_argument("--hdf5", required=True, help="merged EgoExOR file (egoexor-merge-h5 output)")
    parser.add_argument("--split", default="train", choices=layout.SPLIT_NAMES, help="split (default: train)")
    parser.add_argument(
        "--n-permutations",
        type=cli.int_flag(1),
        default=1,
        help="samples per frame, each with the triplets in another random order (paper: 4)",
    )
    parser.add_argument(
        "--modality-dropout-prob",
        type=cli.float_flag(0.0, 1.0),
        default=0.0,
        help="probability of dropping each optional modality from a frame's available list",
    )
    parser.add_argument("--seed", type=cli.int_flag(), default=42, help="random seed (reference: 42)")
    parser.add_argument(
        "--reduce-ratio", type=cli.int_flag(1), default=1, help="keep 1/N of the validation/test frames (reference: 1)"
    )
    parser.add_argument(
        "--temporal",
        default="none",
        choices=TEMPORAL_CHOICES,
        help="scene-graph memory in every prompt: a style (short: last 5 changes, long: first occurrences, "
        "longshort: both) or aug, MM-OR's mix (none 50%%, each style 1/6); default: none",
    )
    parser.add_argument(
        "--drop-history",
        type=cli.float_flag(0.0, 1.0),
        default=0.0,
        help="probability of leaving each memory entry out (MM-OR: 0.5); needs --temporal",
    )
    parser.add_argument("--out", default="data/llava_samples", help="output folder")
    parser.add_argument("--name", default=None, help="sample file name (default: the reference's name)")
    parser.add_argument(
        "--tokenizer",
        default=DEFAULT_TOKENIZER,
        help="tokenizer for the token-frequency file: hub name or local folder",
    )
    parser.add_argument("--no-token-freqs", action="store_true", help="do not write the token-frequency file")
    cli.add_overwrite_flag(parser)
    return parser


def _tokenizer(name: str):
    """The tokenizer of the token-frequency file, loaded before any sample is made: a mistake is one line."""
    from egoexor.data.tokenizer import load_tokenizer

    skip = "pass --no-token-freqs to skip the token-frequency file"
    cli.check_pretrained(name, "--tokenizer", skip, file="tokenizer_config.json")
    try:
        return load_tokenizer(name)
    except (OSError, ValueError) as error:  # transformers: OSError if absent, ValueError if not a tokenizer
        raise cli.CommandError(f"--tokenizer {name}: {error} ({skip})") from None


@dataclass
class SamplesSummary:
    """What :func:`write_samples` wrote: the samples in the written order, the frames skipped for lack of
    annotations, the token counts (None without a tokenizer), the takes without ``frames/rgb``, and the split's
    rows per take the file lacks (left out). The last two are :meth:`warnings`, as for ``egoexor-merge-h5``."""

    samples_file: Path
    samples: list[Sample]
    skipped: list[str]
    token_freqs_file: Path | None
    token_counts: dict[str, int] | None
    takes_without_rgb: list[str]
    rows_without_take: dict[str, int]

    def warnings(self) -> list[str]:
        out = []
        if self.takes_without_rgb:
            n = sum(s.take.path in self.takes_without_rgb for s in self.samples)
            out.append(f"{n} samples have no images: take(s) without {layout.RGB}: {', '.join(self.takes_without_rgb)}")
        if self.rows_without_take:
            takes = ", ".join(f"{path} ({n})" for path, n in self.rows_without_take.items())
            out.append(f"split rows name take(s) not in the file, left out: {takes}")
        return out

    def report(self, command: str) -> None:
        """The summary on stdout, each warning as ``<command>: warning: ...`` on stderr."""
        skipped = f"{len(self.skipped)} frames without annotations skipped"
        print(f"wrote {self.samples_file}: {len(self.samples)} samples, {skipped}")
        if self.token_freqs_file is not None:
            print(f"wrote {self.token_freqs_file}: {len(self.token_counts)} distinct tokens")
        for warning in self.warnings():
            cli.warn(command, warning)


def write_samples(
    hdf5: str | os.PathLike,
    split: str = "train",
    out: str | os.PathLike = "data/llava_samples",
    *,
    n_permutations: int = 1,
    modality_dropout_prob: float = 0.0,
    seed: int = 42,
    reduce_ratio: int = 1,
    temporal: Temporal = "none",
    drop_history: float = 0.0,
    name: str | None = None,
    tokenizer: str | None = DEFAULT_TOKENIZER,
    overwrite: bool = False,
) -> SamplesSummary:
    """The command as a function: the samples of ``split`` into ``out``/``name`` (default: the reference's
    name) and, unless ``tokenizer`` is None, their token frequencies beside them. The outputs and the
    tokenizer are checked before a sample is made; user mistakes raise :class:`cli.CommandError`."""
    if temporal not in TEMPORAL_CHOICES:
        raise cli.CommandError(f"--temporal {temporal}: choose one of {', '.join(TEMPORAL_CHOICES)}")
    if drop_history > 0 and temporal == "none":
        raise cli.CommandError(f"--drop-history {drop_history}: there is no memory to drop from without --temporal")
    name = name or samples_file_name(split, n_permutations, modality_dropout_prob, temporal, drop_history)
    if Path(name).name != name or name in (".", ".."):
        raise cli.CommandError(f"--name {name!r}: must be a file name, not a path (the folder is --out)")
    freqs_name = None if tokenizer is None else token_freqs_file_name(split, n_permutations)
    inputs = [Path(hdf5), cli.local_path(tokenizer)]
    samples_path, freqs_path = (
        file and cli.check_output(Path(out) / file, inputs=inputs, overwrite=overwrite) for file in (name, freqs_name)
    )
    loaded = None if tokenizer is None else _tokenizer(tokenizer)
    rng = random.Random(seed)
    with layout.open_checked(hdf5, "--hdf5") as h5:
        samples, skipped = make_samples(h5, split, rng, n_permutations, modality_dropout_prob, reduce_ratio)
        without_rgb = sorted(key.path for key in {s.take for s in samples} if layout.RGB not in h5[key.path])
        without_take = rows_without_take(h5, split)
    if not samples:
        raise cli.CommandError(
            f"--hdf5 {hdf5}: splits/{split} gives no sample "
            f"({len(skipped)} frames without annotations, {sum(without_take.values())} rows naming takes the file "
            f"lacks; --reduce-ratio {reduce_ratio})"
        )
    token_counts = None if loaded is None else count_tokens(samples, loaded)
    rng.shuffle(samples)
    samples = with_memory(samples, temporal, drop_history, rng)
    write_json(samples_path, [s.to_record() for s in samples], indent=4)
    if freqs_path is not None:
        write_json(freqs_path, token_counts, indent=4)
    return SamplesSummary(samples_path, samples, skipped, freqs_path, token_counts, without_rgb, without_take)


def _run(args) -> int:
    flags = vars(args)  # each flag is a parameter of write_samples, but for --no-token-freqs
    if flags.pop("no_token_freqs"):
        flags["tokenizer"] = None
    write_samples(**flags).report(COMMAND)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run(COMMAND, lambda: _run(_parser().parse_args(argv)), errors=(LayoutError,))


if __name__ == "__main__":
    sys.exit(main())
