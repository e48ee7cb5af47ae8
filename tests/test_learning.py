"""Learning, not just running: the demo pipeline trains the tiny model on CPU and it really learns.

One run of ``python -m egoexor.demo``'s pipeline (synthetic data -> merge -> samples -> training ->
``egoexor.infer`` -> evaluation) serves both checks.
"""

import json

import pytest

from egoexor.data.dataset import EgoExorDataset
from egoexor.data.samples import load_samples
from egoexor.demo import run
from egoexor.infer import teacher_forced_accuracy
from egoexor.model.build import load_trained


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return run(tmp_path_factory.mktemp("demo"))


@pytest.mark.slow
def test_teacher_forced_token_accuracy_on_held_out_frames(demo):
    from transformers import AutoTokenizer

    state = json.loads((demo["checkpoint"] / "trainer_state.json").read_text())
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    print("training loss every 50 steps:", [round(loss, 3) for loss in losses])
    assert losses[-1] < losses[0]
    model, data_config = load_trained(demo["checkpoint"])
    tokenizer = AutoTokenizer.from_pretrained(demo["checkpoint"])
    held_out = [s for split in ("validation", "test") for s in load_samples(demo["samples"][split])]
    accuracy = teacher_forced_accuracy(model, EgoExorDataset(held_out, demo["hdf5"], tokenizer, data_config, "eval"))
    print(f"teacher-forced answer-token accuracy on {len(held_out)} held-out frames: {accuracy:.4f}")
    assert accuracy >= 0.95


@pytest.mark.slow
def test_end_to_end_macro_f1_on_the_held_out_split(demo):
    overall = demo["metrics"]["overall"]
    print("held-out macro F1 (gt protocol):", overall["macro"], "triplet:", overall["triplet"])
    assert demo["metrics"]["protocol"] == "gt"
    assert overall["macro"]["f1-score"] >= 0.9
