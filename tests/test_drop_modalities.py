"""``drop_modalities``: each name removes exactly its input from every sample, and nothing else."""

from dataclasses import replace

import pytest
import torch

from egoexor import modalities
from egoexor.config import ConfigError, DataConfig
from egoexor.data.dataset import EgoExorDataset
from egoexor.data.layout import TakeKey
from egoexor.data.processor import Collator
from egoexor.data.samples import load_samples

MISS_FULL, ULTRASOUND = TakeKey("MISS", 1, 1), TakeKey("Ultrasound", 1, 1)
#: Batch entries that carry one input each: what removing the input must change, and nothing else.
ENTRIES = (
    "ego_images",
    "ego_view_mask",
    "gaze",
    "gaze_mask",
    "hands",
    "hand_mask",
    "exo_images",
    "exo_view_mask",
    "audio",
    "audio_mask",
    "point_cloud",
    "point_cloud_mask",
)


@pytest.fixture(scope="module")
def batches(sample_files, merged_file, tokenizer, clap_dir):
    """The batch of a MISS frame and an Ultrasound frame (every input between them) per drop set."""
    validation = load_samples(sample_files["validation"])
    chosen = [next(s for s in validation if s.take == take) for take in (MISS_FULL, ULTRASOUND)]
    config = DataConfig(image_size=32, tokens_per_branch=4, audio_encoder=str(clap_dir))

    def batch(*drop: str) -> dict:
        dataset = EgoExorDataset(chosen, merged_file, tokenizer, replace(config, drop_modalities=drop), "generate")
        return Collator(tokenizer.pad_token_id, "left")([dataset[i] for i in range(len(chosen))])

    return batch


def changed(batch: dict, full: dict) -> set[str]:
    return {key for key in ENTRIES if batch[key].shape != full[key].shape or not torch.equal(batch[key], full[key])}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("gaze", {"gaze", "gaze_mask"}),
        ("hands", {"hands", "hand_mask"}),
        ("audio", {"audio", "audio_mask"}),
        ("point_cloud", {"point_cloud", "point_cloud_mask"}),
        ("ego_frames", {"ego_images"}),
        ("exo_frames", {"exo_images"}),
        ("ultrasound", {"exo_images"}),
    ],
)
def test_removing_one_input_changes_only_its_own_entries(batches, name, expected):
    full, dropped = batches(), batches(name)
    assert changed(dropped, full) == expected
    masks = {"gaze": "gaze_mask", "hands": "hand_mask", "audio": "audio_mask", "point_cloud": "point_cloud_mask"}
    if name in masks:
        assert full[masks[name]].any() and not dropped[masks[name]].any()


def test_view_inputs_are_blanked_in_their_views_only(batches):
    full = batches()
    ego = batches("ego_frames")["ego_images"]
    assert full["ego_images"].any() and not ego.any()  # the views stay (with gaze and hands) and show nothing
    exo, screen = batches("exo_frames")["exo_images"], batches("ultrasound")["exo_images"]
    # Ultrasound take, exo cameras in camera order: external_1, ultrasound, external_2
    assert not exo[1, 0].any() and torch.equal(exo[1, 1], full["exo_images"][1, 1]) and not exo[1, 2].any()
    assert torch.equal(screen[1, 0], full["exo_images"][1, 0]) and not screen[1, 1].any()
    assert torch.equal(screen[0], full["exo_images"][0])  # a MISS take has no screen


def test_removing_a_branch_removes_its_views_and_tokens(batches):
    full = batches()
    ego = batches("ego")
    assert not ego["ego_view_mask"].any() and not ego["gaze_mask"].any() and not ego["hand_mask"].any()
    assert torch.equal(ego["exo_images"], full["exo_images"]) and torch.equal(ego["audio"], full["audio"])
    exo = batches("exo")
    assert not exo["exo_view_mask"].any() and not exo["audio_mask"].any() and not exo["point_cloud_mask"].any()
    assert torch.equal(exo["ego_images"], full["ego_images"]) and torch.equal(exo["gaze"], full["gaze"])
    # fewer visual placeholders: one branch of tokens_per_branch per sample instead of two
    assert len(exo["input_ids"][0]) == len(full["input_ids"][0]) - 4


def test_every_name_is_known_and_an_unknown_one_is_one_clear_error():
    assert set(modalities.droppable()) == {
        "ego_frames",
        "gaze",
        "hands",
        "exo_frames",
        "ultrasound",
        "audio",
        "point_cloud",
        "ego",
        "exo",
    }
    assert DataConfig(drop_modalities=["gaze", "ego"]).drop_modalities == ("gaze", "ego")  # from a saved JSON list
    with pytest.raises(ConfigError, match=r"^drop_modalities: unknown eye_gaze, sound; choose from ego_frames, gaze"):
        DataConfig(drop_modalities=("eye_gaze", "sound"))
