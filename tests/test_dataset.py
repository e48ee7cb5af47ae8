"""Dataset + collator: every modality's values on the synthetic quirks, mixed batches, labels."""

import re
import shutil
from dataclasses import replace

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from egoexor.cli import CommandError
from egoexor.config import ConfigError, DataConfig
from egoexor.data import layout, processor, transforms
from egoexor.data.audio import AudioCache, ClapAudioEmbedder
from egoexor.data.dataset import EgoExorDataset
from egoexor.data.layout import TakeKey
from egoexor.data.precompute_audio import precompute
from egoexor.data.processor import Collator, SampleInputError
from egoexor.data.samples import load_samples
from egoexor.modalities import gaze as gaze_input
from egoexor.modalities import hands as hand_input
from egoexor.prompt import IGNORE_INDEX, IMAGE_TOKEN_ID, SYSTEM

TOKENS = 4
MISS_FULL, EXO_ONLY, MISS_2, ULTRASOUND = (
    TakeKey("MISS", 1, 1),
    TakeKey("MISS", 1, 2),
    TakeKey("MISS", 2, 1),
    TakeKey("Ultrasound", 1, 1),
)


@pytest.fixture(scope="module")
def config(clap_dir):
    return DataConfig(image_size=32, tokens_per_branch=TOKENS, audio_encoder=str(clap_dir))


def pick(samples, take, frame=None):
    return next(s for s in samples if s.take == take and (frame is None or s.frame == frame))


@pytest.fixture(scope="module")
def validation(sample_files):
    return load_samples(sample_files["validation"])


def make(samples, merged_file, tokenizer, config, mode="eval", **overrides):
    return EgoExorDataset(samples, merged_file, tokenizer, replace(config, **overrides), mode=mode)


def test_mixed_batch_shapes_and_masks(validation, merged_file, tokenizer, config):
    chosen = [
        pick(validation, MISS_FULL),
        pick(validation, EXO_ONLY),
        pick(validation, MISS_2, 1),
        pick(validation, ULTRASOUND),
    ]
    dataset = make(chosen, merged_file, tokenizer, config)
    batch = Collator(tokenizer.pad_token_id)([dataset[i] for i in range(4)])
    assert batch["ego_images"].shape == (4, 4, 3, 32, 32)
    assert batch["ego_view_mask"].sum(1).tolist() == [4, 0, 3, 2]
    assert batch["exo_images"].shape == (4, 6, 3, 32, 32)
    assert batch["exo_view_mask"].sum(1).tolist() == [6, 2, 4, 3]  # blank camera excluded, ultrasound included
    assert batch["gaze_mask"].sum(1).tolist() == [4, 0, 3, 2]
    assert batch["hand_mask"][2].tolist() == [False, True, True, False]  # head_surgeon (view 0) untracked in frame 1
    assert batch["audio"].shape == (4, 512) and batch["audio_mask"].tolist() == [True, False, True, False]
    assert batch["point_cloud_mask"].tolist() == [True] * 4
    sizes = torch.bincount(batch["point_cloud_batch"], minlength=4).tolist()
    assert sizes == [64, 48, 80, 32] and batch["point_cloud"].shape == (224, 6)
    assert ((batch["input_ids"] == IMAGE_TOKEN_ID).sum(1) == torch.tensor([8, 4, 8, 8])).all()
    # padding: zeros under False masks
    assert not batch["ego_images"][1].any() and not batch["gaze"][1].any()
    assert batch["attention_mask"].sum(1).tolist() == [len(dataset[i]["input_ids"]) for i in range(4)]


def test_labels_are_exactly_answer_and_eos(validation, merged_file, tokenizer, config):
    sample = pick(validation, MISS_FULL)
    item = make([sample], merged_file, tokenizer, config)[0]
    supervised = item["labels"][item["labels"] != IGNORE_INDEX].tolist()
    assert supervised == tokenizer(sample.answer, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    n = len(supervised)
    assert item["input_ids"][-n:].tolist() == supervised and (item["labels"][:-n] == IGNORE_INDEX).all()
    prompt = item["input_ids"][:-n]
    assert prompt[0] == tokenizer.bos_token_id
    text = tokenizer.decode([t for t in prompt.tolist() if t != IMAGE_TOKEN_ID], skip_special_tokens=True)
    assert text.startswith(SYSTEM + " USER:") and text.endswith("ASSISTANT:")
    positions = torch.nonzero(prompt == IMAGE_TOKEN_ID).flatten()
    assert len(positions) == 2 * TOKENS and (positions.diff() == 1).all()  # one contiguous block


def test_generate_mode_left_pads_prompts_with_the_chosen_roles(validation, merged_file, tokenizer, config):
    chosen = [pick(validation, MISS_FULL), pick(validation, EXO_ONLY)]
    dataset = make(chosen, merged_file, tokenizer, config, mode="generate", prompt_roles="reference_inference")
    items = [dataset[0], dataset[1]]
    assert "labels" not in items[0]
    batch = Collator(tokenizer.pad_token_id, padding_side="left")(items)
    assert "labels" not in batch
    shorter = int(batch["attention_mask"].sum(1).argmin())
    assert batch["attention_mask"][shorter, 0] == 0 and batch["attention_mask"][:, -1].all()
    text = tokenizer.decode(items[0]["input_ids"][items[0]["input_ids"] != IMAGE_TOKEN_ID], skip_special_tokens=True)
    assert text.endswith("gpt:") and " human: " in text


def test_ego_values_follow_the_transforms(validation, merged_file, tokenizer, config):
    sample = pick(validation, MISS_FULL)
    item = make([sample], merged_file, tokenizer, config)[0]
    with h5py.File(merged_file, "r") as h5:
        take = h5[MISS_FULL.path]
        rgb, gaze = take[layout.RGB][sample.frame], take[layout.GAZE][sample.frame]
        depth, hands = take[layout.GAZE_DEPTH][sample.frame], take[layout.HANDS][sample.frame]
    # view 0 is head_surgeon (camera 0), whose rows are row 1 of gaze and hands (ids in shuffled order)
    assert np.allclose(item["ego_images"][0].numpy(), transforms.image(rgb[0], 32, flip=True))
    xy = gaze_input.gaze_rows(gaze, MISS_FULL, 336.0)[1]
    assert np.allclose(item["gaze"][0].numpy(), [*xy, gaze_input.gaze_depth(depth, 1.0)[1]])
    assert np.allclose(item["hands"][0].numpy(), hand_input.hand_rows(hands, 336.0)[0][1])


def test_black_ego_frame_is_skipped_and_invalid_gaze_is_zero(sample_files, merged_file, tokenizer, config):
    train = load_samples(sample_files["train"])
    frame0 = pick(train, MISS_FULL, 0)  # frame 0: invalid gaze for the head_surgeon row (row 1)
    item = make([frame0], merged_file, tokenizer, config)[0]
    assert item["gaze_mask"][0] and item["gaze"][0, :2].tolist() == [0.0, 0.0]
    frame1 = pick(load_samples(sample_files["validation"]), MISS_FULL, 1)  # assistant black in frame 1
    assert len(make([frame1], merged_file, tokenizer, config)[0]["ego_images"]) == 3


def test_exo_view_order_in_eval_and_sampling_in_train(validation, merged_file, tokenizer, config):
    sample = pick(validation, ULTRASOUND)
    with h5py.File(merged_file, "r") as h5:
        rgb = h5[ULTRASOUND.path][layout.RGB][sample.frame]
    item = make([sample], merged_file, tokenizer, config)[0]
    expected = [transforms.image(rgb[c], 32, flip=c == 3) for c in (2, 3, 4)]  # external_1, ultrasound, external_2
    assert np.allclose(item["exo_images"].numpy(), np.stack(expected))
    full = pick(validation, MISS_FULL)
    counts = set()
    for seed in range(40):
        dataset = EgoExorDataset([full], merged_file, tokenizer, replace(config, audio_encoder=None), "train", seed)
        counts.add(len(dataset[0]["exo_images"]))
    assert counts == {2, 3, 4, 5}


def test_reference_row_matching_follows_the_mode(validation, merged_file, tokenizer, config):
    sample = pick(validation, MISS_FULL, 1)  # assistant (camera 1) black: views head_surgeon, circulator, anesthetist
    with h5py.File(merged_file, "r") as h5:
        take = h5[MISS_FULL.path]
        depth = gaze_input.gaze_depth(take[layout.GAZE_DEPTH][1], 1.0)
        hands, tracked = hand_input.hand_rows(take[layout.HANDS][1], 336.0)
    assert not tracked[3]  # the synthetic file leaves the last hand row of frame 1 untracked
    # training rule (train and eval): the k-th view takes row k; inference rule: camera - 0 = rows 0, 2, 3
    for mode, rows in (("train", [0, 1, 2]), ("eval", [0, 1, 2]), ("generate", [0, 2, 3])):
        dataset = make([sample], merged_file, tokenizer, config, mode, row_matching="reference", audio_encoder=None)
        item = dataset[0]
        assert item["gaze_mask"].all() and item["gaze"][:, 2].tolist() == depth[rows].tolist()
        assert item["hand_mask"].tolist() == tracked[rows].tolist()
        for view, row in enumerate(rows):
            if tracked[row]:
                assert item["hands"][view].tolist() == hands[row].tolist()


def edited_copy(merged_file, tmp_path, take, frame, edit):
    """A copy of the merged file with ``edit(take_group, frame stack)`` applied to one frame."""
    path = tmp_path / "edited.h5"
    shutil.copyfile(merged_file, path)
    with h5py.File(path, "r+") as h5:
        group = h5[take.path]
        stack = group[layout.RGB][frame]
        edit(group, stack)
        group[layout.RGB][frame] = stack
    return path


def test_dark_frames_are_rescaled_only_with_the_switch(validation, merged_file, tokenizer, config, tmp_path):
    sample = pick(validation, MISS_FULL)
    dark = np.zeros((24, 32, 3), np.uint8)
    dark[5:10, 5:20] = [1, 0, 1]  # brightest value 1

    def darken(group, stack):
        stack[0] = stack[4] = dark  # head_surgeon (ego view 0) and or_light (exo view 0)

    edited = edited_copy(merged_file, tmp_path, MISS_FULL, sample.frame, darken)
    for rescale, expected in ((False, dark), (True, dark * np.uint8(255))):
        item = make([sample], edited, tokenizer, config, rescale_dark_frames=rescale, audio_encoder=None)[0]
        assert np.array_equal(item["ego_images"][0].numpy(), transforms.image(expected, 32, flip=True))
        assert np.array_equal(item["exo_images"][0].numpy(), transforms.image(expected, 32, flip=False))


def test_reference_camera_selection_keeps_a_blank_camera_inside_the_exo_range(
    validation, merged_file, tokenizer, config, tmp_path
):
    sample = pick(validation, EXO_ONLY)  # cameras or_light, external_1, blank

    def blank_in_the_middle(group, stack):  # -> or_light, blank (black), external_1
        names = group[layout.SOURCES_GROUP].attrs
        names["source_1"], names["source_2"] = "blank", "external_1"
        stack[[1, 2]] = stack[[2, 1]]

    edited = edited_copy(merged_file, tmp_path, EXO_ONLY, sample.frame, blank_in_the_middle)
    by_name = make([sample], edited, tokenizer, config, audio_encoder=None)[0]["exo_images"]
    by_range = make([sample], edited, tokenizer, config, camera_selection="reference", audio_encoder=None)[0]
    black = torch.from_numpy(transforms.image(np.zeros((24, 32, 3), np.uint8), 32, flip=False))
    assert len(by_name) == 2 and not any(torch.equal(view, black) for view in by_name)
    assert len(by_range["exo_images"]) == 3 and torch.equal(by_range["exo_images"][1], black)
    assert torch.equal(by_range["exo_images"][[0, 2]], by_name)
    assert (by_range["input_ids"] == IMAGE_TOKEN_ID).sum() == TOKENS  # still one (exo) branch


def test_text_only_sample_has_no_visual_tokens(validation, merged_file, tokenizer, config):
    sample = replace(pick(validation, MISS_FULL), modalities=frozenset())
    item = make([sample], merged_file, tokenizer, config)[0]
    assert (item["input_ids"] != IMAGE_TOKEN_ID).all()
    assert len(item["ego_images"]) == len(item["exo_images"]) == 0
    assert item["audio"] is None and item["point_cloud"] is None
    batch = Collator(tokenizer.pad_token_id)(
        [item, make([pick(validation, MISS_FULL)], merged_file, tokenizer, config)[0]]
    )
    assert batch["ego_view_mask"][0].sum() == 0 and batch["ego_view_mask"][1].sum() == 4


def test_modality_dropout_rate(sample_files, merged_file, tokenizer, config):
    samples = [s for s in load_samples(sample_files["train"]) if "point_cloud" in s.modalities][:120]
    dataset = make(samples, merged_file, tokenizer, config, mode="train", modality_dropout=0.3, audio_encoder=None)
    kept = np.mean([dataset[i]["point_cloud"] is not None for i in range(len(samples))])
    assert 0.55 < kept < 0.85
    no_dropout = make(samples[:20], merged_file, tokenizer, config, mode="train", audio_encoder=None)
    assert all(no_dropout[i]["point_cloud"] is not None for i in range(20))
    # evaluation never drops
    evaluation = make(samples[:20], merged_file, tokenizer, config, modality_dropout=1.0, audio_encoder=None)
    assert all(evaluation[i]["point_cloud"] is not None for i in range(20))


def test_audio_cache_equals_on_the_fly(validation, merged_file, tokenizer, config, clap_dir, tmp_path):
    cache = tmp_path / "audio.h5"
    precompute(merged_file, cache, ClapAudioEmbedder(clap_dir, "reference"))
    sample = pick(validation, MISS_FULL)
    live = make([sample], merged_file, tokenizer, config)[0]["audio"]
    cached = make([sample], merged_file, tokenizer, config, audio_cache=str(cache))[0]["audio"]
    assert torch.allclose(live, cached, atol=1e-5)
    with pytest.raises(ValueError, match="audio_norm='reference'"):
        AudioCache(cache, "per_snippet")


def hand_made_item(ids: list[int], n_ego: int, n_exo: int, size: int = 8) -> dict:
    """An item with ``n_ego`` ego views (gaze on each, a hand row on the last) and no audio or cloud."""
    hand_mask = torch.zeros(n_ego, dtype=torch.bool)
    hand_mask[n_ego - 1 :] = True
    return {
        "input_ids": torch.tensor(ids),
        "labels": torch.tensor([IGNORE_INDEX, *ids[1:]]),
        "ego_images": torch.ones(n_ego, 3, size, size),
        "ego_view_kinds": torch.zeros(n_ego, dtype=torch.long),
        "gaze": torch.ones(n_ego, 3),
        "gaze_mask": torch.ones(n_ego, dtype=torch.bool),
        "hands": torch.ones(n_ego, 16),
        "hand_mask": hand_mask,
        "exo_images": torch.ones(n_exo, 3, size, size),
        "exo_view_kinds": torch.ones(n_exo, dtype=torch.long),
        "audio": None,
        "point_cloud": None,
    }


def test_collator_gives_every_documented_key_with_its_dtype_and_shape():
    documented = re.findall(r"^``(\w+)``\s+(\w+) \[", processor.__doc__, flags=re.MULTILINE)
    assert len(documented) == 18
    items = [hand_made_item([1, 5, 6], n_ego=2, n_exo=1), hand_made_item([1, 7], n_ego=0, n_exo=0)]
    batch = Collator(pad_token_id=0, padding_side="left")(items)
    assert [(key, str(batch[key].dtype).removeprefix("torch.")) for key in batch] == documented
    assert {key: tuple(tensor.shape) for key, tensor in batch.items()} == {
        "input_ids": (2, 3),
        "attention_mask": (2, 3),
        "labels": (2, 3),
        "ego_images": (2, 2, 3, 8, 8),
        "ego_view_mask": (2, 2),
        "ego_view_kinds": (2, 2),
        "gaze": (2, 2, 3),
        "gaze_mask": (2, 2),
        "hands": (2, 2, 16),
        "hand_mask": (2, 2),
        "exo_images": (2, 1, 3, 8, 8),
        "exo_view_mask": (2, 1),
        "exo_view_kinds": (2, 1),
        "audio": (2, 0),
        "audio_mask": (2,),
        "point_cloud": (0, 6),
        "point_cloud_batch": (0,),
        "point_cloud_mask": (2,),
    }
    assert batch["input_ids"][1].tolist() == [0, 1, 7] and batch["labels"][1].tolist() == [IGNORE_INDEX] * 2 + [7]
    assert batch["ego_view_mask"].tolist() == [[True, True], [False, False]] and not batch["ego_images"][1].any()
    assert batch["hand_mask"].tolist() == [[False, True], [False, False]] and not batch["gaze"][1].any()
    assert not batch["audio_mask"].any() and not batch["point_cloud_mask"].any()


def test_dataloader_workers_give_the_same_batches(validation, merged_file, tokenizer, config):
    dataset = make(validation[:8], merged_file, tokenizer, config, mode="train", audio_encoder=None)
    collate = Collator(tokenizer.pad_token_id)
    serial = list(DataLoader(dataset, batch_size=4, collate_fn=collate))
    parallel = list(
        DataLoader(dataset, batch_size=4, collate_fn=collate, num_workers=2, multiprocessing_context="fork")
    )
    for a, b in zip(serial, parallel, strict=True):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_bad_point_cloud_and_long_prompt_name_the_sample(validation, merged_file, tokenizer, config, tmp_path):
    broken = tmp_path / "broken.h5"
    shutil.copyfile(merged_file, broken)
    sample = pick(validation, MISS_FULL)
    with h5py.File(broken, "r+") as h5:
        coords = h5[MISS_FULL.path][layout.POINT_COORDINATES]
        row = coords[sample.frame]
        row[0, 0] = np.nan
        coords[sample.frame] = row
    with pytest.raises(SampleInputError, match=f"sample {sample.id} .*frame {sample.frame}.*NaN"):
        make([sample], broken, tokenizer, config, audio_encoder=None)[0]
    with pytest.raises(SampleInputError, match=f"sample {sample.id}: .*over model_max_length=50"):
        make([sample], merged_file, tokenizer, config, model_max_length=50, audio_encoder=None)[0]


def test_config_validation():
    with pytest.raises(ConfigError, match="flip_rule"):
        DataConfig(flip_rule="some")
    with pytest.raises(ConfigError, match="camera_selection"):
        DataConfig(camera_selection="range")
    with pytest.raises(CommandError, match="modality_dropout must be >= 0 and <= 1, got 1.5"):
        DataConfig(modality_dropout=1.5)
