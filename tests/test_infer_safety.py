"""``egoexor.infer``, ``egoexor.convert_reference`` and ``egoexor.demo`` under attack: bad inputs, bad flags,
existing outputs, an unreachable hub, Ctrl-C and ``kill -9``.

Every case of the battery asserts the contract of :mod:`egoexor.cli`: exit status 2, exactly one stderr
line ``<command>: error: ...`` naming what is wrong, no traceback, every input byte-identical afterwards,
and the output side exactly as it was (nothing half-written, no debris). All of them fail before a model
is loaded. The hub is offline for the battery (or unreachable, where a case says so): nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import huggingface_hub
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from test_cli_safety import Case as BatteryCase
from test_cli_safety import _dir, _file, snapshot
from test_infer import checkpoint, few_samples, infer_args, reference_run  # noqa: F401  (fixtures)

from egoexor import cli, convert_reference, demo, evaluate, infer
from egoexor.convert_reference import REFERENCE_ADAPTER, REFERENCE_NON_LORA
from egoexor.data.audio import AudioCache
from egoexor.data.reader import EgoExorReader
from egoexor.data.samples import load_samples
from egoexor.model.build import CONFIG_FILE, NON_LORA_FILE
from egoexor.model.egoexor_llava import EgoExorLlava

ROOT = Path(__file__).resolve().parents[1]
COMMANDS: dict[str, tuple[str, Callable[[list[str]], int]]] = {
    "infer": ("egoexor.infer", infer.main),
    "convert": ("egoexor.convert_reference", convert_reference.main),
    "demo": ("egoexor.demo", demo.main),
}


def _edited_checkpoint(source: Path, target: Path, edit: Callable[[dict], object]) -> None:
    """A copy of a checkpoint folder whose egoexor_config.json went through ``edit``."""
    shutil.copytree(source, target)
    config = json.loads((target / CONFIG_FILE).read_text())
    edit(config)
    (target / CONFIG_FILE).write_text(json.dumps(config))


@pytest.fixture(scope="module")
def inputs(checkpoint, few_samples, merged_file, tmp_path_factory) -> Path:
    """Every input of the battery, good and bad, in one folder that no case may change."""
    root = tmp_path_factory.mktemp("infer_safety_inputs")
    shutil.copytree(checkpoint, root / "ckpt")
    shutil.copy(merged_file, root / "merged.h5")
    records = json.loads(few_samples.read_text())
    (root / "samples.json").write_text(json.dumps(records))
    (root / "empty_list.json").write_text("[]")
    (root / "not_json.json").write_text("{not json")
    (root / "bad_record.json").write_text(json.dumps([{**records[0], "hdf5_indices": {}}]))
    (root / "null_id.json").write_text(json.dumps([records[0], {**records[1], "id": None}]))
    (root / "dup_ids.json").write_text(json.dumps([records[0], records[1], records[0]]))
    moved = [dict(r, hdf5_indices=dict(r["hdf5_indices"])) for r in records]
    moved[2]["hdf5_indices"]["take_id"] = 9
    (root / "missing_take.json").write_text(json.dumps(moved))
    late = [dict(r, hdf5_indices=dict(r["hdf5_indices"])) for r in records]
    late[3]["hdf5_indices"]["frame_idx"] = 100_000
    (root / "missing_frame.json").write_text(json.dumps(late))
    (root / "garbage.h5").write_text("this is not HDF5\n")
    data = (root / "merged.h5").read_bytes()
    (root / "truncated.h5").write_bytes(data[: len(data) // 2])
    (root / "folder.h5").mkdir()
    (root / "empty_dir").mkdir()
    (root / "a_file").write_text("not a folder\n")
    # checkpoints that are not, or not quite, checkpoints
    shutil.copytree(checkpoint, root / "train_run" / "checkpoint-5")
    edits: dict[str, Callable[[dict], object]] = {
        "ckpt_no_data": lambda c: c.pop("data"),
        "ckpt_unknown_field": lambda c: c["data"].update(frobnicate=1),
        "ckpt_bad_choice": lambda c: c["data"].update(flip_rule="sideways"),
        "ckpt_clap": lambda c: c["data"].update(audio_encoder="laion/larger_clap_general"),
        "ckpt_clap_folder": lambda c: c["data"].update(audio_encoder=str(root / "no_clap")),
        "ckpt_hub_llm": lambda c: c["model"].update(model_name_or_path="nobody/no-such-llm", llm_config=None),
        "ckpt_local_llm": lambda c: c["model"].update(model_name_or_path=str(root / "llm"), llm_config=None),
        "ckpt_llm_without_config": lambda c: c["model"].update(
            model_name_or_path=str(root / "empty_dir"), llm_config=None
        ),
    }
    (root / "llm").mkdir()
    (root / "llm" / "weights.bin").write_text("a local LLM folder\n")
    for name, edit in edits.items():
        _edited_checkpoint(checkpoint, root / name, edit)
    shutil.copytree(checkpoint, root / "ckpt_bad_json")
    (root / "ckpt_bad_json" / CONFIG_FILE).write_text("{")
    # weight files that are missing, truncated, or do not fit the configuration (the last two fail at loading)
    shutil.copytree(checkpoint, root / "ckpt_no_adapter")
    (root / "ckpt_no_adapter" / infer.ADAPTER_FILE).unlink()
    shutil.copytree(checkpoint, root / "ckpt_truncated")
    data = (root / "ckpt_truncated" / NON_LORA_FILE).read_bytes()
    (root / "ckpt_truncated" / NON_LORA_FILE).write_bytes(data[: len(data) // 2])
    weight_edits: dict[str, Callable[[dict], dict]] = {
        "ckpt_extra_key": lambda state: {**state, "frobnicate": torch.zeros(2)},
        "ckpt_wrong_shape": lambda state: {**state, next(iter(state)): torch.zeros(3)},
    }
    for name, edit in weight_edits.items():
        shutil.copytree(checkpoint, root / name)
        save_file(edit(load_file(root / name / NON_LORA_FILE)), root / name / NON_LORA_FILE)
    # audio caches: empty, and one made with another audio_norm
    with h5py.File(root / "audio_empty.h5", "w"):
        pass
    with h5py.File(root / "audio_per_snippet.h5", "w") as h5:
        h5.attrs["audio_norm"] = "per_snippet"
        for take in {sample.take.path for sample in load_samples(root / "samples.json")}:
            h5[f"{take}/audio/{AudioCache.DATASET}"] = np.zeros((1000, 4), np.float32)
    # released-checkpoint folders: complete but dummy (fails at the weights), partial, malformed JSON
    released = root / "released"
    released.mkdir()
    (released / "config.json").write_text(json.dumps({"mm_vision_tower": str(root / "empty_dir")}))
    (released / "adapter_config.json").write_text(json.dumps({"r": 8}))
    (released / REFERENCE_ADAPTER).write_bytes(b"not torch")
    (released / REFERENCE_NON_LORA).write_bytes(b"not torch")
    (root / "released_partial").mkdir()
    for name in ("config.json", REFERENCE_NON_LORA):
        shutil.copy(released / name, root / "released_partial" / name)
    shutil.copytree(released, root / "released_bad_json")
    (root / "released_bad_json" / "config.json").write_text("{")
    shutil.copytree(released, root / "released_list")
    (root / "released_list" / "adapter_config.json").write_text("[]")
    return root


@dataclass
class Env:
    inp: Path
    out: Path


def run_infer(
    e: Env,
    *extra: str,
    ckpt: str = "ckpt",
    hdf5: str = "merged.h5",
    samples: str = "samples.json",
    out: str | None = None,
) -> list[str]:
    return [
        "--checkpoint",
        str(e.inp / ckpt),
        "--hdf5",
        str(e.inp / hdf5),
        "--samples",
        str(e.inp / samples),
        "--out",
        out or str(e.out / "eval"),
        "--max_new_tokens",
        "5",
        "--num_workers",
        "0",
        *extra,
    ]


def run_convert(e: Env, *extra: str, source: str = "released", output: str | None = None) -> list[str]:
    return [str(e.inp / source), output or str(e.out / "converted"), "--base", str(e.inp / "empty_dir"), *extra]


def run_demo(e: Env, *extra: str) -> list[str]:
    return ["--out", str(e.out / "demo"), *extra]


@dataclass
class Case(BatteryCase):
    """A case of the shared battery, run with the hub in a given state."""

    #: How the Hugging Face hub behaves: ``offline`` (HF_HUB_OFFLINE) or ``unreachable`` (no network).
    hub: str = "offline"


def _earlier_run(e: Env) -> None:
    """``--out`` holding the predictions of a run with other settings."""
    _file("eval", "run.json", text=json.dumps({"checkpoint": "elsewhere"}))(e)
    _file("eval", "raw_predictions.rank0.jsonl", text='{"id": "x", "text": "<SG> </SG>"}\n')(e)


CASES = [
    # --- egoexor.infer: flags -------------------------------------------------------------------------------------
    Case("unknown flag", "infer", lambda e: run_infer(e, "--frobnicate"), "unrecognized arguments: --frobnicate"),
    Case("abbreviated flag", "infer", lambda e: run_infer(e, "--overwr"), "unrecognized arguments: --overwr"),
    Case("batch size 0", "infer", lambda e: run_infer(e, "--batch_size", "0"), "--batch_size: must be >= 1, got 0"),
    Case("batch size -1", "infer", lambda e: run_infer(e, "--batch_size", "-1"), "--batch_size: must be >= 1"),
    Case("batch size not a number", "infer", lambda e: run_infer(e, "--batch_size", "many"), "expected an integer"),
    Case("max_new_tokens 0", "infer", lambda e: run_infer(e, "--max_new_tokens", "0"), "--max_new_tokens: must be"),
    Case("num_workers -1", "infer", lambda e: run_infer(e, "--num_workers", "-1"), "--num_workers: must be >= 0"),
    Case("bits 3", "infer", lambda e: run_infer(e, "--bits", "3"), "--bits: invalid choice: 3"),
    Case("unknown protocol", "infer", lambda e: run_infer(e, "--protocol", "mine"), "invalid choice: 'mine'"),
    Case("missing --out", "infer", lambda e: run_infer(e)[:6], "the following arguments are required: --out"),
    # --- egoexor.infer: the checkpoint ----------------------------------------------------------------------------
    Case("checkpoint missing", "infer", lambda e: run_infer(e, ckpt="nope"), "nope: no such folder"),
    Case("checkpoint is a file", "infer", lambda e: run_infer(e, ckpt="a_file"), "a_file: is a file"),
    Case(
        "checkpoint folder empty",
        "infer",
        lambda e: run_infer(e, ckpt="empty_dir"),
        "empty_dir: neither an egoexor checkpoint",
    ),
    Case(
        "checkpoint is a training run folder",
        "infer",
        lambda e: run_infer(e, ckpt="train_run"),
        "it holds checkpoints: pass one of them, e.g. ",
    ),
    Case(
        "checkpoint config not JSON",
        "infer",
        lambda e: run_infer(e, ckpt="ckpt_bad_json"),
        f"ckpt_bad_json/{CONFIG_FILE}: invalid JSON",
    ),
    Case(
        "checkpoint config without data",
        "infer",
        lambda e: run_infer(e, ckpt="ckpt_no_data"),
        "expected a 'model' and a 'data' section",
    ),
    Case("checkpoint config unknown field", "infer", lambda e: run_infer(e, ckpt="ckpt_unknown_field"), "frobnicate"),
    Case(
        "checkpoint config bad choice",
        "infer",
        lambda e: run_infer(e, ckpt="ckpt_bad_choice"),
        "flip_rule: 'sideways' is not one of",
    ),
    Case(
        "checkpoint LLM not on the hub, offline",
        "infer",
        lambda e: run_infer(e, ckpt="ckpt_hub_llm"),
        "ckpt_hub_llm: its LLM 'nobody/no-such-llm': not a folder and not in the Hugging Face cache (offline)",
    ),
    Case(
        "released folder, base LLM not cached, offline",
        "infer",
        lambda e: run_infer(e, ckpt="released"),
        "released: its LLM 'liuhaotian/llava-v1.5-7b': not a folder and not in the Hugging Face cache (offline)",
    ),
    Case(
        "released folder incomplete",
        "infer",
        lambda e: run_infer(e, ckpt="released_partial"),
        f"not the released checkpoint folder: no adapter_config.json, {REFERENCE_ADAPTER}",
    ),
    Case(
        "checkpoint adapter missing",
        "infer",
        lambda e: run_infer(e, ckpt="ckpt_no_adapter"),
        f"ckpt_no_adapter/{infer.ADAPTER_FILE}: no such file",
    ),
    Case(
        "checkpoint weights truncated",
        "infer",
        lambda e: run_infer(e, ckpt="ckpt_truncated"),
        f"ckpt_truncated/{NON_LORA_FILE}: not a readable safetensors file (Error while deserializing header",
    ),
    # --- egoexor.infer: data --------------------------------------------------------------------------------------
    Case("hdf5 missing", "infer", lambda e: run_infer(e, hdf5="nope.h5"), "--hdf5"),
    Case("hdf5 is a folder", "infer", lambda e: run_infer(e, hdf5="folder.h5"), "is a folder"),
    Case("hdf5 not HDF5", "infer", lambda e: run_infer(e, hdf5="garbage.h5"), "garbage.h5: not an HDF5 file"),
    Case(
        "hdf5 truncated",
        "infer",
        lambda e: run_infer(e, hdf5="truncated.h5"),
        "truncated.h5: cannot read the HDF5 file",
    ),
    Case("samples missing", "infer", lambda e: run_infer(e, samples="nope.json"), "--samples"),
    Case(
        "samples not JSON",
        "infer",
        lambda e: run_infer(e, samples="not_json.json"),
        "not_json.json: not a readable JSON file",
    ),
    Case("samples empty", "infer", lambda e: run_infer(e, samples="empty_list.json"), "empty list"),
    Case(
        "sample record malformed",
        "infer",
        lambda e: run_infer(e, samples="bad_record.json"),
        "bad_record.json: record 0",
    ),
    Case("sample id twice", "infer", lambda e: run_infer(e, samples="dup_ids.json"), "occurs twice"),
    Case(
        "sample id null",
        "infer",
        lambda e: run_infer(e, samples="null_id.json"),
        "null_id.json: record 1: id: Input should be a valid string (got None)",
    ),
    Case(
        "sample of a missing take",
        "infer",
        lambda e: run_infer(e, samples="missing_take.json"),
        "merged.h5: 1 of 6 samples are not in the file, the first: id",
    ),
    Case(
        "sample of a missing frame",
        "infer",
        lambda e: run_infer(e, samples="missing_frame.json"),
        "frame 100000 (the take has 48 frames)",
    ),
    Case(
        "audio cache missing", "infer", lambda e: run_infer(e, "--audio_cache", str(e.inp / "nope.h5")), "--audio_cache"
    ),
    Case(
        "audio cache not HDF5",
        "infer",
        lambda e: run_infer(e, "--audio_cache", str(e.inp / "garbage.h5")),
        "--audio_cache",
    ),
    Case(
        "audio cache without the takes",
        "infer",
        lambda e: run_infer(e, "--audio_cache", str(e.inp / "audio_empty.h5")),
        "no embedding of frame",
    ),
    Case(
        "audio cache of another audio_norm",
        "infer",
        lambda e: run_infer(e, "--audio_cache", str(e.inp / "audio_per_snippet.h5")),
        "audio_norm='per_snippet'",
    ),
    Case(
        "audio encoder not cached, offline",
        "infer",
        lambda e: run_infer(e, ckpt="ckpt_clap"),
        "ckpt_clap: its audio encoder 'laion/larger_clap_general': not a folder and not in the Hugging Face cache "
        "(offline); "
        "pass --audio_cache",
    ),
    Case(
        "audio encoder not cached, no network",
        "infer",
        lambda e: run_infer(e, ckpt="ckpt_clap"),
        "not on the hub (OSError: [Errno -2] Name or service not known); pass --audio_cache",
        hub="unreachable",
    ),
    Case(
        "audio encoder folder missing",
        "infer",
        lambda e: run_infer(e, ckpt="ckpt_clap_folder"),
        "no_clap: no such folder; pass --audio_cache",
    ),
    # --- egoexor.infer: the output --------------------------------------------------------------------------------
    Case("out holds another run", "infer", run_infer, "holds predictions of another run", _earlier_run),
    Case("out holds other files", "infer", run_infer, "no readable run.json", _file("eval", "notes.txt")),
    Case(
        "out is the checkpoint, --overwrite",
        "infer",
        lambda e: run_infer(e, "--overwrite", out=str(e.inp / "ckpt")),
        "is also an input",
    ),
    Case(
        "out holds the inputs, --overwrite",
        "infer",
        lambda e: run_infer(e, "--overwrite", out=str(e.inp)),
        "holds the input",
    ),
    Case(
        "out is the samples file, --overwrite",
        "infer",
        lambda e: run_infer(e, "--overwrite", out=str(e.inp / "samples.json")),
        "is also an input",
    ),
    Case(
        "out is a file, --overwrite",
        "infer",
        lambda e: run_infer(e, "--overwrite"),
        "is a file, expected a folder",
        _file("eval"),
    ),
    Case(
        "out is the checkpoint's LLM folder, --overwrite",
        "infer",
        lambda e: run_infer(e, "--overwrite", ckpt="ckpt_local_llm", out=str(e.inp / "llm")),
        "is also an input",
    ),
    Case(
        "out replaces a file of the LLM folder, --overwrite",
        "infer",
        lambda e: run_infer(e, "--overwrite", ckpt="ckpt_local_llm", out=str(e.inp / "llm" / "weights.bin")),
        "is inside the input folder",
    ),
    Case(
        "out an unrelated folder, --overwrite",
        "infer",
        lambda e: run_infer(e, "--overwrite"),
        "eval: not replaced: it holds files and no .egoexor.infer",
        _file("eval", "sub", "thesis.tex"),
    ),
    Case("out the current folder", "infer", lambda e: run_infer(e, out="."), "is the current folder or holds it"),
    # --- egoexor.convert_reference --------------------------------------------------------------------------------
    Case("input missing", "convert", lambda e: run_convert(e, source="nope"), "nope: no such folder"),
    Case("input is a file", "convert", lambda e: run_convert(e, source="a_file"), "a_file: is a file"),
    Case(
        "input incomplete",
        "convert",
        lambda e: run_convert(e, source="released_partial"),
        "no adapter_config.json, adapter_model.bin",
    ),
    Case("input an egoexor checkpoint", "convert", lambda e: run_convert(e, source="ckpt"), "no config.json"),
    Case(
        "config.json not JSON",
        "convert",
        lambda e: run_convert(e, source="released_bad_json"),
        "config.json: invalid JSON",
    ),
    Case(
        "adapter_config.json a list",
        "convert",
        lambda e: run_convert(e, source="released_list"),
        "adapter_config.json: expected a JSON object, got list",
    ),
    Case("weights not torch", "convert", run_convert, f"{REFERENCE_NON_LORA}: not a readable PyTorch weights file"),
    Case(
        "output exists",
        "convert",
        run_convert,
        "converted: already exists (pass --overwrite",
        _file("converted", "egoexor_config.json"),
    ),
    Case(
        "output is the input, --overwrite",
        "convert",
        lambda e: run_convert(e, "--overwrite", output=str(e.inp / "released")),
        "is also an input",
    ),
    Case(
        "output inside the input, --overwrite",
        "convert",
        lambda e: run_convert(e, "--overwrite", output=str(e.inp / "released" / "out")),
        "is inside the input folder",
    ),
    Case(
        "output holds the input, --overwrite",
        "convert",
        lambda e: run_convert(e, "--overwrite", output=str(e.inp)),
        "holds the input",
    ),
    Case(
        "output is a file, --overwrite",
        "convert",
        lambda e: run_convert(e, "--overwrite"),
        "is a file, expected a folder",
        _file("converted"),
    ),
    Case(
        "output is the base LLM folder, --overwrite",
        "convert",
        lambda e: run_convert(e, "--overwrite", output=str(e.inp / "empty_dir")),
        "is also an input",
    ),
    Case(
        "output holds the vision tower, --overwrite",
        "convert",
        lambda e: run_convert(
            e, "--overwrite", "--vision_tower", str(e.out / "tower" / "clip"), output=str(e.out / "tower")
        ),
        "holds the input",
        _file("tower", "clip", "config.json"),
    ),
    Case(
        "output an unrelated folder, --overwrite",
        "convert",
        lambda e: run_convert(e, "--overwrite"),
        "not replaced: it holds files and no .egoexor.convert_reference",
        _file("converted", "notes.txt"),
    ),
    Case(
        "base not cached, offline",
        "convert",
        lambda e: run_convert(e, "--base", "nobody/no-such-llm"),
        "base LLM 'nobody/no-such-llm': not a folder and not in the Hugging Face cache (offline)",
    ),
    Case(
        "base not cached, no network",
        "convert",
        lambda e: run_convert(e, "--base", "nobody/no-such-llm"),
        "not on the hub (OSError: [Errno -2] Name or service not known)",
        hub="unreachable",
    ),
    Case(
        "vision tower folder missing",
        "convert",
        lambda e: run_convert(e, "--vision_tower", str(e.inp / "no_clip")),
        "vision tower",
    ),
    Case("missing output argument", "convert", lambda e: run_convert(e)[:1], "--out (or OUTPUT) is required"),
    Case("abbreviated flag", "convert", lambda e: run_convert(e, "--overw"), "unrecognized arguments: --overw"),
    # --- egoexor.demo ---------------------------------------------------------------------------------------------
    Case(
        "out holds an earlier demo",
        "demo",
        run_demo,
        "demo: already exists (pass --overwrite",
        _file("demo", "evaluation", "report.md"),
    ),
    Case(
        "out is a file, --overwrite",
        "demo",
        lambda e: run_demo(e, "--overwrite"),
        "is a file, expected a folder",
        _file("demo"),
    ),
    Case(
        "out's parent is a file",
        "demo",
        lambda e: ["--out", str(e.out / "f" / "demo")],
        "is a file, not a folder",
        _file("f"),
    ),
    Case("epochs 0", "demo", lambda e: run_demo(e, "--epochs", "0"), "--epochs: must be >= 1, got 0"),
    Case("negative seed", "demo", lambda e: run_demo(e, "--seed", "-1"), "--seed: must be >= 0"),
    Case("unknown flag", "demo", lambda e: run_demo(e, "--fast"), "unrecognized arguments: --fast"),
    Case("abbreviated flag", "demo", lambda e: run_demo(e, "--over"), "unrecognized arguments: --over"),
]


def _unreachable(*args, **kwargs):
    raise OSError(-2, "Name or service not known")


@pytest.fixture
def env(inputs, tmp_path) -> Env:
    return Env(inputs, tmp_path)


@pytest.mark.parametrize("case", CASES, ids=[f"{c.command}: {c.id}" for c in CASES])
def test_bad_input_is_one_clear_line_and_changes_nothing(case: Case, env: Env, monkeypatch, capsys):
    name, main = COMMANDS[case.command]
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", case.hub == "offline")
    if case.hub == "unreachable":
        monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", _unreachable)
    if case.setup:
        case.setup(env)
    argv = case.argv(env)
    before = snapshot(env.inp, env.out)
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{name}: error: "), err
    assert case.says in lines[0]
    assert "Traceback" not in err
    assert snapshot(env.inp, env.out) == before  # inputs intact, nothing written


def test_the_battery_covers_every_command_with_enough_cases():
    assert {case.command for case in CASES} == set(COMMANDS)
    assert len(CASES) >= 25


@pytest.mark.parametrize(
    ("ckpt", "says"),
    [
        ("ckpt_llm_without_config", "cannot load the model: cannot read the LLM checkpoint"),
        ("ckpt_extra_key", f"{NON_LORA_FILE}: keys the model does not have, e.g. ['frobnicate']"),
        ("ckpt_wrong_shape", "cannot load the model: Error(s) in loading state_dict for EgoExorLlava: size mismatch"),
    ],
)
def test_a_model_that_fails_to_load_is_one_line_and_leaves_no_out(ckpt, says, env):
    """Real processes: the failure comes after the model is built, where libraries raise their own errors."""
    process = subprocess.run(
        [sys.executable, "-m", "egoexor.infer", *run_infer(env, ckpt=ckpt)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    lines = process.stderr.splitlines()
    assert process.returncode == 2, process.stderr
    assert len(lines) == 1 and lines[0].startswith(f"egoexor.infer: error: --checkpoint {env.inp / ckpt}"), lines
    assert says in lines[0]
    assert list(env.out.iterdir()) == []  # no --out, no temporary


def test_the_run_identity_holds_every_setting_that_changes_the_outputs(
    checkpoint,
    merged_file,
    few_samples,
    reference_run,
    tmp_path,
    capsys,
):
    run = json.loads((reference_run / infer.RUN_FILE).read_text())
    assert run["protocol"] == "paper" and run["batch_size"] == 1 and run["max_new_tokens"] == 5
    assert (reference_run / cli.marker(infer.COMMAND)).is_file()
    out = tmp_path / "out"
    shutil.copytree(reference_run, out)
    for other in (["--batch_size", "2"], ["--protocol", "gt"]):
        assert infer.main(infer_args(checkpoint, merged_file, few_samples, out, *other)) == 2
        assert "holds predictions of another run" in capsys.readouterr().err


# --- Interrupted and killed inference: the rerun resumes to the same predictions. ---------------------------------


def test_ctrl_c_is_one_line_exit_130_and_the_rerun_resumes_to_the_same_predictions(
    checkpoint,
    merged_file,
    few_samples,
    reference_run,
    tmp_path,
    monkeypatch,
    capsys,
):
    generate = EgoExorLlava.generate
    calls = []

    def interrupted_after_three_batches(self, *args, **kwargs):
        calls.append(1)
        if len(calls) > 3:
            raise KeyboardInterrupt
        return generate(self, *args, **kwargs)

    monkeypatch.setattr(EgoExorLlava, "generate", interrupted_after_three_batches)
    assert infer.main(infer_args(checkpoint, merged_file, few_samples, tmp_path)) == 130
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == "egoexor.infer: interrupted" and "Traceback" not in err
    assert len((tmp_path / "raw_predictions.rank0.jsonl").read_text().splitlines()) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == [".egoexor.infer", "raw_predictions.rank0.jsonl", "run.json"]
    monkeypatch.setattr(EgoExorLlava, "generate", generate)
    assert infer.main(infer_args(checkpoint, merged_file, few_samples, tmp_path)) == 0
    assert len((tmp_path / "raw_predictions.rank0.jsonl").read_text().splitlines()) == 6  # only the rest ran
    texts = json.loads((tmp_path / "raw_predictions.json").read_text())
    assert texts == json.loads((reference_run / "raw_predictions.json").read_text())
    # the untrained model's answers are no scene graphs: the parser drops them, and says so in one line
    dropped = evaluate.dropped_summary(json.loads((tmp_path / "metrics.json").read_text()))
    said = [line for line in capsys.readouterr().err.splitlines() if line.startswith("egoexor.infer:")]
    assert dropped and said == [f"egoexor.infer: warning: {dropped} (see {tmp_path / 'report.md'})"]
    assert not list(tmp_path.glob(".*.tmp"))


_SLOW_INFER = """
import sys, time
from egoexor import infer
from egoexor.model.egoexor_llava import EgoExorLlava
generate = EgoExorLlava.generate
EgoExorLlava.generate = lambda *args, **kwargs: (time.sleep(0.5), generate(*args, **kwargs))[1]
sys.exit(infer.main(sys.argv[1:]))
"""


def _slow_infer_after_two_answers(argv: list[str], logs: Callable[[], list[Path]]) -> tuple[subprocess.Popen, Path]:
    """Start a slowed-down infer in a session of its own (its process group can be signalled) and return once
    one of ``logs()`` holds two generated answers."""
    process = subprocess.Popen(
        [sys.executable, "-c", _SLOW_INFER, *argv],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        found = [log for log in logs() if len(log.read_text().splitlines()) >= 2]
        if found:
            return process, found[0]
        time.sleep(0.05)
    process.kill()
    pytest.fail(f"infer never logged two answers: {process.communicate()[1][-2000:]}")


def test_kill_9_during_inference_and_the_rerun_resumes_to_the_same_predictions(
    checkpoint,
    merged_file,
    few_samples,
    reference_run,
    tmp_path,
):
    argv = infer_args(checkpoint, merged_file, few_samples, tmp_path, "--num_workers", "0")
    process, log = _slow_infer_after_two_answers(argv, lambda: list(tmp_path.glob("raw_predictions.rank0.jsonl")))
    process.kill()
    _, err = process.communicate()
    assert process.returncode == -signal.SIGKILL, err
    killed_after = len(log.read_text().splitlines())
    assert 2 <= killed_after < 6
    assert infer.main(argv) == 0  # the same run: resumed, not refused
    entries = [json.loads(line) for line in log.read_text().splitlines() if line.endswith("}")]
    assert sorted(e["id"] for e in entries) == sorted(json.loads(few_samples.read_text())[i]["id"] for i in range(6))
    assert json.loads((tmp_path / "raw_predictions.json").read_text()) == json.loads(
        (reference_run / "raw_predictions.json").read_text()
    )


@pytest.mark.parametrize(
    ("signum", "workers"),
    [(signal.SIGTERM, "0"), (signal.SIGHUP, "1")],
    ids=["SIGTERM to the process", "SIGHUP to the group, a loader worker"],
)
def test_a_stop_signal_during_an_overwrite_keeps_the_earlier_results_intact(
    signum, workers, checkpoint, merged_file, few_samples, reference_run, tmp_path
):
    """``--overwrite`` replaces the earlier run only by the final rename: stopped mid-generation (a cluster's
    SIGTERM; a lost terminal's SIGHUP, which the DataLoader worker gets too), the earlier predictions and
    metrics are there, byte for byte, and nothing else is."""
    out = tmp_path / "out"
    shutil.copytree(reference_run, out)
    before = snapshot(out)
    argv = infer_args(checkpoint, merged_file, few_samples, out, "--overwrite", "--num_workers", workers)
    # the new run generates into a temporary folder beside the earlier one
    process, _ = _slow_infer_after_two_answers(
        argv, lambda: list(tmp_path.glob(".out.*.tmp/raw_predictions.rank0.jsonl"))
    )
    os.killpg(process.pid, signum) if signum == signal.SIGHUP else process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signum, err
    said = [line for line in err.splitlines() if line.startswith("egoexor.infer")]
    assert said == [f"egoexor.infer: stopped by {signal.Signals(signum).name}"] and "Traceback" not in err
    assert snapshot(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_overwrite_starts_the_run_afresh_and_another_run_is_refused(
    checkpoint,
    merged_file,
    few_samples,
    reference_run,
    tmp_path,
    capsys,
):
    shutil.copytree(reference_run, tmp_path / "out")
    out = tmp_path / "out"
    (out / "notes.txt").write_text("mine")
    assert infer.main(infer_args(checkpoint, merged_file, few_samples, out, "--bits", "8")) == 2
    assert "holds predictions of another run" in capsys.readouterr().err
    assert (out / "notes.txt").exists()
    assert infer.main(infer_args(checkpoint, merged_file, few_samples, out, "--overwrite")) == 0
    assert not (out / "notes.txt").exists() and (out / "metrics.json").is_file()
    assert json.loads((out / "raw_predictions.json").read_text()) == json.loads(
        (reference_run / "raw_predictions.json").read_text()
    )
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_frame_unreadable_in_a_worker_is_one_line_without_the_worker_traceback(
    checkpoint,
    merged_file,
    few_samples,
    tmp_path,
    monkeypatch,
    capsys,
):
    def corrupt(self, key, frame, fields):
        raise OSError("Can't synchronously read data (inflate() failed)")

    monkeypatch.setattr(EgoExorReader, "read", corrupt)  # the forked worker inherits it
    assert infer.main(infer_args(checkpoint, merged_file, few_samples, tmp_path, "--num_workers", "1")) == 2
    said = [line for line in capsys.readouterr().err.splitlines() if line.startswith("egoexor.infer:")]
    first = load_samples(few_samples)[0]
    assert said == [
        f"egoexor.infer: error: sample {first.id} ({first.take.path}, frame {first.frame}): "
        "Can't synchronously read data (inflate() failed)"
    ]


def test_samples_without_images_are_named_before_the_model_is_loaded(
    checkpoint,
    merged_file,
    few_samples,
    tmp_path,
    monkeypatch,
    capsys,
):
    take = load_samples(few_samples)[0].take.path
    hdf5 = tmp_path / "norgb.h5"
    shutil.copy(merged_file, hdf5)
    with h5py.File(hdf5, "r+") as h5:
        del h5[f"{take}/frames/rgb"]

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(infer, "load_model", stop)
    assert infer.main(infer_args(checkpoint, hdf5, few_samples, tmp_path / "out")) == cli.EXIT_INTERRUPTED
    assert capsys.readouterr().err.splitlines() == [
        f"egoexor.infer: warning: samples of take(s) without frames/rgb get no images: {take}",
        "egoexor.infer: interrupted",
    ]


# --- The demo: an interrupted --overwrite run leaves the earlier demo. ------------------------------------------


def test_interrupted_demo_is_one_line_exit_130_and_keeps_the_earlier_demo(tmp_path, monkeypatch, capsys):
    from egoexor.data import synthetic

    earlier = tmp_path / "demo"
    _dir("demo", "evaluation")(Env(tmp_path, tmp_path))
    (earlier / "evaluation" / "report.md").write_text("the earlier demo")
    (earlier / cli.marker(demo.COMMAND)).write_text("")  # an earlier demo: --overwrite may replace it

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic, "generate", interrupt)
    assert demo.main(["--out", str(earlier), "--overwrite"]) == cli.EXIT_INTERRUPTED
    assert capsys.readouterr().err.splitlines() == ["egoexor.demo: interrupted"]
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]
    assert (earlier / "evaluation" / "report.md").read_text() == "the earlier demo"
