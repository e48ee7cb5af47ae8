"""Learning, not just running: the tiny configuration learns the synthetic scene graphs on CPU."""

import json
import random

import h5py
import pytest
from test_train import TINY

from egoexor.config import parse_train_args
from egoexor.data.dataset import EgoExorDataset
from egoexor.data.make_samples import make_samples
from egoexor.train import build_training, teacher_forced_accuracy


@pytest.mark.slow
def test_tiny_model_reaches_95_percent_teacher_forced_accuracy_on_held_out_frames(merged_file, tmp_path):
    files = {}
    with h5py.File(merged_file, "r") as h5:
        for split, permutations in (("train", 4), ("validation", 1), ("test", 1)):
            samples, _ = make_samples(h5, split, random.Random(42), n_permutations=permutations)
            files[split] = tmp_path / f"{split}.json"
            files[split].write_text(json.dumps([s.to_record() for s in samples]))
    setup = parse_train_args(["--config", TINY, "--data_path", str(files["train"]), "--hdf5_path", str(merged_file),
                              "--output_dir", str(tmp_path / "run"), "--disable_tqdm", "True",
                              "--logging_steps", "50"])  # fmt: skip
    trainer = build_training(setup)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    print("training loss every 50 steps:", [round(loss, 3) for loss in losses])
    held_out = [s for split in ("validation", "test") for s in json.loads(files[split].read_text())]
    held_out_file = tmp_path / "held_out.json"
    held_out_file.write_text(json.dumps(held_out))
    dataset = EgoExorDataset(held_out_file, merged_file, trainer.processing_class, trainer.setup.data, "eval")
    accuracy = teacher_forced_accuracy(trainer.model, dataset)
    print(f"teacher-forced answer-token accuracy on {len(dataset)} held-out frames: {accuracy:.4f}")
    assert losses[-1] < losses[0]
    assert accuracy >= 0.95
