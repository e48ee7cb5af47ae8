"""Modalities as plug-ins: the registry's rules, and an IMU input added from outside egoexor
(``tests/plugins/egoexor_imu``, found through its entry point) through every command."""

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import pytest
from safetensors.torch import load_file

from egoexor import modalities
from egoexor.config import ConfigError, ModelConfig
from egoexor.modalities.base import PerViewInput, TakeDataset

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = ROOT / "tests" / "plugins"
CONFIG = ROOT / "configs" / "tiny.yaml"


def with_plugin() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(PLUGINS), str(ROOT)]), "OMP_NUM_THREADS": "1"}


def run(*argv: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *argv], env=env or with_plugin(), cwd=cwd, capture_output=True, text=True, timeout=600
    )


def test_the_built_in_inputs_in_their_fixed_order():
    assert [m.name for m in modalities.modalities()][:7] == [
        "ego_frames",
        "gaze",
        "hands",
        "audio",
        "exo_frames",
        "ultrasound",
        "point_cloud",
    ]
    assert modalities.default_features() == ("gaze", "hand", "audio", "point_cloud")
    assert [m.name for m in modalities.dropout_order()][:4] == ["gaze", "hands", "point_cloud", "audio"]
    assert modalities.sample_groups()[:8] == (
        "ego_frames",
        "eye_gaze",
        "eye_gaze_depth",
        "hand_tracking",
        "audio",
        "exo_frames",
        "ultrasound",
        "point_cloud",
    )


class _Clash(PerViewInput):
    name, feature, parameter, key, mask_key, width = "clash", "clash", "clash_encoder", "clash", "clash_mask", 2
    groups = ("clash",)
    datasets = (TakeDataset("clash/values", "clash", 3, 3, "[F, G, 3]"),)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"parameter": "gaze_encoder"}, "parameter 'gaze_encoder' belongs to 'gaze'"),
        ({"key": "hands"}, "item key 'hands' belongs to 'hands'"),
        ({"groups": ("eye_gaze",)}, "sample group 'eye_gaze' belongs to 'gaze'"),
        ({"feature": "audio"}, "feature 'audio' belongs to 'audio'"),
        ({"name": "gaze"}, "modality 'gaze' is registered already"),
        ({"branch": "side"}, "branch must be 'ego' or 'exo'"),
    ],
)
def test_a_name_another_input_has_is_refused(change, message):
    clash = type("Clash", (_Clash,), change)()
    with pytest.raises(modalities.ModalityError, match=message):
        modalities.register_modality(clash)
    assert "clash" not in [m.name for m in modalities.modalities()]


def test_without_the_plug_in_its_names_are_clear_errors():
    with pytest.raises(ConfigError, match=r"features: unknown imu; .* \(is the plug-in that adds it installed\?\)"):
        ModelConfig(llm_config={}, vision_config={}, features=("gaze", "imu"))
    with pytest.raises(modalities.ModalityError, match="unknown modality 'imu'; registered: ego_frames, gaze"):
        modalities.modality("imu")


def test_the_entry_point_adds_the_input_to_every_table():
    script = (
        "from egoexor import modalities\n"
        "from egoexor.data import layout, reader, processor\n"
        "print(modalities.droppable()); print(reader.readable_fields()); print(list(processor.batching()))\n"
        "print(layout.frame_axis_datasets()); print(modalities.default_features())"
    )
    result = subprocess.run([sys.executable, "-c", script], env=with_plugin(), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    droppable, fields, keys, frame_axis, default = result.stdout.splitlines()
    assert "'imu', 'ego', 'exo'" in droppable and "'imu', 'annotations'" in fields
    assert keys.index("'imu'") < keys.index("'exo_images'") and "'imu_mask'" in keys
    assert frame_axis.endswith("'imu/values')")
    assert default == "('gaze', 'hand', 'audio', 'point_cloud')"  # a plug-in's input is named where used


@pytest.mark.slow
def test_an_imu_plug_in_runs_through_merge_samples_train_infer_and_ablate(tmp_path):
    """No file under ``egoexor/`` names the IMU: the plug-in's entry point brings it into every command."""
    raw, merged, samples = tmp_path / "raw", tmp_path / "egoexor.h5", tmp_path / "samples"
    result = run("egoexor", "synthetic", "--out", str(raw), "--profile", "tiny", "--seed", "0")
    assert result.returncode == 0, result.stderr
    files = sorted(path.name for path in raw.glob("*.h5") if path.name != "splits.h5")
    with h5py.File(raw / files[0]) as h5:
        takes = [take for take in h5["data/MISS/1/take"].values()]
        assert any("imu/values" in take for take in takes)  # the plug-in's own synthetic writer
    merge = ["egoexor", "merge", "--data_dir", str(raw), "--input_files", *files, "--splits_file", "splits.h5"]
    assert run(*merge, "--output_file", str(merged)).returncode == 0
    for split in ("train", "test"):
        result = run(
            "egoexor", "samples", "--hdf5", str(merged), "--split", split, "--out", str(samples), "--no-token-freqs"
        )
        assert result.returncode == 0, result.stderr
    train_file, test_file = (next(samples.glob(f"{split}_*EgoExOR*.json")) for split in ("train", "test"))
    records = json.loads(train_file.read_text())
    assert any("imu" in r["hdf5_indices"]["available_modalities"] for r in records)
    few = tmp_path / "few.json"
    few.write_text(json.dumps(json.loads(test_file.read_text())[:4]))

    run_dir = tmp_path / "run"
    train = ["egoexor", "train", "--config", str(CONFIG), "--data_path", str(train_file), "--hdf5_path", str(merged)]
    train += ["--output_dir", str(run_dir), "--max_steps", "2", "--features", "gaze,hand,audio,point_cloud,imu"]
    result = run(*train, "--logging_steps", "1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    saved = load_file(run_dir / "non_lora_trainables.safetensors")
    assert any(key.startswith("image_pooler.imu_encoder.") for key in saved)
    assert json.loads((run_dir / "egoexor_config.json").read_text())["model"]["features"][-1] == "imu"

    inference = ["egoexor", "infer", "--checkpoint", str(run_dir), "--hdf5", str(merged), "--samples", str(few)]
    result = run(*inference, "--out", str(tmp_path / "infer"), "--max_new_tokens", "4", "--num_workers", "0")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "infer" / "metrics.json").is_file()
    ablation = ["egoexor", "ablate", "--checkpoint", str(run_dir), "--hdf5", str(merged), "--samples", str(few)]
    ablation += ["--out", str(tmp_path / "ablate"), "--modalities", "imu", "--groups", "none"]
    result = run(*ablation, "--max_new_tokens", "4", "--num_workers", "0")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads((tmp_path / "ablate" / "ablation.json").read_text())["rows"]
    assert [row["removed"] for row in rows] == ["none", "imu"]

    # the same checkpoint without the plug-in: one line naming what is missing
    bare = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    result = run(*inference, "--out", str(tmp_path / "bare"), "--num_workers", "0", env=bare)
    assert result.returncode == 2 and "unknown modality 'imu' (is the plug-in" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
