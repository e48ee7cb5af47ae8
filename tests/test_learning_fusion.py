"""Learning through the ``summary`` fusion output: the tiny model trained on ``parts`` uses the frames and gaze.

One training run (``configs/tiny.yaml`` with ``fusion_output: summary``, gaze and hands read at scale 32, the
tiny random CLAP; ``parts`` seed 0; RECIPE below) serves every case; each case reads the teacher-forced
predicate choice (``egoexor ablate --metric choice``) on the first FRAMES held-out frames, with each input
removed in turn. One case per input, so a broken path names itself:

* strict for the ego frames, the exo frames and gaze: the input's part is learned (choice >= LEARNED), and
  removing the input brings that part back near chance (<= NEAR_CHANCE) while the other two stay learned;
* xfail for hands, ultrasound, audio and the point cloud, which this budget does not teach: strict where every
  seed measured stays below LEARNED, so a change that teaches one fails here and moves it to STRICT.

Measured with this recipe, seeds 0 / 1 / 2 (this test trains seed 0), every input present: ego and exo frames
1.00 / 1.00 / 1.00, gaze 0.80 / 0.97 / 1.00 (0.35 / 0.45 / 0.45 without gaze), hands 0.47 / 0.35 / 0.70,
ultrasound 0.55 / 0.91 / 0.45 (11 triplets), audio 0.59 / 0.52 / 0.59, point cloud 0.20 / 0.30 / 0.42. At
the config's learning rate 5e-3 no slot is read at all (docs/modality_benchmark.md, "Learning through the
slots"). The gaze case fails with ``first_view`` (this recipe reads gaze at 0.15 there) and with 8 epochs
instead of 15 (0.25).
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY_YAML

#: Training settings on top of ``configs/tiny.yaml``: the learning rate matters. At the config's 5e-3 the
#: tiny LLM never learns to read a single slot (gaze stays at chance after 2760 steps).
RECIPE = {"--fusion_output": "summary", "--learning_rate": 2e-3, "--num_train_epochs": 15}
FRAMES = 40
LEARNED, NEAR_CHANCE = 0.7, 0.5
STRICT = ("ego_frames", "exo_frames", "gaze")
#: Choice of the parts not learned within this budget, seeds 0 / 1 / 2, and whether every seed stays below LEARNED.
NOT_LEARNED = {
    "hands": ("0.47 / 0.35 / 0.70", False),
    "ultrasound": ("0.55 / 0.91 / 0.45", False),
    "audio": ("0.59 / 0.52 / 0.59", True),
    "point_cloud": ("0.20 / 0.30 / 0.42", True),
}


@pytest.fixture(scope="module")
def choice(tmp_path_factory):
    """Per removed input (``none``: every input present): per part, its teacher-forced choice accuracy."""
    from egoexor.ablate import main as ablate
    from egoexor.config import parse_train_args
    from egoexor.data.audio import save_tiny_clap
    from egoexor.data.make_samples import write_samples
    from egoexor.data.merge_h5 import merge_files
    from egoexor.data.synthetic import generate
    from egoexor.train import train

    work = tmp_path_factory.mktemp("learning_fusion")
    dataset = generate(work / "data", "parts", seed=0)
    merged = work / "parts.h5"
    merge_files(dataset.files, dataset.splits_file, merged)
    files = {
        split: write_samples(merged, split, work / "samples", tokenizer=None).samples_file
        for split in ("train", "validation", "test")
    }
    held_out = [record for split in ("validation", "test") for record in json.loads(files[split].read_text())]
    (work / "held_out.json").write_text(json.dumps(held_out[:FRAMES]))
    save_tiny_clap(work / "clap")
    options = {"--config": TINY_YAML, "--data_path": files["train"], "--hdf5_path": merged}
    options |= {"--output_dir": work / "run", "--gaze_scale": 32, "--hand_scale": 32, "--audio_encoder": work / "clap"}
    options["--logging_steps"] = 100
    argv = ["--checkpoint", work / "run", "--hdf5", merged, "--samples", work / "held_out.json", "--out", work / "ab"]
    argv += ["--metric", "choice", "--modalities", ",".join(STRICT), "--num_workers", "0"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as measured; the tiny model also trains faster on one thread than on two
    try:
        train(parse_train_args([str(token) for option in (options | RECIPE).items() for token in option]))
        assert ablate([str(token) for token in argv]) == 0
    finally:
        torch.set_num_threads(threads)
    rows = json.loads((work / "ab" / "ablation.json").read_text())["rows"]
    table = {row["removed"]: {part: share["accuracy"] for part, share in row["choice"].items()} for row in rows}
    print("teacher-forced choice (row: removed; part: accuracy):", json.dumps(table, indent=1))
    return table


@pytest.mark.slow
@pytest.mark.parametrize("name", STRICT)
def test_a_learned_input_is_used_and_its_removal_brings_its_part_to_chance(choice, name):
    assert choice["none"][name] >= LEARNED, f"{name}: not learned ({choice['none'][name]:.2f})"
    assert choice[name][name] <= NEAR_CHANCE, f"without {name} its part still reads {choice[name][name]:.2f}"
    others = [other for other in STRICT if other != name]
    assert all(choice[name][other] >= LEARNED for other in others), f"removing {name}: {choice[name]}"


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    [
        pytest.param(name, marks=pytest.mark.xfail(strict=strict, reason=f"not learned here: choice {measured}"))
        for name, (measured, strict) in NOT_LEARNED.items()
    ],
)
def test_an_input_this_budget_does_not_teach(choice, name):
    assert choice["none"][name] >= LEARNED
