"""The data-side commands under attack: bad inputs, bad flags, existing outputs, interrupts, ``kill -9``.

Every case of the battery asserts the contract of :mod:`egoexor.cli`: exit status 2 (130 after Ctrl-C),
exactly one stderr line ``<command>: error: ...`` naming what is wrong, no traceback, every input
byte-identical afterwards, and the output side exactly as it was (nothing half-written, no debris).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest

from egoexor import atomic, cli, evaluate
from egoexor.data import layout, make_samples, merge_h5, precompute_audio, synthetic
from egoexor.data.merge_h5 import merge_files
from egoexor.data.synthetic import write_splits

COMMANDS: dict[str, tuple[str, Callable[[list[str]], int]]] = {
    "merge": ("egoexor-merge-h5", merge_h5.main),
    "samples": ("egoexor.data.make_samples", make_samples.main),
    "audio": ("egoexor.data.precompute_audio", precompute_audio.main),
    "synthetic": ("egoexor.data.synthetic", synthetic.main),
    "evaluate": ("egoexor.evaluate", evaluate.main),
}
PROCEDURES = ("miss_1.h5", "miss_2.h5", "ultrasound_1.h5")


@pytest.fixture(scope="module")
def inputs(tiny_dataset, merged_file, sample_files, tmp_path_factory) -> Path:
    """Every input of the battery, good and bad, in one folder that no case may change."""
    root = tmp_path_factory.mktemp("safety_inputs")
    (root / "dl").mkdir()
    for path in [*tiny_dataset.files, tiny_dataset.splits_file]:
        shutil.copy(path, root / "dl" / path.name)
    shutil.copy(root / "dl" / "miss_2.h5", root / "dl" / "norgb.h5")
    with h5py.File(root / "dl" / "norgb.h5", "r+") as h5:
        del h5[f"data/MISS/2/take/1/{layout.RGB}"]
    shutil.copy(merged_file, root / "merged.h5")
    shutil.copy(merged_file, root / "misspelt.h5")
    with h5py.File(root / "misspelt.h5", "r+") as h5:
        for _, take in layout.iter_takes(h5):
            for frame in take[layout.ANNOTATIONS].values():
                rows = frame[layout.REL_ANNOTATIONS][()]
                rows[0, 0] = b"patiant"
                del frame[layout.REL_ANNOTATIONS]
                frame[layout.REL_ANNOTATIONS] = rows.astype(layout.REL_ANNOTATION_DTYPE)
    for first, second in (("loop_a.h5", "loop_b.h5"), ("loop_a.json", "loop_b.json")):
        (root / first).symlink_to(second)
        (root / second).symlink_to(first)
    (root / "garbage.h5").write_text("this is not HDF5\n")
    (root / "empty.h5").write_bytes(b"")
    data = (root / "merged.h5").read_bytes()
    (root / "truncated.h5").write_bytes(data[: len(data) // 2])
    with h5py.File(root / "nolayout.h5", "w") as h5:
        h5["x"] = np.zeros(3)
    (root / "folder.h5").mkdir()
    (root / "empty_dir").mkdir()
    with h5py.File(tiny_dataset.splits_file, "r") as h5:
        rows = {name: h5["splits"][name][()] for name in layout.SPLIT_NAMES}
    rows["test"] = np.concatenate([rows["test"], np.array([("MISS", 9, 1, 0)], dtype=layout.SPLIT_DTYPE)])
    write_splits(root / "dangling_splits.h5", rows)
    merge_files(tiny_dataset.files, root / "dangling_splits.h5", root / "dangling.h5")
    records = json.loads(sample_files["test"].read_text())
    (root / "samples.json").write_text(json.dumps(records))
    (root / "predictions.json").write_text(json.dumps({r["id"]: r["conversations"][1]["value"] for r in records}))
    (root / "other_predictions.json").write_text(json.dumps({"x_1": "<SG> </SG>"}))
    first = records[0]["id"]
    (root / "repeated_key.json").write_text(f'{{"{first}": "<SG> </SG>", "{first}": "<SG> </SG>"}}')
    (root / "one_prediction.json").write_text(json.dumps({first: records[0]["conversations"][1]["value"]}))
    (root / "repeated_sample.json").write_text(json.dumps([*records[:3], records[1]]))
    (root / "not_json.json").write_text("{not json")
    (root / "empty_list.json").write_text("[]")
    (root / "latin1.json").write_bytes(b"\xff\xfe[]")
    (root / "bad_record.json").write_text(json.dumps([{**records[0], "hdf5_indices": {}}]))
    boolean = {**records[1], "hdf5_indices": {**records[1]["hdf5_indices"], "frame_idx": True}}
    (root / "boolean_frame.json").write_text(json.dumps([records[0], boolean]))
    return root


@dataclass
class Env:
    inp: Path
    out: Path
    tokenizer: Path
    clap: Path


def merge(e: Env, *extra: str, files=PROCEDURES, splits="splits.h5", output=None) -> list[str]:
    output = str(e.out / "m.h5") if output is None else output
    return [
        "--data_dir",
        str(e.inp / "dl"),
        "--input_files",
        *files,
        "--splits_file",
        splits,
        "--output_file",
        output,
        "--quiet",
        *extra,
    ]


def samples(e: Env, *extra: str, hdf5=None) -> list[str]:
    hdf5 = str(e.inp / "merged.h5") if hdf5 is None else hdf5
    return ["--hdf5", hdf5, "--split", "test", "--out", str(e.out), "--no-token-freqs", *extra]


def with_tokenizer(e: Env, *extra: str) -> list[str]:
    return ["--hdf5", str(e.inp / "merged.h5"), "--split", "test", "--out", str(e.out), *extra]


def audio(e: Env, *extra: str, hdf5=None, out=None, encoder=None) -> list[str]:
    hdf5 = str(e.inp / "merged.h5") if hdf5 is None else hdf5
    out = str(e.out / "audio.h5") if out is None else out
    return ["--hdf5", hdf5, "--out", out, "--audio_encoder", str(encoder or e.clap), *extra]


def evaluate_argv(e: Env, *extra: str, predictions=None, sample_file=None, out=None) -> list[str]:
    predictions = str(e.inp / "predictions.json") if predictions is None else predictions
    sample_file = str(e.inp / "samples.json") if sample_file is None else sample_file
    out = str(e.out / "eval") if out is None else out
    return ["--predictions", predictions, "--samples", sample_file, "--out", out, *extra]


@dataclass
class Case:
    id: str
    command: str
    argv: Callable[[Env], list[str]]
    #: Must appear in the error line: what is wrong and where.
    says: str
    #: Prepares the output side (an existing output) before the snapshot.
    setup: Callable[[Env], None] | None = None


def _file(*parts: str, text: str = "precious") -> Callable[[Env], None]:
    def setup(e: Env) -> None:
        path = e.out.joinpath(*parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    return setup


def _dir(*parts: str) -> Callable[[Env], None]:
    return lambda e: e.out.joinpath(*parts).mkdir(parents=True)


def _link(name: str, target: Callable[[Env], Path], hard: bool = False) -> Callable[[Env], None]:
    return lambda e: (os.link if hard else os.symlink)(target(e), e.out / name)


CASES = [
    # --- egoexor-merge-h5 -------------------------------------------------------------------------------------------
    Case("missing input", "merge", lambda e: merge(e, files=("miss_1.h5", "miss_9.h5")), "miss_9.h5: no such file"),
    Case("input is a folder", "merge", lambda e: merge(e, files=(str(e.inp / "folder.h5"),)), "is a folder"),
    Case(
        "input not HDF5",
        "merge",
        lambda e: merge(e, files=(str(e.inp / "garbage.h5"),)),
        "garbage.h5: not an HDF5 file",
    ),
    Case(
        "input a symlink loop",
        "merge",
        lambda e: merge(e, files=(str(e.inp / "loop_a.h5"),)),
        "loop_a.h5: Too many levels of symbolic links",
    ),
    Case(
        "output a symlink loop, --overwrite",
        "merge",
        lambda e: merge(e, "--overwrite", output=str(e.out / "m.h5")),
        "m.h5: Too many levels of symbolic links",
        lambda e: ((e.out / "m.h5").symlink_to("n.h5"), (e.out / "n.h5").symlink_to("m.h5")),
    ),
    Case("input empty", "merge", lambda e: merge(e, files=(str(e.inp / "empty.h5"),)), "empty.h5: not an HDF5"),
    Case(
        "input truncated",
        "merge",
        lambda e: merge(e, files=(str(e.inp / "truncated.h5"),)),
        "truncated.h5: cannot read the HDF5 file",
    ),
    Case(
        "input wrong layout",
        "merge",
        lambda e: merge(e, files=(str(e.inp / "nolayout.h5"),)),
        "nolayout.h5: missing 'metadata/vocabulary/entity'",
    ),
    Case("splits missing", "merge", lambda e: merge(e, splits="nope.h5"), "nope.h5: no such file"),
    Case("splits without group", "merge", lambda e: merge(e, splits="miss_1.h5"), "miss_1.h5: no 'splits/' group"),
    Case("splits truncated", "merge", lambda e: merge(e, splits=str(e.inp / "truncated.h5")), "truncated.h5"),
    Case("output exists", "merge", merge, "m.h5: already exists (pass --overwrite", _file("m.h5")),
    Case("output is an input", "merge", lambda e: merge(e, output="miss_1.h5"), "is also an input"),
    Case(
        "output is an input, --overwrite",
        "merge",
        lambda e: merge(e, "--overwrite", output="miss_2.h5"),
        "is also an input",
    ),
    Case(
        "output is the splits file, --overwrite",
        "merge",
        lambda e: merge(e, "--overwrite", output="splits.h5"),
        "is also an input",
    ),
    Case(
        "output symlinks to an input, --overwrite",
        "merge",
        lambda e: merge(e, "--overwrite"),
        "is also an input",
        _link("m.h5", lambda e: e.inp / "dl" / "miss_1.h5"),
    ),
    Case(
        "output hard-links an input, --overwrite",
        "merge",
        lambda e: merge(e, "--overwrite"),
        "is also an input",
        _link("m.h5", lambda e: e.inp / "dl" / "ultrasound_1.h5", hard=True),
    ),
    Case("output is a folder, --overwrite", "merge", lambda e: merge(e, "--overwrite"), "is a folder", _dir("m.h5")),
    Case(
        "output parent is a file",
        "merge",
        lambda e: merge(e, output=str(e.out / "f" / "m.h5")),
        "is a file, not a folder",
        _file("f"),
    ),
    Case("input given twice", "merge", lambda e: merge(e, files=("miss_1.h5", "miss_1.h5")), "given twice"),
    Case("data_dir missing", "merge", lambda e: ["--data_dir", str(e.out / "nope"), *merge(e)[2:]], "--data_dir"),
    Case("unknown flag", "merge", lambda e: merge(e, "--frobnicate"), "unrecognized arguments: --frobnicate"),
    Case("abbreviated flag", "merge", lambda e: merge(e, "--overwrit"), "unrecognized arguments: --overwrit"),
    Case("missing required flag", "merge", lambda e: merge(e)[:-3] + ["--quiet"], "--output_file"),
    Case("no input files", "merge", lambda e: merge(e, files=()), "--input_files"),
    Case(
        "strict: dangling split rows",
        "merge",
        lambda e: merge(e, "--strict", splits=str(e.inp / "dangling_splits.h5")),
        "1 in test",
    ),
    Case(
        "strict: take without rgb",
        "merge",
        lambda e: merge(e, "--strict", files=("miss_1.h5", "norgb.h5")),
        "data/MISS/2/take/1",
    ),
    # --- make_samples -----------------------------------------------------------------------------------------------
    Case("hdf5 missing", "samples", lambda e: samples(e, hdf5=str(e.inp / "nope.h5")), "--hdf5"),
    Case("hdf5 is a folder", "samples", lambda e: samples(e, hdf5=str(e.inp / "folder.h5")), "is a folder"),
    Case("hdf5 not HDF5", "samples", lambda e: samples(e, hdf5=str(e.inp / "garbage.h5")), "not an HDF5 file"),
    Case(
        "hdf5 truncated",
        "samples",
        lambda e: samples(e, hdf5=str(e.inp / "truncated.h5")),
        "truncated.h5: cannot read the HDF5 file",
    ),
    Case(
        "hdf5 without splits",
        "samples",
        lambda e: samples(e, hdf5=str(e.inp / "dl" / "miss_1.h5")),
        "missing 'splits/test'",
    ),
    Case(
        "annotation misspells an entity",
        "samples",
        lambda e: samples(e, hdf5=str(e.inp / "misspelt.h5")),
        "row 0: 'patiant' is not in metadata/vocabulary/entity",
    ),
    Case("unknown split", "samples", lambda e: samples(e, "--split", "val"), "invalid choice: 'val'"),
    Case("zero permutations", "samples", lambda e: samples(e, "--n-permutations", "0"), "--n-permutations"),
    Case(
        "permutations not a number", "samples", lambda e: samples(e, "--n-permutations", "two"), "expected an integer"
    ),
    Case("dropout above 1", "samples", lambda e: samples(e, "--modality-dropout-prob", "1.5"), "<= 1.0"),
    Case("dropout nan", "samples", lambda e: samples(e, "--modality-dropout-prob", "nan"), "got nan"),
    Case("reduce ratio 0", "samples", lambda e: samples(e, "--reduce-ratio", "0"), "--reduce-ratio"),
    Case("reduce ratio leaves nothing", "samples", lambda e: samples(e, "--reduce-ratio", "100000"), "gives no sample"),
    Case(
        "samples file exists",
        "samples",
        samples,
        "already exists",
        _file(make_samples.samples_file_name("test", 1, 0.0)),
    ),
    Case(
        "samples file is the hdf5, --overwrite",
        "samples",
        lambda e: [
            "--hdf5",
            str(e.inp / "merged.h5"),
            "--split",
            "test",
            "--out",
            str(e.inp),
            "--name",
            "merged.h5",
            "--no-token-freqs",
            "--overwrite",
        ],
        "is also an input",
    ),
    Case("name is a path", "samples", lambda e: samples(e, "--name", "../x.json"), "must be a file name"),
    Case(
        "tokenizer missing", "samples", lambda e: with_tokenizer(e, "--tokenizer", str(e.inp / "nope")), "--tokenizer"
    ),
    Case(
        "tokenizer folder empty",
        "samples",
        lambda e: with_tokenizer(e, "--tokenizer", str(e.inp / "empty_dir")),
        "--tokenizer",
    ),
    Case(
        "token-freq file exists",
        "samples",
        lambda e: with_tokenizer(e, "--tokenizer", str(e.tokenizer)),
        "already exists",
        _file(make_samples.token_freqs_file_name("test", 1)),
    ),
    Case("abbreviated flag", "samples", lambda e: samples(e, "--n-perm", "2"), "unrecognized arguments: --n-perm"),
    Case(
        "samples file replaces a tokenizer file, --overwrite",
        "samples",
        lambda e: [
            "--hdf5",
            str(e.inp / "merged.h5"),
            "--out",
            str(e.tokenizer),
            "--tokenizer",
            str(e.tokenizer),
            "--name",
            "tokenizer.json",
            "--overwrite",
        ],
        "tokenizer.json: is inside the input folder",
    ),
    # --- precompute_audio -------------------------------------------------------------------------------------------
    Case("batch size -1", "audio", lambda e: audio(e, "--batch_size", "-1"), "--batch_size: must be >= 1, got -1"),
    Case("batch size 0", "audio", lambda e: audio(e, "--batch_size", "0"), "--batch_size"),
    Case("batch size not a number", "audio", lambda e: audio(e, "--batch_size", "many"), "expected an integer"),
    Case(
        "out is the hdf5, --overwrite",
        "audio",
        lambda e: audio(e, "--overwrite", out=str(e.inp / "merged.h5")),
        "is also an input",
    ),
    Case("out exists", "audio", audio, "audio.h5: already exists", _file("audio.h5")),
    Case("out is a folder, --overwrite", "audio", lambda e: audio(e, "--overwrite"), "is a folder", _dir("audio.h5")),
    Case("hdf5 missing", "audio", lambda e: audio(e, hdf5=str(e.inp / "nope.h5")), "nope.h5: no such file"),
    Case("hdf5 truncated", "audio", lambda e: audio(e, hdf5=str(e.inp / "truncated.h5")), "truncated.h5"),
    Case("hdf5 not HDF5", "audio", lambda e: audio(e, hdf5=str(e.inp / "garbage.h5")), "not an HDF5 file"),
    Case(
        "hdf5 wrong layout",
        "audio",
        lambda e: audio(e, hdf5=str(e.inp / "nolayout.h5")),
        "nolayout.h5: missing 'metadata/vocabulary/entity'",
    ),
    Case(
        "hdf5 without audio",
        "audio",
        lambda e: audio(e, hdf5=str(e.inp / "dl" / "ultrasound_1.h5")),
        "no take has audio/snippets",
    ),
    Case("encoder missing", "audio", lambda e: audio(e, encoder=e.inp / "nope"), "--audio_encoder"),
    Case("encoder folder empty", "audio", lambda e: audio(e, encoder=e.inp / "empty_dir"), "--audio_encoder"),
    Case(
        "out replaces a file of the encoder folder, --overwrite",
        "audio",
        lambda e: audio(e, "--overwrite", out=str(e.clap / "config.json")),
        "is inside the input folder",
    ),
    Case("unknown audio_norm", "audio", lambda e: audio(e, "--audio_norm", "loud"), "invalid choice: 'loud'"),
    # --- synthetic --------------------------------------------------------------------------------------------------
    Case(
        "existing dataset file",
        "synthetic",
        lambda e: ["--out", str(e.out), "--frames", "4"],
        "miss_1.h5: already exists",
        _file("miss_1.h5"),
    ),
    Case(
        "existing file is a folder, --overwrite",
        "synthetic",
        lambda e: ["--out", str(e.out), "--frames", "4", "--overwrite"],
        "splits.h5: is a folder",
        _dir("splits.h5"),
    ),
    Case("out is a file", "synthetic", lambda e: ["--out", str(e.out / "f"), "--frames", "4"], "is a file", _file("f")),
    Case("too few frames", "synthetic", lambda e: ["--out", str(e.out), "--frames", "2"], "--frames: must be >= 3"),
    Case("negative seed", "synthetic", lambda e: ["--out", str(e.out), "--seed", "-1"], "--seed: must be >= 0"),
    Case(
        "a trillion frames",
        "synthetic",
        lambda e: ["--out", str(e.out), "--frames", "1000000000000"],
        "--frames: must be >= 3 and <= 108000, got 1000000000000",
    ),
    Case("unknown profile", "synthetic", lambda e: ["--out", str(e.out), "--profile", "huge"], "invalid choice"),
    # --- evaluate ---------------------------------------------------------------------------------------------------
    Case(
        "predictions missing",
        "evaluate",
        lambda e: evaluate_argv(e, predictions=str(e.inp / "nope.json")),
        "--predictions",
    ),
    Case("samples missing", "evaluate", lambda e: evaluate_argv(e, sample_file=str(e.inp / "nope.json")), "--samples"),
    Case(
        "samples not JSON",
        "evaluate",
        lambda e: evaluate_argv(e, sample_file=str(e.inp / "not_json.json")),
        "not_json.json: invalid JSON",
    ),
    Case(
        "samples not UTF-8",
        "evaluate",
        lambda e: evaluate_argv(e, sample_file=str(e.inp / "latin1.json")),
        "latin1.json: cannot read",
    ),
    Case(
        "samples empty",
        "evaluate",
        lambda e: evaluate_argv(e, sample_file=str(e.inp / "empty_list.json")),
        "the sample list is empty",
    ),
    Case(
        "samples record malformed",
        "evaluate",
        lambda e: evaluate_argv(e, sample_file=str(e.inp / "bad_record.json")),
        "record 0",
    ),
    Case(
        "predictions a symlink loop",
        "evaluate",
        lambda e: evaluate_argv(e, predictions=str(e.inp / "loop_a.json")),
        "loop_a.json: Too many levels of symbolic links",
    ),
    Case(
        "a prediction key twice",
        "evaluate",
        lambda e: evaluate_argv(e, predictions=str(e.inp / "repeated_key.json")),
        "repeated_key.json: the key 'MISS_1_1_",
    ),
    Case(
        "a sample id twice",
        "evaluate",
        lambda e: evaluate_argv(e, sample_file=str(e.inp / "repeated_sample.json")),
        "occurs twice (predictions go by id)",
    ),
    Case(
        "predictions below --min_coverage",
        "evaluate",
        lambda e: evaluate_argv(e, "--min_coverage", "0.5", predictions=str(e.inp / "one_prediction.json")),
        "one_prediction.json: predictions for only 1 of 35 samples (2.9%), below --min_coverage 0.5",
    ),
    Case(
        "--min_coverage above 1",
        "evaluate",
        lambda e: evaluate_argv(e, "--min_coverage", "1.5"),
        "--min_coverage: must be >= 0 and <= 1, got 1.5",
    ),
    Case(
        "samples record with a boolean frame",
        "evaluate",
        lambda e: evaluate_argv(e, sample_file=str(e.inp / "boolean_frame.json")),
        "boolean_frame.json: record 1 (id 'MISS_1_1_",
    ),
    Case(
        "predictions not an object",
        "evaluate",
        lambda e: evaluate_argv(e, predictions=str(e.inp / "empty_list.json")),
        "expected a JSON object",
    ),
    Case(
        "predictions of another split",
        "evaluate",
        lambda e: evaluate_argv(e, predictions=str(e.inp / "other_predictions.json")),
        "no prediction has the id",
    ),
    Case(
        "predictions is a folder",
        "evaluate",
        lambda e: evaluate_argv(e, predictions=str(e.inp / "empty_dir")),
        "is a folder",
    ),
    Case("out exists", "evaluate", evaluate_argv, "eval: already exists", _file("eval", "report.md")),
    Case(
        "out holds an input, --overwrite",
        "evaluate",
        lambda e: evaluate_argv(e, "--overwrite", out=str(e.inp)),
        "holds the input",
    ),
    Case(
        "out is the predictions file, --overwrite",
        "evaluate",
        lambda e: evaluate_argv(e, "--overwrite", out=str(e.inp / "predictions.json")),
        "is also an input",
    ),
    Case(
        "out is a file, --overwrite",
        "evaluate",
        lambda e: evaluate_argv(e, "--overwrite"),
        "is a file, expected a folder",
        _file("eval"),
    ),
    Case(
        "out an unrelated folder, --overwrite",
        "evaluate",
        lambda e: evaluate_argv(e, "--overwrite"),
        "eval: not replaced: it holds files and no .egoexor.evaluate",
        _file("eval", "sub", "thesis.tex"),
    ),
    Case(
        "out the current folder, --overwrite",
        "evaluate",
        lambda e: evaluate_argv(e, "--overwrite", out="."),
        ".: is the current folder or holds it",
    ),
    Case(
        "out an ancestor of the current folder, --overwrite",
        "evaluate",
        lambda e: evaluate_argv(e, "--overwrite", out=".."),
        "is the current folder or holds it",
    ),
    Case(
        "out the home folder, --overwrite",
        "evaluate",
        lambda e: evaluate_argv(e, "--overwrite", out=str(Path.home())),
        "is the home folder",
    ),
    Case("unknown protocol", "evaluate", lambda e: evaluate_argv(e, "--protocol", "mine"), "invalid choice"),
    Case("abbreviated flag", "evaluate", lambda e: evaluate_argv(e, "--overwr"), "unrecognized arguments: --overwr"),
]


def snapshot(*roots: Path) -> dict[str, str]:
    """Every path under the roots (hidden ones included) with its content hash: equal snapshots, equal trees."""
    state = {}
    for root in roots:
        for path in sorted(root.rglob("*")):
            if path.is_symlink():
                state[str(path)] = f"-> {os.readlink(path)}"
            elif path.is_dir():
                state[str(path)] = "folder"
            else:
                state[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return state


@pytest.fixture
def env(inputs, tokenizer_dir, clap_dir, tmp_path) -> Env:
    return Env(inputs, tmp_path, tokenizer_dir, clap_dir)


@pytest.mark.parametrize("case", CASES, ids=[f"{c.command}: {c.id}" for c in CASES])
def test_bad_input_is_one_clear_line_and_changes_nothing(case: Case, env: Env, capsys, monkeypatch):
    name, main = COMMANDS[case.command]
    cwd = env.out / "cwd"  # "." and ".." of the current-folder cases: never where the inputs are
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    if case.setup:
        case.setup(env)
    argv = case.argv(env)
    before = snapshot(env.inp, env.tokenizer, env.clap, env.out)
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{name}: error: "), err
    assert case.says in lines[0]
    assert "Traceback" not in err
    assert snapshot(env.inp, env.tokenizer, env.clap, env.out) == before  # inputs intact, nothing written


def test_the_battery_covers_every_command_with_enough_cases():
    assert {case.command for case in CASES} == set(COMMANDS)
    assert len(CASES) >= 50


# --- Ctrl-C in the middle of the work: one line, exit 130, nothing left behind. -----------------------------------


def _raise_on_call(n: int) -> Callable:
    calls = []

    def interrupt(*args, **kwargs):
        calls.append(1)
        if len(calls) >= n:
            raise KeyboardInterrupt

    return interrupt


def _interrupt_merge(monkeypatch, e: Env) -> list[str]:
    original = merge_h5._merge_group
    hook = _raise_on_call(2)
    monkeypatch.setattr(merge_h5, "_merge_group", lambda *args: (hook(), original(*args)))
    return merge(e)


def _interrupt_samples(monkeypatch, e: Env) -> list[str]:
    monkeypatch.setattr(make_samples, "count_tokens", _raise_on_call(1))
    return with_tokenizer(e, "--tokenizer", str(e.tokenizer))


def _interrupt_audio(monkeypatch, e: Env) -> list[str]:
    monkeypatch.setattr("egoexor.data.audio.ClapAudioEmbedder.__call__", _raise_on_call(1))
    return audio(e)


def _interrupt_synthetic(monkeypatch, e: Env) -> list[str]:
    original = synthetic._TakeWriter.write
    hook = _raise_on_call(2)
    monkeypatch.setattr(synthetic._TakeWriter, "write", lambda *args: (hook(), original(*args)))
    return ["--out", str(e.out), "--frames", "4"]


def _interrupt_evaluate(monkeypatch, e: Env) -> list[str]:
    _file("eval", "report.md", text="the old report")(e)
    _file("eval", cli.marker(evaluate.COMMAND))(e)  # an earlier evaluation, which --overwrite may replace
    monkeypatch.setattr(evaluate, "confusion_figure", _raise_on_call(1))
    return evaluate_argv(e, "--overwrite")


@pytest.mark.parametrize(
    ("command", "arrange"),
    [
        ("merge", _interrupt_merge),
        ("samples", _interrupt_samples),
        ("audio", _interrupt_audio),
        ("synthetic", _interrupt_synthetic),
        ("evaluate", _interrupt_evaluate),
    ],
)
def test_ctrl_c_is_one_line_exit_130_and_leaves_no_temporary(command, arrange, env, monkeypatch, capsys):
    name, main = COMMANDS[command]
    argv = arrange(monkeypatch, env)
    before = snapshot(env.inp, env.tokenizer, env.clap)
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 130
    assert err.splitlines()[-1] == f"{name}: interrupted" and "Traceback" not in err
    assert snapshot(env.inp, env.tokenizer, env.clap) == before
    assert not list(env.out.rglob(".*.tmp"))
    for path in env.out.rglob("*.h5"):  # synthetic writes file by file: what exists is complete
        with h5py.File(path, "r") as h5:
            assert layout.check_layout(h5) >= 1
    if command == "evaluate":
        assert sorted(p.name for p in (env.out / "eval").iterdir()) == [".egoexor.evaluate", "report.md"]
        assert (env.out / "eval" / "report.md").read_text() == "the old report"
    elif command != "synthetic":
        assert not [p for p in env.out.rglob("*") if p.is_file()]


# --- Signals to a real merge process. ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def large_inputs(tmp_path_factory) -> list[Path]:
    """Per-procedure files big enough (~30 MB) that a merge is still running when the signal comes."""
    dataset = synthetic.generate(tmp_path_factory.mktemp("large"), "tiny", seed=1, n_frames=400)
    return dataset.files


#: Runs ``egoexor-merge-h5`` with the fsync before its final rename held until $RELEASE exists: a merge that
#: holds its output (temporary written, lock taken) for as long as a test needs.
_HELD_MERGE = """
import os, sys, time
from pathlib import Path
from egoexor import atomic
from egoexor.data import merge_h5
release, fsync = Path(os.environ["RELEASE"]), atomic._fsync
def held(path):
    while not release.exists():
        time.sleep(0.01)
    fsync(path)
atomic._fsync = held
sys.exit(merge_h5.main(sys.argv[1:]))
"""


def _start_merge(files: list[Path], output: Path, release: Path | None = None) -> tuple[subprocess.Popen, Path]:
    """Start a merge and return once its temporary output exists (the merge is under way); with ``release``,
    a merge that waits for that file to exist before it completes."""
    program = ["-m", "egoexor.data.merge_h5"] if release is None else ["-c", _HELD_MERGE]
    process = subprocess.Popen(
        [
            sys.executable,
            *program,
            "--data_dir",
            str(files[0].parent),
            "--input_files",
            *[p.name for p in files],
            "--output_file",
            str(output),
            "--quiet",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "RELEASE": str(release), "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        temporaries = list(output.parent.glob(f".{output.name}.*.tmp"))
        if temporaries:
            return process, temporaries[0]
        time.sleep(0.001)
    process.kill()
    pytest.fail(f"the merge never showed a temporary output: {process.communicate()}")


def test_kill_9_during_a_merge_leaves_a_stale_temporary_that_the_next_run_removes(large_inputs, tmp_path, capsys):
    output = tmp_path / "out" / "merged.h5"
    process, temporary = _start_merge(large_inputs, output)
    process.kill()
    process.communicate()
    assert process.returncode == -signal.SIGKILL
    assert not output.exists() and temporary.exists()  # killed mid-way: the old state (nothing)
    code = merge_h5.main(
        [
            "--data_dir",
            str(large_inputs[0].parent),
            "--input_files",
            *[p.name for p in large_inputs],
            "--output_file",
            str(output),
            "--quiet",
        ]
    )
    assert code == 0
    assert f".{atomic._HOST}.{process.pid}." in temporary.name
    warning = f"egoexor-merge-h5: warning: removed {temporary}, left by an interrupted run"
    assert capsys.readouterr().err.splitlines() == [warning]
    assert [p.name for p in output.parent.iterdir()] == ["merged.h5"]
    with h5py.File(output, "r") as h5:
        assert layout.check_layout(h5) == 4


#: The line each stop signal ends a command with (exit status 128 + the signal's number).
STOP_LINES = {
    signal.SIGINT: "interrupted",
    signal.SIGTERM: "stopped by SIGTERM",
    signal.SIGHUP: "stopped by SIGHUP",
    signal.SIGQUIT: "stopped by SIGQUIT",
}


@pytest.mark.parametrize("signum", list(STOP_LINES), ids=[s.name for s in STOP_LINES])
def test_a_stop_signal_during_a_merge_is_one_line_exit_128_plus_n_and_removes_the_temporary(
    signum, large_inputs, tmp_path
):
    output = tmp_path / "out" / "merged.h5"
    process, _ = _start_merge(large_inputs, output)
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signum
    assert err == f"egoexor-merge-h5: {STOP_LINES[signum]}\n"
    assert list(output.parent.iterdir()) == []


def test_sighup_to_the_process_group_during_synthetic_is_one_line_and_keeps_the_earlier_output(tmp_path):
    """A closed terminal: every process of the group gets SIGHUP while files are written; the earlier
    dataset (written with another seed) stays byte-identical and no temporary is left."""
    out = tmp_path / "data"
    synthetic.generate(out, "tiny", seed=3, n_frames=4)
    before = snapshot(out)
    command = [sys.executable, "-m", "egoexor.data.synthetic", "--out", str(out), "--frames", "400", "--overwrite"]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    deadline = time.monotonic() + 60
    while process.poll() is None and not list(out.glob(".*.tmp")) and time.monotonic() < deadline:
        time.sleep(0.001)
    os.killpg(process.pid, signal.SIGHUP)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGHUP, err
    assert err.splitlines()[-1] == "egoexor.data.synthetic: stopped by SIGHUP" and "Traceback" not in err
    assert snapshot(out) == before


def test_a_second_merge_into_the_same_output_is_refused_while_the_first_writes(large_inputs, tmp_path):
    """Two real processes: the second is one line naming the output and the process writing it, and touches
    nothing; the first completes its output."""
    output, release = tmp_path / "out" / "merged.h5", tmp_path / "release"
    first, temporary = _start_merge(large_inputs, output, release)  # holds its output until released
    second = subprocess.run(
        [sys.executable, "-m", "egoexor.data.merge_h5", "--data_dir", str(large_inputs[0].parent)]
        + ["--input_files", *[p.name for p in large_inputs], "--output_file", str(output), "--quiet"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert first.poll() is None and temporary.exists()  # the first was writing all along
    assert second.returncode == 2
    assert second.stderr == (
        f"egoexor-merge-h5: error: {output}: process {first.pid} on {socket.gethostname()} is writing it; "
        "wait for it to end or write elsewhere\n"
    )
    release.touch()
    _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert [p.name for p in output.parent.iterdir()] == ["merged.h5"]  # no lock file, no temporary
    with h5py.File(output, "r") as h5:
        assert layout.check_layout(h5) == 4


def test_the_output_lock_nests_in_one_process_and_a_killed_holders_file_is_taken_over(tmp_path):
    target = tmp_path / "out.json"
    (tmp_path / ".out.json.lock").write_text(f"process {_dead_pid()} on {socket.gethostname()}")  # kill -9'd
    with atomic.output_lock(target):
        with atomic.atomic_output(target) as temporary:  # the same process asks again: allowed
            temporary.write_text("{}")
        assert (tmp_path / ".out.json.lock").read_text() == f"process {os.getpid()} on {socket.gethostname()}"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


# --- The atomic layer itself. --------------------------------------------------------------------------------------


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_stale_temporaries_of_dead_processes_go_those_of_live_ones_stay(tmp_path):
    target = tmp_path / "out.json"
    prefix = atomic._prefix(target)  # this process: alive
    live = tmp_path / f"{prefix}abc123.tmp"
    stale_file = tmp_path / f"{prefix.replace(f'.{os.getpid()}.', f'.{_dead_pid()}.')}def456.tmp"
    stale_folder = tmp_path / f".out.json.{atomic._HOST}.{_dead_pid()}.ghi789.tmp"
    other_host = tmp_path / f".out.json.elsewhere.{_dead_pid()}.jkl012.tmp"
    other_target = tmp_path / f".other.json.{atomic._HOST}.{_dead_pid()}.mno345.tmp"
    for path in (live, stale_file, other_host, other_target):
        path.write_text("partial")
    stale_folder.mkdir()
    (stale_folder / "metrics.json").write_text("partial")
    atomic.write_json(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        p.name for p in (target, live, other_host, other_target)
    )


def test_outputs_are_fsynced_before_and_after_the_rename(tmp_path, monkeypatch):
    synced = []
    original = os.fsync

    def record(descriptor):
        synced.append(Path(os.readlink(f"/proc/self/fd/{descriptor}")))
        original(descriptor)

    monkeypatch.setattr(os, "fsync", record)
    target = tmp_path / "a.json"
    atomic.write_json(target, [1])
    assert len(synced) == 2 and synced[0].name.startswith(".a.json.") and synced[1] == tmp_path
    synced.clear()
    with atomic.atomic_folder(tmp_path / "run") as folder:
        (folder / "x.bin").write_bytes(b"x")
    assert [p.name for p in synced[:1]] == ["x.bin"] and synced[-1] == tmp_path


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2 exchange", "two renames"])
def test_a_folder_is_replaced_only_when_the_new_one_is_complete(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(atomic, "_exchange", lambda first, second: False)
    target = tmp_path / "eval"
    target.mkdir()
    (target / "old.md").write_text("old")
    with pytest.raises(RuntimeError), atomic.atomic_folder(target) as folder:
        (folder / "new.md").write_text("half")
        assert (target / "old.md").read_text() == "old"
        raise RuntimeError("crash while writing")
    assert [p.name for p in tmp_path.iterdir()] == ["eval"] and [p.name for p in target.iterdir()] == ["old.md"]
    with atomic.atomic_folder(target) as folder:
        (folder / "new.md").write_text("new")
    assert [p.name for p in tmp_path.iterdir()] == ["eval"] and [p.name for p in target.iterdir()] == ["new.md"]


def test_evaluate_overwrite_replaces_the_folder_and_a_rerun_without_it_is_refused(env, capsys):
    assert evaluate.main(evaluate_argv(env)) == 0
    (env.out / "eval" / "notes.txt").write_text("mine")
    assert evaluate.main(evaluate_argv(env)) == 2
    assert (env.out / "eval" / "notes.txt").exists()
    assert evaluate.main(evaluate_argv(env, "--overwrite")) == 0
    assert sorted(p.name for p in (env.out / "eval").iterdir()) == [
        ".egoexor.evaluate",
        "confusion_matrix.png",
        "f1_per_predicate.png",
        "metrics.json",
        "report.md",
    ]
    assert [p.name for p in env.out.iterdir()] == ["eval"]


@pytest.mark.parametrize("command", ["samples", "audio"])
def test_a_hub_name_not_cached_offline_is_one_line_before_any_work(command, env, monkeypatch, capsys):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(make_samples, "make_samples", _raise_on_call(0))  # no sample may be made first
    monkeypatch.setattr("egoexor.data.audio.ClapAudioEmbedder", _raise_on_call(0))  # imported where it runs
    if command == "samples":
        argv, flag = with_tokenizer(env, "--tokenizer", "nobody/no-such-tokenizer"), "--tokenizer"
    else:
        argv, flag = audio(env, encoder="nobody/no-such-clap"), "--audio_encoder"
    name, main = COMMANDS[command]
    assert main(argv) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"{name}: error: {flag} 'nobody/no-such-"), err
    assert "not in the Hugging Face cache (offline)" in err[0]
    assert list(env.out.iterdir()) == []


def test_overwrite_replaces_a_folder_of_the_same_command_only(env, capsys):
    cli.check_output(env.out / "absent", overwrite=False, owner="x")  # absent or empty: nothing to replace
    (env.out / "mine").mkdir()
    with cli.output_folder(env.out / "mine", "x") as temporary:
        (temporary / "a.txt").write_text("a")
    assert cli.check_output(env.out / "mine", overwrite=True, owner="x") == env.out / "mine"
    with pytest.raises(cli.CommandError, match="already exists"):
        cli.check_output(env.out / "mine", overwrite=False, owner="x")
    with pytest.raises(cli.CommandError, match=r"mine: not replaced: it holds files and no \.y "):
        cli.check_output(env.out / "mine", overwrite=True, owner="y")


# --- Warnings: accepted, but named. --------------------------------------------------------------------------------


def test_takes_without_rgb_are_named_by_merge_and_make_samples(env, capsys):
    output = env.out / "m.h5"
    assert merge_h5.main(merge(env, files=("miss_1.h5", "norgb.h5", "ultrasound_1.h5"), output=str(output))) == 0
    err = capsys.readouterr().err
    assert "egoexor-merge-h5: warning: take(s) without frames/rgb (no images): data/MISS/2/take/1" in err
    assert make_samples.main(samples(env, hdf5=str(output))) == 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("egoexor.data.make_samples: warning: ")
    assert "samples have no images: take(s) without frames/rgb: data/MISS/2/take/1" in err[0]


def test_split_rows_naming_a_missing_take_are_a_warning_in_merge_and_make_samples(env, capsys):
    """merge keeps them with a warning (an error with --strict, above); make_samples then leaves them out with a
    warning too, instead of refusing the file merge wrote."""
    assert make_samples.main(samples(env, hdf5=str(env.inp / "dangling.h5"))) == 0
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "egoexor.data.make_samples: warning: split rows name take(s) not in the file, left out: data/MISS/9/take/1 (1)"
    ]
    written = json.loads(next(env.out.glob("test_*.json")).read_text())
    assert written and not any(record["id"].startswith("MISS_9_1_") for record in written)


def test_evaluate_counts_unparsable_predictions_and_unknown_names(env, capsys):
    records = json.loads((env.inp / "samples.json").read_text())
    predictions = {r["id"]: r["conversations"][1]["value"] for r in records}
    ids = sorted(predictions)
    predictions[ids[0]] = "I cannot see the operating room"
    predictions[ids[1]] = "<SG> head surgeon,robot,holding; patient,operating table,levitating </SG>"
    path = env.out / "predictions.json"
    path.write_text(json.dumps(predictions))
    assert evaluate.main(evaluate_argv(env, "--protocol", "gt", predictions=str(path))) == 0
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("egoexor.evaluate: warning: 1 of ")
    assert "predictions unparsable" in err[0] and "2 unknown names" in err[0] and "'robot'" in err[0]
    result = json.loads((env.out / "eval" / "metrics.json").read_text())
    assert result["unparsable_predictions"] == {"count": 1, "examples": [ids[0]]}
    assert result["unknown_names"] == {
        "count": 2,
        "dropped_triplets": 2,
        "examples": {"entity": ["robot"], "predicate": ["levitating"]},
    }
    assert "Dropped by the parser: 1 of" in (env.out / "eval" / "report.md").read_text()


def test_precompute_audio_writes_once_and_replaces_only_with_overwrite(env, capsys):
    from egoexor.data.audio import AudioCache

    argv = audio(env, hdf5=str(env.inp / "dl" / "miss_2.h5"))
    assert precompute_audio.main(argv) == 0
    with h5py.File(env.out / "audio.h5", "r") as h5:
        assert h5[f"data/MISS/2/take/1/audio/{AudioCache.DATASET}"].shape[0] == 40
    first = (env.out / "audio.h5").read_bytes()
    assert precompute_audio.main(argv) == 2
    assert (env.out / "audio.h5").read_bytes() == first
    assert precompute_audio.main([*argv, "--overwrite", "--batch_size", "7"]) == 0
    assert [p.name for p in env.out.iterdir()] == ["audio.h5"]


def test_range_checks_for_flags_and_fields():
    parser = cli.ArgumentParser(prog="x")
    parser.add_argument("--learning_rate", type=cli.float_flag(0, exclusive_low=True))
    assert parser.parse_args(["--learning_rate", "1e-3"]).learning_rate == 1e-3
    for bad, says in (("0", "must be > 0, got 0.0"), ("inf", "must be > 0, got inf"), ("fast", "expected a number")):
        with pytest.raises(cli.CommandError, match=f"argument --learning_rate: {says}"):
            parser.parse_args(["--learning_rate", bad])
    with pytest.raises(cli.CommandError, match="unrecognized arguments: --learning_rat"):
        parser.parse_args(["--learning_rat", "1e-3"])
    cli.check_range("lora_r", 8, 1)
    with pytest.raises(cli.CommandError, match=r"^lora_r must be >= 1 and <= 1024, got 0$"):
        cli.check_range("lora_r", 0, 1, 1024)


def test_evaluate_says_loudly_how_little_of_the_split_the_predictions_cover(env, capsys):
    assert evaluate.main(evaluate_argv(env, predictions=str(env.inp / "one_prediction.json"))) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    said = "egoexor.evaluate: warning: predictions for only 1 of 35 samples (2.9%): the other 34 are scored as empty"
    assert any(line.startswith(said) for line in warnings), warnings
    assert evaluate.main(evaluate_argv(env, "--overwrite", "--min_coverage", "1")) == 0  # all of them: no warning
    assert "warning" not in capsys.readouterr().err


# --- One spelling rule for every flag; defaults in --help (issue 24). -----------------------------------------------


def test_every_long_flag_answers_to_dashes_and_underscores_and_help_lists_it_once():
    parser = cli.ArgumentParser(prog="p")
    parser.add_argument("--n-permutations", type=int, default=1, help="samples per frame")
    parser.add_argument("--max_new_tokens", type=int, default=300, help="answer length. Default: %(default)s.")
    parser.add_argument("--out", help="output")
    parser.add_argument("--quiet", action="store_true", help="no progress")
    parsed = parser.parse_args(["--n_permutations", "3", "--max-new-tokens=5", "--out", "x"])
    assert (parsed.n_permutations, parsed.max_new_tokens, parsed.out) == (3, 5, "x")
    with pytest.raises(cli.CommandError, match="unrecognized arguments: --n_permutation"):
        parser.parse_args(["--n_permutation", "3"])  # a near miss stays unknown: no abbreviations, no guessing
    text = parser.format_help()
    assert "--n-permutations N_PERMUTATIONS" in text and "--n_permutations" not in text
    assert "samples per frame (default: 1)" in text
    assert text.count("300") == 1  # the text named its default already
    assert "output (default" not in text and "no progress (default" not in text  # none, and a switch that is off


def test_the_reference_flags_of_train_answer_to_dashes_too():
    from egoexor.config import parse_train_args

    tiny = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
    setup = parse_train_args(["--config", str(tiny), "--learning-rate", "0.001"])
    assert setup.trainer.learning_rate == 0.001


# --- One name per concept: --hdf5, --samples, --out, --checkpoint (issue 24). ---------------------------------------


def test_train_takes_the_common_names_beside_the_reference_ones():
    from egoexor.config import parse_train_args

    tiny = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
    common = parse_train_args(["--config", str(tiny), "--samples", "s.json", "--hdf5", "f.h5", "--out", "runs/x"])
    reference = parse_train_args(
        ["--config", str(tiny), "--data_path", "s.json", "--hdf5-path", "f.h5", "--output_dir", "runs/x"]
    )
    for setup in (common, reference):
        assert (setup.train.data_path, setup.train.hdf5_path, setup.trainer.output_dir) == ("s.json", "f.h5", "runs/x")


def test_merge_takes_out_for_output_file(tiny_dataset, tmp_path):
    folder = tiny_dataset.files[0].parent
    argv = ["--data_dir", str(folder), "--input_files", tiny_dataset.files[0].name, "--quiet"]
    assert merge_h5.main([*argv, "--out", str(tmp_path / "a.h5")]) == 0
    assert merge_h5.main([*argv, "--output-file", str(tmp_path / "b.h5")]) == 0
    with h5py.File(tmp_path / "a.h5") as first, h5py.File(tmp_path / "b.h5") as second:
        assert sorted(first["data/MISS/1/take"]) == sorted(second["data/MISS/1/take"]) == ["1", "2"]


def test_convert_takes_checkpoint_and_out_or_its_positionals_not_both(tmp_path, capsys):
    from egoexor import convert_reference

    assert convert_reference.main(["--out", str(tmp_path / "c")]) == cli.EXIT_ERROR
    assert (
        capsys.readouterr().err
        == "egoexor.convert_reference: error: --checkpoint (or INPUT) is required (see --help)\n"
    )
    assert convert_reference.main([str(tmp_path), "--checkpoint", str(tmp_path), "--out", "c"]) == cli.EXIT_ERROR
    assert "INPUT " in capsys.readouterr().err
    assert convert_reference.main(["--checkpoint", str(tmp_path), "--out", str(tmp_path / "c")]) == cli.EXIT_ERROR
    err = capsys.readouterr().err  # both flags taken: the folder itself is what is wrong
    assert err.startswith(f"egoexor.convert_reference: error: {tmp_path}: not the released checkpoint folder"), err
