"""Every input path reaches the answer: the modality benchmark, learned by the tiny model and ablated.

One tiny model is trained (CPU) on the ``parts`` synthetic profile, where each input alone sets one
triplet of every scene graph (:data:`egoexor.data.synthetic.PARTS`), with the pipeline's own functions:
synthetic data -> merge -> samples -> CLAP audio cache (a tiny random CLAP) -> ``egoexor.train`` -> then
``egoexor.ablate`` on the held-out frames (validation + test), once with every input and once without each
input or branch. A broken path (an input that never reaches the model, a mask that hides it, swapped
branches) makes its own test fail: its part is not learned, or removing it changes nothing, or removing
it costs another part.

Chance: a guess that ignores the input scores at most 1/3 macro F1 on a group of 3 equally frequent
predicates; "near chance" is <= 0.5 here.

What the tiny model learns within the CI budget (configs/tiny.yaml: 10 epochs, ~920 steps): the parts
shown in the first view of each branch, the view whose positions the fusion encoder passes on to the
LLM (ego frames, exo room frames). Everything else must be routed into those positions by the fusion
encoder's attention, which it does not learn in this budget: the extra tokens (gaze, hands, audio, point
cloud) and the ultrasound screen, the second exo view of its take. At width 32 the fusion's attention
branch starts at ~1% of the residual (BERT's 0.02 initialisation); removing the gaze tokens changes the
fused tokens by 0.06% at initialisation and 0.15% after training; those parts stay at chance after 1656
steps, and with a two-triplet answer (ego frames + gaze) too. Their tests are expected failures, strict:
a model that learns them makes them fail, so that the mark goes. The numbers are in the report of #13.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import h5py
import pytest

from egoexor import ablate
from egoexor.atomic import write_json
from egoexor.config import parse_train_args
from egoexor.data.audio import ClapAudioEmbedder, save_tiny_clap
from egoexor.data.make_samples import make_samples
from egoexor.data.merge_h5 import merge_files
from egoexor.data.precompute_audio import precompute
from egoexor.data.synthetic import PARTS, generate

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
LEARNED_AT, NEAR_CHANCE, KEPT = 0.9, 0.5, 0.85
#: Parts the tiny model does not learn within the budget (module docstring).
NOT_LEARNED = {"gaze", "hands", "ultrasound", "audio", "point_cloud"}
#: The parts each branch carries.
BRANCH_PARTS = {"ego": ("ego_frames", "gaze", "hands"), "exo": ("exo_frames", "ultrasound", "audio", "point_cloud")}
_NOT_LEARNED_WHY = "within the CI budget the tiny fusion encoder passes on only the first view of a branch (docstring)"


def _samples(merged: Path, folder: Path) -> dict[str, Path]:
    """One sample file per split, as ``python -m egoexor.data.make_samples`` writes it (seed 42)."""
    files = {}
    for split in ("train", "validation", "test"):
        rng = random.Random(42)
        with h5py.File(merged, "r") as h5:
            samples, _ = make_samples(h5, split, rng)
        rng.shuffle(samples)
        files[split] = folder / f"{split}.json"
        write_json(files[split], [s.to_record() for s in samples])
    return files


@pytest.fixture(scope="module")
def ablation(tmp_path_factory) -> dict[str, dict]:
    """Train once, ablate once: removed input -> its row of the ablation table."""
    from egoexor import train

    work = tmp_path_factory.mktemp("modalities")
    start = time.perf_counter()
    dataset = generate(work / "data", "parts", seed=0)
    merged = work / "egoexor.h5"
    merge_files(dataset.files, dataset.splits_file, merged)
    files = _samples(merged, work)
    held_out = work / "held_out.json"
    write_json(held_out, [r for split in ("validation", "test") for r in json.loads(files[split].read_text())])
    clap = save_tiny_clap(work / "clap")
    precompute(merged, work / "audio.h5", ClapAudioEmbedder(clap), batch_size=64)
    print(f"data, samples and audio cache: {time.perf_counter() - start:.0f} s")
    flags = ["--config", str(CONFIG), "--data_path", str(files["train"]), "--hdf5_path", str(merged),
             "--output_dir", str(work / "run"), "--audio_encoder", str(clap), "--audio_cache", str(work / "audio.h5"),
             "--gaze_scale", "32", "--hand_scale", "32", "--disable_tqdm", "True",
             "--logging_steps", "92"]  # fmt: skip
    start = time.perf_counter()
    trainer = train.build_training(parse_train_args(flags))
    trainer.train()
    trainer.save_final_model()
    print(f"training ({trainer.state.global_step} steps): {time.perf_counter() - start:.0f} s")
    start = time.perf_counter()
    rows = ablate.run(["--checkpoint", str(work / "run"), "--hdf5", str(merged), "--samples", str(held_out),
                       "--out", str(work / "ablation"), "--audio_cache", str(work / "audio.h5"), "--batch_size", "64",
                       "--max_new_tokens", "100", "--num_workers", "0"])  # fmt: skip
    print(f"ablation ({len(rows)} runs): {time.perf_counter() - start:.0f} s")
    return {row["removed"]: row for row in rows}


def _per_part() -> list:
    """One parameter per part, those the tiny model does not learn marked as strict expected failures."""
    xfail = pytest.mark.xfail(strict=True, reason=_NOT_LEARNED_WHY)
    return [pytest.param(p.modality, marks=[xfail] if p.modality in NOT_LEARNED else []) for p in PARTS]


@pytest.mark.slow
@pytest.mark.parametrize("part", _per_part())
def test_every_part_is_learned_with_every_input(ablation, part):
    assert ablation["none"]["groups"][part] >= LEARNED_AT


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason=_NOT_LEARNED_WHY)
def test_macro_f1_with_every_input(ablation):
    assert ablation["none"]["macro_f1"] >= LEARNED_AT


def _falls_to_chance(ablation, removed: str, own: tuple[str, ...]) -> None:
    """``own`` parts were learned with every input and fall to near chance without ``removed``."""
    full, row = ablation["none"]["groups"], ablation[removed]["groups"]
    for part in own:
        assert full[part] >= LEARNED_AT, f"{part} not learned with every input: {full[part]:.3f}"
        assert row[part] <= NEAR_CHANCE, f"{part} without {removed}: {row[part]:.3f}"


@pytest.mark.slow
@pytest.mark.parametrize("modality", _per_part())
def test_removing_an_input_takes_its_part_to_chance_and_only_it(ablation, modality):
    _falls_to_chance(ablation, modality, (modality,))
    full, row = ablation["none"]["groups"], ablation[modality]["groups"]
    others = [part for part in full if part != modality and full[part] is not None and full[part] >= LEARNED_AT]
    assert others, "no other part was learned: nothing to compare with"
    for part in others:
        assert row[part] >= KEPT, f"{part} without {modality}: {row[part]:.3f} (with every input {full[part]:.3f})"


@pytest.mark.slow
@pytest.mark.parametrize("branch", ["ego", "exo"])
def test_removing_a_branch_takes_its_parts_to_chance(ablation, branch):
    """Only its own parts: the other branch's parts are not asserted, since no training sample lacks a branch
    and the tiny model's answers degrade on such an input (without the exo branch, ego frames 0.667 with
    the CI seed, 1.000 with another)."""
    _falls_to_chance(ablation, branch, tuple(part for part in BRANCH_PARTS[branch] if part not in NOT_LEARNED))
