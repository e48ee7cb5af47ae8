"""``python -m egoexor.train`` under attack: bad flags, bad inputs, an occupied output folder, Ctrl-C,
``kill -9`` during a checkpoint save, and two ranks that must not both write.

Every case of the battery asserts the contract of :mod:`egoexor.cli`: exit status 2, exactly one stderr
line ``egoexor.train: error: ...`` naming what is wrong, no traceback, every input byte-identical
afterwards, and the output side exactly as it was (no debris). All of them fail before a model is built.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file
from test_cli_safety import _dead_pid, _dir, _file, snapshot

from egoexor import atomic, train
from egoexor.config import checkpoint_config, parse_train_args
from egoexor.data import layout
from egoexor.model.build import CONFIG_FILE, NON_LORA_FILE
from egoexor.train import STAGING, TRAINER_STATE_NAME

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.yaml")


@pytest.fixture(scope="module")
def inputs(merged_file, sample_files, tmp_path_factory) -> Path:
    """Every input of the battery, good and bad, in one folder that no case may change."""
    root = tmp_path_factory.mktemp("train_safety_inputs")
    shutil.copy(merged_file, root / "egoexor.h5")
    records = json.loads(sample_files["train"].read_text())
    (root / "train.json").write_text(json.dumps(records))
    (root / "empty_list.json").write_text("[]")
    (root / "object.json").write_text('{"id": "x"}')
    (root / "not_json.json").write_text("{not json")
    (root / "folder.json").mkdir()
    telepathy = [dict(r) for r in records[:5]]
    telepathy[3] = {
        **records[3],
        "hdf5_indices": {**records[3]["hdf5_indices"], "available_modalities": ["ego_frames", "telepathy"]},
    }
    (root / "telepathy.json").write_text(json.dumps(telepathy))
    (root / "no_indices.json").write_text(json.dumps([{**records[0], "hdf5_indices": {}}]))
    fractional = {**records[2], "hdf5_indices": {**records[2]["hdf5_indices"], "frame_idx": 3.7}}
    (root / "fractional_frame.json").write_text(json.dumps([*records[:2], fractional]))
    swapped = {**records[1], "conversations": records[1]["conversations"][::-1]}
    (root / "answer_first.json").write_text(json.dumps([records[0], swapped]))
    shutil.copy(merged_file, root / "infinite_gaze.h5")
    with h5py.File(root / "infinite_gaze.h5", "r+") as h5:
        take = next(key for _, key in layout.iter_takes(h5) if layout.GAZE in key)
        take[layout.GAZE][1, 0, 1] = np.inf
    elsewhere = [
        {**r, "id": f"gone_{i}", "hdf5_indices": {**r["hdf5_indices"], "procedure_id": 9}}
        for i, r in enumerate(records[:3])
    ]
    (root / "missing_take.json").write_text(json.dumps(records[:10] + elsewhere))
    late = {**records[0], "id": "late", "hdf5_indices": {**records[0]["hdf5_indices"], "frame_idx": 9999}}
    (root / "missing_frame.json").write_text(json.dumps([*records[:4], late]))
    (root / "garbage.h5").write_text("this is not HDF5\n")
    (root / "empty.h5").write_bytes(b"")
    data = (root / "egoexor.h5").read_bytes()
    (root / "truncated.h5").write_bytes(data[: len(data) // 2])
    (root / "freqs_not_json.json").write_text("{")
    (root / "bad.yaml").write_text("model: [unclosed\n")
    tiny = yaml.safe_load(Path(TINY).read_text())
    for name, field, value in (("negative_layers", "num_hidden_layers", -2), ("seven_heads", "num_attention_heads", 7)):
        edited = {**tiny, "model": {**tiny["model"], "llm_config": {**tiny["model"]["llm_config"], field: value}}}
        (root / f"{name}.yaml").write_text(yaml.safe_dump(edited))
    (root / "tokenizer").mkdir()
    (root / "tokenizer" / "tokenizer.json").write_text("{}")
    _checkpoint("checkpoint-1")(Env(root, root))
    return root


@dataclass
class Env:
    inp: Path
    out: Path


def argv(e: Env, *extra: str, data: str = "train.json", hdf5: str = "egoexor.h5") -> list[str]:
    """A training command on the battery's inputs that would train one step were nothing wrong."""
    return [
        "--config",
        TINY,
        "--data_path",
        str(e.inp / data),
        "--hdf5_path",
        str(e.inp / hdf5),
        "--output_dir",
        str(e.out / "run"),
        "--max_steps",
        "1",
        "--disable_tqdm",
        "True",
        *extra,
    ]


def _checkpoint(*parts: str, files=(NON_LORA_FILE, CONFIG_FILE, TRAINER_STATE_NAME)) -> Callable[[Env], None]:
    """A checkpoint folder under ``out`` holding ``files`` (all of them: a complete one)."""

    def setup(e: Env) -> None:
        folder = e.out.joinpath(*parts)
        folder.mkdir(parents=True)
        for name in files:
            (folder / name).write_text("{}")

    return setup


def _tiny_checkpoint(*parts: str) -> Callable[[Env], None]:
    """A complete checkpoint folder under ``out`` whose configuration is ``configs/tiny.yaml``'s."""

    def setup(e: Env) -> None:
        _checkpoint(*parts)(e)
        tiny = parse_train_args(["--config", TINY])
        (e.out.joinpath(*parts) / CONFIG_FILE).write_text(json.dumps(checkpoint_config(tiny.model, tiny.data)))

    return setup


@dataclass
class Case:
    id: str
    argv: Callable[[Env], list[str]]
    #: Must appear in the error line: what is wrong and where.
    says: str
    setup: Callable[[Env], None] | None = None


CASES = [
    # --- numeric ranges, checked before anything is read ------------------------------------------------------------
    Case("learning rate negative", lambda e: argv(e, "--learning_rate", "-1"), "--learning_rate must be > 0"),
    Case("learning rate 0", lambda e: argv(e, "--learning_rate", "0"), "--learning_rate must be > 0"),
    Case("learning rate nan", lambda e: argv(e, "--learning_rate", "nan"), "--learning_rate must be > 0, got nan"),
    Case("batch size 0", lambda e: argv(e, "--per_device_train_batch_size", "0"), "--per_device_train_batch_size"),
    Case("batch size negative", lambda e: argv(e, "--per_device_train_batch_size", "-2"), "must be >= 1, got -2"),
    Case(
        "grad accumulation 0", lambda e: argv(e, "--gradient_accumulation_steps", "0"), "--gradient_accumulation_steps"
    ),
    Case(
        "no epochs and no steps", lambda e: argv(e, "--num_train_epochs", "-1", "--max_steps", "-1"), "nothing to train"
    ),
    Case(
        "zero epochs, zero steps",
        lambda e: argv(e, "--num_train_epochs", "0", "--max_steps", "-1"),
        "nothing to train",
    ),
    Case("zero steps", lambda e: argv(e, "--max_steps", "0"), "--max_steps 0: must be >= 1 (or -1"),
    Case(
        "a config-built LLM with negative layers",
        lambda e: [*argv(e), "--config", str(e.inp / "negative_layers.yaml")],
        "llm_config.num_hidden_layers must be >= 1, got -2",
    ),
    Case(
        "a config-built LLM whose heads do not divide its width",
        lambda e: [*argv(e), "--config", str(e.inp / "seven_heads.yaml")],
        "llm_config: hidden_size 64 is not divisible by num_attention_heads 7",
    ),
    Case("epochs infinite", lambda e: argv(e, "--num_train_epochs", "inf"), "--num_train_epochs must be finite"),
    Case("save steps 0", lambda e: argv(e, "--save_strategy", "steps", "--save_steps", "0"), "--save_steps"),
    Case("weight decay negative", lambda e: argv(e, "--weight_decay", "-0.1"), "--weight_decay"),
    Case("grad norm negative", lambda e: argv(e, "--max_grad_norm", "-1"), "--max_grad_norm"),
    Case("seed negative", lambda e: argv(e, "--seed", "-1"), "--seed must be >= 0"),
    Case("workers negative", lambda e: argv(e, "--dataloader_num_workers", "-1"), "--dataloader_num_workers"),
    Case("warmup negative", lambda e: argv(e, "--warmup_steps", "-1"), "warmup_steps"),
    Case("lora_r 0", lambda e: argv(e, "--lora_r", "0"), "lora_r must be >= 1, got 0"),
    Case("lora_alpha 0", lambda e: argv(e, "--lora_alpha", "0"), "lora_alpha must be > 0"),
    Case("lora_dropout 1", lambda e: argv(e, "--lora_dropout", "1"), "lora_dropout must be >= 0 and < 1"),
    Case("lora_dropout negative", lambda e: argv(e, "--lora_dropout", "-0.1"), "lora_dropout"),
    Case("fusion layers 0", lambda e: argv(e, "--fusion_layers", "0"), "fusion_layers must be >= 1"),
    Case(
        "unfrozen layers negative",
        lambda e: argv(e, "--unfreeze_n_vision_tower_layers", "-1"),
        "unfreeze_n_vision_tower_layers",
    ),
    Case("projector lr 0", lambda e: argv(e, "--mm_projector_lr", "0"), "mm_projector_lr must be > 0"),
    Case("modality dropout 1.5", lambda e: argv(e, "--multimodal_drop_prop", "1.5"), "modality_dropout"),
    Case("max length 0", lambda e: argv(e, "--model_max_length", "0"), "model_max_length"),
    Case("abbreviated flag", lambda e: argv(e, "--learning_rat", "1e-3"), "--learning_rat"),
    # --- configuration file -----------------------------------------------------------------------------------------
    Case("config missing", lambda e: argv(e, "--config", str(e.inp / "nope.yaml")), "nope.yaml: no such config"),
    Case("config not YAML", lambda e: argv(e, "--config", str(e.inp / "bad.yaml")), "bad.yaml: not valid YAML"),
    # --- samples ----------------------------------------------------------------------------------------------------
    Case("samples missing", lambda e: argv(e, data="nope.json"), "--data_path"),
    Case("samples a folder", lambda e: argv(e, data="folder.json"), "is a folder"),
    Case("samples not JSON", lambda e: argv(e, data="not_json.json"), "not_json.json: not a readable JSON file"),
    Case("samples not a list", lambda e: argv(e, data="object.json"), "expected a JSON list"),
    Case("samples empty", lambda e: argv(e, data="empty_list.json"), "the sample list is empty"),
    Case("record malformed", lambda e: argv(e, data="no_indices.json"), "record 0"),
    Case("unknown modality", lambda e: argv(e, data="telepathy.json"), "record 3"),
    Case(
        "a fractional frame index",
        lambda e: argv(e, data="fractional_frame.json"),
        "): hdf5_indices.frame_idx: Input should be a valid integer (got 3.7)",  # after the record and its id
    ),
    Case(
        "the answer before the question",
        lambda e: argv(e, data="answer_first.json"),
        "): conversations: must start with a human turn (the question), then a gpt turn (the answer)",
    ),
    Case(
        "an infinite gaze coordinate",
        lambda e: argv(e, hdf5="infinite_gaze.h5"),
        "eye_gaze/coordinates: infinite value at frame 1",
    ),
    Case(
        "sample of a missing take",
        lambda e: argv(e, data="missing_take.json"),
        "3 of 13 samples are not in the file, the first: id 'gone_0', take data/MISS/9/take/1",
    ),
    Case(
        "sample of a missing frame",
        lambda e: argv(e, data="missing_frame.json"),
        "1 of 5 samples are not in the file, the first: id 'late'",
    ),
    # --- HDF5 and other input files ---------------------------------------------------------------------------------
    Case("hdf5 missing", lambda e: argv(e, hdf5="nope.h5"), "--hdf5_path"),
    Case("hdf5 not HDF5", lambda e: argv(e, hdf5="garbage.h5"), "garbage.h5: not an HDF5 file"),
    Case("hdf5 empty", lambda e: argv(e, hdf5="empty.h5"), "empty.h5: not an HDF5 file"),
    Case("hdf5 truncated", lambda e: argv(e, hdf5="truncated.h5"), "truncated.h5: cannot read the HDF5 file"),
    Case("audio cache missing", lambda e: argv(e, "--audio_cache", str(e.inp / "nope.h5")), "--audio_cache"),
    Case(
        "token weights missing",
        lambda e: argv(e, "--token_weight_path", str(e.inp / "nope.json")),
        "--token_weight_path",
    ),
    Case(
        "token weights not JSON",
        lambda e: argv(e, "--token_weight_path", str(e.inp / "freqs_not_json.json")),
        "cannot read the token-frequency file",
    ),
    # --- the output folder and resuming -----------------------------------------------------------------------------
    Case("output holds checkpoints", argv, "holds an earlier run (checkpoint-2", _checkpoint("run", "checkpoint-2")),
    Case("output holds a trained model", argv, f"holds an earlier run ({NON_LORA_FILE})", _file("run", NON_LORA_FILE)),
    Case("output is a file", argv, "is a file, expected a folder", _file("run")),
    Case(
        "output under a file",
        lambda e: argv(e, "--output_dir", str(e.out / "f" / "run")),
        "is a file, not a folder",
        _file("f"),
    ),
    Case(
        "resume, nothing to resume",
        lambda e: argv(e, "--resume_from_checkpoint", "True"),
        "no complete checkpoint-N folder",
        _dir("run"),
    ),
    Case(
        "resume, only an incomplete checkpoint",
        lambda e: argv(e, "--resume_from_checkpoint", "True"),
        "(incomplete: checkpoint-3)",
        _checkpoint("run", "checkpoint-3", files=(NON_LORA_FILE,)),
    ),
    Case(
        "resume from an incomplete folder",
        lambda e: argv(e, "--resume_from_checkpoint", str(e.out / "run" / "checkpoint-3")),
        "not a complete checkpoint (no egoexor_config.json, trainer_state.json)",
        _checkpoint("run", "checkpoint-3", files=(NON_LORA_FILE,)),
    ),
    Case(
        "resume from an interrupted save",
        lambda e: argv(e, "--resume_from_checkpoint", str(e.out / "run" / STAGING / "checkpoint-3")),
        "not a complete checkpoint (an interrupted save)",
        _checkpoint("run", STAGING, "checkpoint-3"),
    ),
    Case(
        "resume from a missing folder",
        lambda e: argv(e, "--resume_from_checkpoint", str(e.out / "nope")),
        "nope: no such folder",
    ),
    Case(
        "resume with another LoRA rank and fusion depth",
        lambda e: argv(e, "--resume_from_checkpoint", "True", "--lora_r", "8", "--fusion_layers", "3"),
        "the checkpoint was trained with fusion_layers None (now 3), lora_r 32 (now 8)",
        _tiny_checkpoint("run", "checkpoint-2"),
    ),
    Case(
        "overwrite the checkpoint to resume",
        lambda e: argv(e, "--resume_from_checkpoint", "True", "--overwrite_output_dir"),
        "--overwrite_output_dir would remove the checkpoint to resume from",
        _checkpoint("run", "checkpoint-2"),
    ),
    # resuming another folder's checkpoint does not license replacing this folder's earlier run
    Case(
        "resume from elsewhere into an earlier run",
        lambda e: argv(e, "--resume_from_checkpoint", str(e.inp / "checkpoint-1")),
        f"holds an earlier run ({NON_LORA_FILE})",
        _file("run", NON_LORA_FILE),
    ),
    Case(
        "resume from elsewhere into earlier checkpoints",
        lambda e: argv(e, "--resume_from_checkpoint", str(e.inp / "checkpoint-1")),
        "holds an earlier run (checkpoint-2)",
        _checkpoint("run", "checkpoint-2"),
    ),
    # --- the output folder is never an input folder, nor holds an input file -----------------------------------------
    Case(
        "output is the tokenizer",
        lambda e: argv(e, "--tokenizer", str(e.inp / "tokenizer"), "--output_dir", str(e.inp / "tokenizer")),
        "tokenizer: is the --tokenizer folder",
    ),
    Case(
        "output is the audio encoder",
        lambda e: argv(e, "--audio_encoder", str(e.inp / "tokenizer"), "--output_dir", str(e.inp / "tokenizer")),
        "is the --audio_encoder folder",
    ),
    Case(
        "output is the checkpoint to resume",
        lambda e: argv(
            e, "--resume_from_checkpoint", str(e.inp / "checkpoint-1"), "--output_dir", str(e.inp / "checkpoint-1")
        ),
        "checkpoint-1: is the --resume_from_checkpoint folder",
    ),
    Case("output holds the samples", lambda e: argv(e, "--output_dir", str(e.inp)), "holds the --data_path file"),
    Case(
        "output holds the HDF5 file",
        lambda e: argv(e, "--output_dir", str(e.inp), data=str(e.out / "train.json")),
        "holds the --hdf5_path file",
        lambda e: shutil.copy(e.inp / "train.json", e.out),
    ),
    Case(
        "output holds the token weights",
        lambda e: argv(e, "--token_weight_path", str(e.out / "run" / "freqs.json")),
        "holds the --token_weight_path file",
        _file("run", "freqs.json"),
    ),
    Case(
        "output holds the audio cache",
        lambda e: argv(e, "--audio_cache", str(e.out / "run" / "audio.h5")),
        "holds the --audio_cache file",
        _file("run", "audio.h5"),
    ),
    Case(
        "output holds the config",
        lambda e: [*argv(e), "--config", str(e.out / "run" / "tiny.yaml")],
        "holds the --config file",
        _file("run", "tiny.yaml", text=Path(TINY).read_text()),
    ),
    Case("save_total_limit negative", lambda e: argv(e, "--save_total_limit", "-3"), "--save_total_limit must be >= 0"),
    Case(
        "a second value for a one-value flag",
        lambda e: argv(e, "--learning_rate", "1e-3", "2e-3"),
        "--learning_rate takes one value, got 1e-3 2e-3",
    ),
]


@pytest.fixture
def env(inputs, tmp_path) -> Env:
    return Env(inputs, tmp_path)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_clear_line_and_changes_nothing(case: Case, env: Env, capsys, monkeypatch):
    monkeypatch.setattr("egoexor.model.build.build_model", _never)
    if case.setup:
        case.setup(env)
    before = snapshot(env.inp, env.out)
    code = train.main(case.argv(env))
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("egoexor.train: error: "), err
    assert case.says in lines[0]
    assert "Traceback" not in err
    assert snapshot(env.inp, env.out) == before  # inputs intact, nothing written


def _never(*args, **kwargs):
    raise AssertionError("a bad input reached the model")


def test_the_battery_is_large_enough():
    assert len(CASES) >= 25


def test_help_lists_the_flags(capsys):
    assert train.main(["--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--learning_rate", "--lora_r", "--data_path", "--overwrite_output_dir", "--resume_from_checkpoint"):
        assert flag in out


def test_ctrl_c_before_training_is_one_line_exit_130(env, monkeypatch, capsys):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("egoexor.model.build.build_model", interrupt)
    before = snapshot(env.inp, env.out)
    assert train.main(argv(env)) == 130
    assert capsys.readouterr().err == "egoexor.train: interrupted\n"
    assert snapshot(env.inp, env.out) == before


def test_ctrl_c_during_a_checkpoint_save_leaves_the_complete_ones_only(env, monkeypatch, capsys):
    original = torch.save

    def save(payload, path, *args, **kwargs):
        if str(path).endswith(f"{STAGING}/checkpoint-2/optimizer.pt"):
            raise KeyboardInterrupt
        return original(payload, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    code = train.main(argv(env, "--max_steps", "3", "--save_strategy", "steps", "--save_steps", "1"))
    assert code == 130
    assert capsys.readouterr().err.splitlines()[-1] == "egoexor.train: interrupted"
    run = env.out / "run"
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint-1"]  # no .partial, no checkpoint-2
    assert train.incomplete(run / "checkpoint-1") is None


def test_resume_true_takes_the_newest_complete_checkpoint_and_names_the_skipped(tmp_path, capsys):
    for step in (1, 2):
        _checkpoint(f"checkpoint-{step}")(Env(tmp_path, tmp_path))
    _checkpoint("checkpoint-3", files=(NON_LORA_FILE, CONFIG_FILE))(Env(tmp_path, tmp_path))  # no trainer state
    _checkpoint("checkpoint-10", files=())(Env(tmp_path, tmp_path))
    args = SimpleNamespace(resume_from_checkpoint="True", output_dir=str(tmp_path))
    assert train.resume_checkpoint(args) == str(tmp_path / "checkpoint-2")
    assert capsys.readouterr().err == (
        f"egoexor.train: warning: resuming from {tmp_path / 'checkpoint-2'}, skipping incomplete checkpoint-3 "
        "(no trainer_state.json), checkpoint-10 (no non_lora_trainables.safetensors, egoexor_config.json, "
        "trainer_state.json)\n"
    )


def test_a_new_run_removes_what_interrupted_saves_left_and_overwrite_removes_checkpoints(tmp_path, capsys):
    for step in (1, 2):
        _checkpoint(f"checkpoint-{step}")(Env(tmp_path, tmp_path))
    _checkpoint(STAGING, "checkpoint-3", files=(NON_LORA_FILE,))(Env(tmp_path, tmp_path))
    unpublished = tmp_path / f".checkpoint-4.{atomic._HOST}.{_dead_pid()}.abc.tmp"  # killed while renamed into place
    _checkpoint(unpublished.name)(Env(tmp_path, tmp_path))
    mine = tmp_path / "notes.txt"
    mine.write_text("mine")
    train.prepare_output_dir(tmp_path, overwrite=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-1", "checkpoint-2", "notes.txt"]
    err = capsys.readouterr().err
    assert f"{STAGING}/checkpoint-3" in err and unpublished.name in err
    train.prepare_output_dir(tmp_path, overwrite=True)  # the earlier run's checkpoints: aside, out of resume's sight
    aside = tmp_path / train.EARLIER_RUN
    assert sorted(p.name for p in tmp_path.iterdir()) == [train.EARLIER_RUN, "notes.txt"]
    assert sorted(p.name for p in aside.iterdir()) == ["checkpoint-1", "checkpoint-2"]
    assert f"the earlier run's checkpoint-1, checkpoint-2 moved to {aside}" in capsys.readouterr().err
    _checkpoint("checkpoint-5")(Env(tmp_path, tmp_path))  # this run is stopped after one checkpoint, and rerun
    train.prepare_output_dir(tmp_path, overwrite=True)
    assert sorted(p.name for p in aside.iterdir()) == ["checkpoint-1", "checkpoint-2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [train.EARLIER_RUN, "notes.txt"]
    assert "removed checkpoint-5 of a stopped run" in capsys.readouterr().err
    train.remove_earlier_run(tmp_path)  # the run saved its model
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_a_folder_with_an_earlier_run_kept_aside_is_refused_without_overwrite_or_resume(tmp_path):
    _checkpoint("run", train.EARLIER_RUN, "checkpoint-1")(Env(tmp_path, tmp_path))
    setup = parse_train_args(["--config", TINY, "--output_dir", str(tmp_path / "run")])
    with pytest.raises(train.cli.CommandError, match=f"holds an earlier run \\({train.EARLIER_RUN}\\)"):
        train.check_output_dir(setup, None)


# --- Real processes: kill -9 in the middle of a checkpoint save, and two ranks under torchrun. ------------------

#: Runs ``egoexor.train`` with one write made to hang, so that the kill lands inside a save: the process
#: says so in $MARKER and waits. $HANG is part of the path written: a file the Trainer writes into the
#: staging folder (``torch.save``), or one fsynced in the temporary folder renamed into place.
_HARNESS = """
import os, sys, time
from pathlib import Path
import torch
from egoexor import atomic, train
from egoexor.config import parse_train_args

hang, marker = os.environ["HANG"], Path(os.environ["MARKER"])
save, fsync = torch.save, atomic._fsync

def wait_if_hanging(path):
    if hang in str(path):
        marker.write_text(str(path))
        time.sleep(600)

torch.save = lambda payload, path, *args, **kwargs: (wait_if_hanging(path), save(payload, path, *args, **kwargs))[1]
atomic._fsync = lambda path: (wait_if_hanging(path), fsync(path))[1]
sys.exit(train.main(sys.argv[1:]))
"""


def _kill_during(hang: str, args: list[str], tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    process = subprocess.Popen(
        [sys.executable, "-c", _HARNESS, *args],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "HANG": hang, "MARKER": str(marker), "PYTHONPATH": str(ROOT)},
    )
    deadline = time.monotonic() + 300
    while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.kill()
    _, err = process.communicate()
    assert marker.exists(), err.decode()[-3000:]
    assert process.returncode == -signal.SIGKILL


@pytest.mark.slow
@pytest.mark.parametrize(
    ("hang", "left"),
    [(f"/{STAGING}/checkpoint-3/optimizer.pt", f"{STAGING}/checkpoint-3"), ("/.checkpoint-3.", "/.checkpoint-3.")],
    ids=["while the Trainer writes it", "while it is renamed into place"],
)
def test_kill_9_during_a_checkpoint_save_then_resume_true(hang, left, sample_files, merged_file, tmp_path, capsys):
    output = tmp_path / "run"
    args = [
        "--config",
        TINY,
        "--data_path",
        str(sample_files["train"]),
        "--hdf5_path",
        str(merged_file),
        "--output_dir",
        str(output),
        "--max_steps",
        "4",
        "--save_strategy",
        "steps",
        "--save_steps",
        "1",
        "--disable_tqdm",
        "True",
    ]
    _kill_during(hang, args, tmp_path)
    complete = train.checkpoint_folders(output)
    assert [p.name for p in complete] == ["checkpoint-1", "checkpoint-2"]  # no checkpoint-3 under its name
    assert all(train.incomplete(p) is None for p in complete)
    assert any(left in str(p) for p in output.rglob("*"))  # the killed save's leftovers, under no final name
    inodes = [p.stat().st_ino for p in complete]

    assert train.main([*args, "--resume_from_checkpoint", "True"]) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("egoexor.train: warning: ")]
    assert len(warnings) == 1 and "removed what interrupted saves left" in warnings[0] and left in warnings[0]
    assert "Traceback" not in err
    state = json.loads((output / TRAINER_STATE_NAME).read_text())
    assert state["global_step"] == 4
    assert [p.name for p in train.checkpoint_folders(output)] == [f"checkpoint-{n}" for n in range(1, 5)]
    assert not [p for p in output.iterdir() if p.name.startswith(".")]
    # resumed from checkpoint-2: steps 1 and 2 were not trained (and saved) again
    assert [p.stat().st_ino for p in train.checkpoint_folders(output)[:2]] == inodes


@pytest.mark.slow
def test_torchrun_two_ranks_one_writer(sample_files, merged_file, tmp_path):
    """Under ``torchrun --nproc_per_node 2`` (gloo, CPU) exactly one rank writes each checkpoint; both ranks'
    RNG states are in it, so the rename waited for both."""
    log = tmp_path / "writes.log"
    harness = tmp_path / "harness.py"
    harness.write_text(
        "import os, sys\nfrom egoexor import train\noriginal = train.save_checkpoint\n"
        "def logged(model, output, config):\n"
        f"    with open({str(log)!r}, 'a') as handle:\n"
        "        handle.write(f\"{os.environ['RANK']} {output}\\n\")\n"
        "    original(model, output, config)\n"
        "train.save_checkpoint = logged\nsys.exit(train.main(sys.argv[1:]))\n"
    )
    output = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            "29563",
            str(harness),
            "--config",
            TINY,
            "--data_path",
            str(sample_files["train"]),
            "--hdf5_path",
            str(merged_file),
            "--output_dir",
            str(output),
            "--max_steps",
            "2",
            "--per_device_train_batch_size",
            "2",
            "--save_strategy",
            "steps",
            "--save_steps",
            "1",
            "--disable_tqdm",
            "True",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    writes = sorted(log.read_text().splitlines())
    staged = [f"0 {output / STAGING / f'checkpoint-{n}'}" for n in (1, 2)]
    assert writes == sorted([*staged, f"0 {output / STAGING / 'model'}"])  # rank 0 only, once each
    assert [p.name for p in train.checkpoint_folders(output)] == ["checkpoint-1", "checkpoint-2"]
    for checkpoint in train.checkpoint_folders(output):
        assert {"rng_state_0.pth", "rng_state_1.pth"} <= {p.name for p in checkpoint.iterdir()}
        assert train.incomplete(checkpoint) is None
    state = json.loads((output / TRAINER_STATE_NAME).read_text())
    assert state["global_step"] == 2
    assert not [p for p in output.iterdir() if p.name.startswith(".")]


#: Runs ``egoexor.train`` with each step slowed down and counted in $MARKER, so that a signal lands mid-run.
_COUNTED_STEPS = """
import os, sys, time
from pathlib import Path
from egoexor import train
marker, step = Path(os.environ["MARKER"]), train.EgoExorTrainer.training_step
def counted(self, *args, **kwargs):
    loss = step(self, *args, **kwargs)
    marker.write_text(str(self.state.global_step + 1))
    time.sleep(0.3)
    return loss
train.EgoExorTrainer.training_step = counted
sys.exit(train.main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_sigterm_mid_epoch_saves_a_checkpoint_that_resumes_bit_exact(sample_files, merged_file, tmp_path, capsys):
    """A cluster's SIGTERM (preemption) mid-epoch: the step finishes, a complete checkpoint-N is written, one
    line names it, exit 143; resuming from it gives bit for bit the weights of a run never stopped."""
    common = ["--config", TINY, "--data_path", str(sample_files["train"]), "--hdf5_path", str(merged_file)]
    common += ["--max_steps", "8", "--disable_tqdm", "True"]
    stopped, marker = tmp_path / "stopped", tmp_path / "steps"
    process = subprocess.Popen(
        [sys.executable, "-c", _COUNTED_STEPS, *common, "--output_dir", str(stopped)],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "MARKER": str(marker), "PYTHONPATH": str(ROOT)},
    )
    deadline = time.monotonic() + 300
    while process.poll() is None and time.monotonic() < deadline:
        if marker.is_file() and int(marker.read_text() or 0) >= 2:
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 143, err[-3000:]
    [checkpoint] = train.checkpoint_folders(stopped)  # the only one: --save_strategy is "no" in tiny.yaml
    step = int(checkpoint.name.split("-")[1])
    steps_per_epoch = -(-len(json.loads(sample_files["train"].read_text())) // 4)
    assert 2 <= step < min(8, steps_per_epoch)  # mid-epoch, and mid-run
    said = [line for line in err.splitlines() if line.startswith("egoexor.train")]
    assert said == [
        f"egoexor.train: stopped by SIGTERM; saved {checkpoint} (--resume_from_checkpoint True continues from it)"
    ]
    assert "Traceback" not in err
    assert train.incomplete(checkpoint) is None
    assert sorted(p.name for p in stopped.iterdir()) == [checkpoint.name]  # no final model, no .partial
    capsys.readouterr()

    assert train.main([*common, "--output_dir", str(stopped), "--resume_from_checkpoint", "True"]) == 0
    assert train.main([*common, "--output_dir", str(tmp_path / "straight")]) == 0
    for name in (NON_LORA_FILE, "adapter_model.safetensors"):
        resumed, straight = load_file(stopped / name), load_file(tmp_path / "straight" / name)
        assert resumed.keys() == straight.keys()
        assert all(torch.equal(resumed[key], straight[key]) for key in straight), name
    assert json.loads((stopped / TRAINER_STATE_NAME).read_text())["global_step"] == 8


def test_without_save_on_signal_a_sigterm_stops_at_once_without_a_checkpoint(env, monkeypatch, capsys):
    def terminated(self, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("the signal did not stop the step")

    monkeypatch.setattr(train.EgoExorTrainer, "training_step", terminated)
    code = train.main(argv(env, "--max_steps", "3", "--save_on_signal", "False"))
    assert code == 143
    assert capsys.readouterr().err.splitlines()[-1] == "egoexor.train: stopped by SIGTERM"
    assert train.checkpoint_folders(env.out / "run") == []
    assert not [p for p in (env.out / "run").rglob("*") if p.is_file()]


def test_a_real_process_prints_the_error_line_alone(tmp_path):
    """Nothing the imports log (bitsandbytes' CPU kernel notice, warnings) precedes the one line."""
    result = subprocess.run(
        [sys.executable, "-m", "egoexor.train", "--config", TINY, "--lora_r", "0"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert (result.returncode, result.stderr) == (2, "egoexor.train: error: lora_r must be >= 1, got 0\n")


# --- Regressions of the review of issue 15 ---------------------------------------------------------------------


def test_only_a_checkpoint_in_the_output_folder_continues_its_run(tmp_path):
    """``--resume_from_checkpoint`` lifts the earlier-run refusal only for a checkpoint of ``--output_dir``."""
    _checkpoint("run", "checkpoint-2")(Env(tmp_path, tmp_path))
    _checkpoint("elsewhere", "checkpoint-1")(Env(tmp_path, tmp_path))
    setup = parse_train_args(["--config", TINY, "--output_dir", str(tmp_path / "run")])
    train.check_output_dir(setup, str(tmp_path / "run" / "checkpoint-2"))
    with pytest.raises(train.cli.CommandError, match="holds an earlier run"):
        train.check_output_dir(setup, str(tmp_path / "elsewhere" / "checkpoint-1"))
    overwrite = parse_train_args(["--config", TINY, "--output_dir", str(tmp_path / "run"), "--overwrite_output_dir"])
    train.check_output_dir(overwrite, str(tmp_path / "elsewhere" / "checkpoint-1"))


def _one_error_line(args: list[str], cwd: Path, **env: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "egoexor.train", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        timeout=120,
        check=False,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("egoexor.train: error: "), result.stderr[-3000:]
    return lines[0]


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is not None, reason="deepspeed is installed")
def test_deepspeed_without_deepspeed_is_one_line(tmp_path):
    line = _one_error_line(["--config", TINY, "--deepspeed", str(ROOT / "configs" / "zero2.json")], tmp_path)
    assert "needs deepspeed (pip install 'egoexor[gpu]')" in line


def test_an_unreachable_pretrained_name_is_one_line_naming_its_flag(sample_files, merged_file, tmp_path):
    """Offline, with an empty Hugging Face cache: one line, at once (not a minute of retries and logs)."""
    args = [
        "--config",
        TINY,
        "--data_path",
        str(sample_files["train"]),
        "--hdf5_path",
        str(merged_file),
        "--output_dir",
        str(tmp_path / "run"),
        "--audio_encoder",
        "laion/larger_clap_general",
    ]
    start = time.monotonic()
    line = _one_error_line(args, tmp_path, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    assert "--audio_encoder 'laion/larger_clap_general': not a folder and not in the Hugging Face cache" in line
    assert time.monotonic() - start < 60
    assert not (tmp_path / "run").exists()


def test_multi_value_flags_reach_the_parser():
    setup = parse_train_args(["--config", TINY, "--report_to", "tensorboard", "mlflow", "--label_names", "a", "b"])
    assert setup.trainer.report_to == ["tensorboard", "mlflow"] and setup.trainer.label_names == ["a", "b"]
    assert parse_train_args(["--config", TINY, "--report_to", "none"]).trainer.report_to == []
    with pytest.raises(train.ConfigError, match="--report_to telepathy: expected none, all, or some of"):
        parse_train_args(["--config", TINY, "--report_to", "tensorboard", "telepathy"])


@pytest.mark.parametrize(
    "argv",
    [
        ["--config", str(ROOT / "configs" / "egoexor.yaml")],
        ["--config", str(ROOT / "configs" / "reference.yaml")],
        ["--config", TINY, "--gradient_checkpointing", "True"],
        ["--config", TINY, "--gradient_checkpointing"],
    ],
)
def test_activation_checkpointing_without_a_deprecation_warning(argv):
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        assert parse_train_args(argv).trainer.activation_checkpointing is True


def test_rotation_keeps_the_checkpoint_just_written(tmp_path):
    """After a resume from checkpoint-2 with checkpoint-5 present, saving checkpoint-3 keeps checkpoint-3."""
    for step in (2, 3, 5):
        _checkpoint(f"checkpoint-{step}")(Env(tmp_path, tmp_path))
    names = lambda limit: [p.name for p in train.rotated_out(tmp_path, "checkpoint-3", limit)]  # noqa: E731
    assert names(1) == ["checkpoint-2", "checkpoint-5"]
    assert names(2) == ["checkpoint-2"]
    assert names(3) == names(None) == names(0) == []


def test_rotation_keeps_the_best_checkpoint(tmp_path):
    """--load_best_model_at_end loads the best checkpoint at the end: no limit removes it (it counts towards the
    limit, and a limit of 1 keeps it besides the one just written, as the Trainer's rotation does)."""
    for step in (2, 3, 5):
        _checkpoint(f"checkpoint-{step}")(Env(tmp_path, tmp_path))
    best = str(tmp_path / "checkpoint-2")
    names = lambda limit: [p.name for p in train.rotated_out(tmp_path, "checkpoint-5", limit, best)]  # noqa: E731
    assert names(1) == names(2) == ["checkpoint-3"]
    assert names(3) == names(None) == []
    assert [p.name for p in train.rotated_out(tmp_path, "checkpoint-5", 1, str(tmp_path / "checkpoint-5"))] == [
        "checkpoint-2",
        "checkpoint-3",
    ]
