import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPImageProcessor

from egoexor.data import transforms
from egoexor.data.layout import TakeKey


@pytest.fixture(scope="module")
def clip_processor():
    return CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})


def reference_pipeline(frame, processor):
    """The reference: expand2square with the mean colour, then CLIPImageProcessor."""
    height, width = frame.shape[:2]
    side = max(height, width)
    square = Image.new("RGB", (side, side), transforms.PAD_COLOUR)
    square.paste(Image.fromarray(frame), ((side - width) // 2, (side - height) // 2))
    return processor(images=square, return_tensors="np")["pixel_values"][0]


@pytest.mark.parametrize("shape", [(200, 300, 3), (300, 180, 3), (336, 336, 3), (24, 32, 3)])
def test_image_matches_clip_image_processor(shape, clip_processor):
    frame = (np.random.default_rng(0).random(shape) * 255).astype(np.uint8)
    ours = transforms.image(frame, 336, flip=False)
    assert ours.shape == (3, 336, 336) and ours.dtype == np.float32
    assert np.abs(ours - reference_pipeline(frame, clip_processor)).max() < 1e-2


def test_image_flip_reverses_channels(clip_processor):
    frame = (np.random.default_rng(1).random((40, 60, 3)) * 255).astype(np.uint8)
    flipped = transforms.image(frame, 336, flip=True)
    assert np.abs(flipped - reference_pipeline(frame[..., ::-1].copy(), clip_processor)).max() < 1e-2


def test_image_rejects_non_uint8():
    with pytest.raises(ValueError, match="uint8"):
        transforms.image(np.zeros((4, 4, 3), np.float32), 32, flip=False)


def test_flip_rules():
    assert transforms.is_flipped("head_surgeon", "train") and transforms.is_flipped("ultrasound", "train")
    assert transforms.is_flipped("simstation", "train") and not transforms.is_flipped("or_light", "train")
    assert transforms.is_flipped("or_light", "all") and transforms.is_flipped("external_3", "all")


def test_gaze_rows_fixation_invalid_nan_inf():
    rows = np.array([[2, 100, 50], [1, -1, -1], [1, np.nan, 20], [1, np.inf, 400], [4, 20, 30]], np.float32)
    # Ultrasound/1/1 lists the assistant (id 2): only that row moves by (-9, -4)
    out = transforms.gaze_rows(rows, TakeKey("Ultrasound", 1, 1), scale=336.0)
    assert np.allclose(out[0], [91 / 336, 46 / 336])
    assert np.array_equal(out[1], [0, 0])  # invalid gaze -> 0
    assert np.allclose(out[2], [0, 20 / 336])  # NaN -> 0
    assert np.allclose(out[3], [1 / 336, 1.0])  # +inf -> 1 before the division (reference order); clamp
    assert np.allclose(out[4], [20 / 336, 30 / 336])
    no_fix = transforms.gaze_rows(rows, TakeKey("MISS", 4, 3), scale=336.0)
    assert np.allclose(no_fix[0], [100 / 336, 50 / 336])
    assert np.allclose(transforms.gaze_rows(rows, TakeKey("Ultrasound", 1, 1), 336.0, fixation=False)[0], no_fix[0])


def test_gaze_fixation_table_is_the_reference_list():
    counts = {name: len(takes) for name, takes in transforms.GAZE_FIXATION_TAKES.items()}
    assert counts == {"assistant": 7, "head_surgeon": 10, "anesthetist": 10, "circulator": 6}
    assert TakeKey("MISS", 1, 4) in transforms.GAZE_FIXATION_TAKES["circulator"]


def test_gaze_depth():
    out = transforms.gaze_depth(np.array([np.nan, np.inf, 1.7, 0.4, -np.inf], np.float32), scale=1.0)
    assert np.allclose(out, [0, 1, 1, 0.4, 0])


def test_hand_rows():
    rows = np.full((3, 17), 100.0, np.float32)
    rows[:, 0] = [1, 2, 3]
    rows[1, 1:9] = np.nan  # left hand untracked
    rows[2, 1:] = np.nan  # nothing tracked
    points, tracked = transforms.hand_rows(rows, scale=336.0)
    assert points.shape == (3, 16)
    assert np.allclose(points[0], 100 / 336)
    assert np.array_equal(points[1, :8], np.zeros(8)) and np.allclose(points[1, 8:], 100 / 336)
    assert tracked.tolist() == [True, True, False]


def reference_audio(snippet):
    """The reference's torch code path: AudioTransform on a 2-D tensor, bf16, mono mean, float32."""
    x = torch.from_numpy(snippet)
    x = x / x.abs().max(dim=1, keepdim=True).values
    return x.to(torch.bfloat16).unsqueeze(0).mean(dim=-1).float()[0].numpy()


def test_audio_reference_norm_matches_the_reference_code():
    snippet = np.random.default_rng(2).normal(0, 0.3, (4800, 2)).astype(np.float32)
    ours = transforms.audio_snippet(snippet, "reference")
    assert ours.shape == (4800,)
    assert np.allclose(ours, reference_audio(snippet), atol=1e-2)
    assert np.abs(ours).max() <= 1.0 and np.abs(ours).mean() > 0.5  # amplitude erased, as in the reference


def test_audio_silence_stays_zero_and_per_snippet_norm():
    snippet = np.zeros((100, 2), np.float32)
    snippet[10] = [0.5, -0.25]
    reference = transforms.audio_snippet(snippet, "reference")
    assert np.isfinite(reference).all() and reference[0] == 0 and reference[10] == pytest.approx(0.25)
    peak = transforms.audio_snippet(snippet, "per_snippet")
    assert peak[10] == pytest.approx((1.0 - 0.5) / 2)
    with pytest.raises(ValueError, match="audio_norm"):
        transforms.audio_snippet(snippet, "loud")


def test_bfloat16_rounding_matches_torch():
    values = np.random.default_rng(3).normal(0, 10, 10_000).astype(np.float32)
    expected = torch.from_numpy(values).to(torch.bfloat16).float().numpy()
    assert np.array_equal(transforms._round_to_bfloat16(values), expected)


def test_point_cloud_is_stored_values():
    xyz = np.random.default_rng(4).normal(size=(5, 3)).astype(np.float32)
    rgb = np.random.default_rng(5).random((5, 3)).astype(np.float32)
    out = transforms.point_cloud(xyz, rgb)
    assert out.shape == (5, 6) and np.array_equal(out[:, :3], xyz) and np.array_equal(out[:, 3:], rgb)
