import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPImageProcessor

from egoexor.data import transforms
from egoexor.data.layout import TakeKey
from egoexor.modalities import audio, gaze, hands, point_cloud


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


def test_dark_frame_rescale():
    frame = np.zeros((8, 8, 3), np.uint8)
    frame[2:4, 2:4] = [1, 0, 1]  # brightest value 1
    rescaled = transforms.image(frame, 8, flip=False, rescale_dark=True)
    white = np.zeros_like(frame)
    white[2:4, 2:4] = [255, 0, 255]
    assert np.array_equal(rescaled, transforms.image(white, 8, flip=False))
    assert np.array_equal(transforms.image(frame, 8, flip=False), transforms.image(frame, 8, False, rescale_dark=False))
    assert not np.array_equal(rescaled, transforms.image(frame, 8, flip=False))
    brighter = frame * 2  # brightest value 2: left alone
    assert np.array_equal(transforms.image(brighter, 8, False, rescale_dark=True), transforms.image(brighter, 8, False))
    black = np.zeros_like(frame)
    assert np.array_equal(transforms.image(black, 8, False, rescale_dark=True), transforms.image(black, 8, False))


def test_flip_rules():
    # training: every ego-branch view; in the exo branch only the ultrasound screen and the simstation
    assert transforms.is_flipped("head_surgeon", True, "train") and transforms.is_flipped("or_light", True, "train")
    assert transforms.is_flipped("ultrasound", False, "train") and transforms.is_flipped("simstation", False, "train")
    assert not transforms.is_flipped("or_light", False, "train")
    assert not transforms.is_flipped("assistant", False, "train")  # an ego camera in the exo branch (reference ranges)
    assert transforms.is_flipped("or_light", False, "all") and transforms.is_flipped("external_3", False, "all")


def test_gaze_rows_fixation_invalid_nan_inf():
    rows = np.array([[2, 100, 50], [1, -1, -1], [1, np.nan, 20], [1, np.inf, 400], [4, 20, 30]], np.float32)
    # Ultrasound/1/1 lists the assistant (id 2): only that row moves by (-9, -4)
    out = gaze.gaze_rows(rows, TakeKey("Ultrasound", 1, 1), scale=336.0)
    assert np.allclose(out[0], [91 / 336, 46 / 336])
    assert np.array_equal(out[1], [0, 0])  # invalid gaze -> 0
    assert np.allclose(out[2], [0, 20 / 336])  # NaN -> 0
    assert np.allclose(out[3], [1 / 336, 1.0])  # +inf -> 1 before the division (reference order); clamp
    assert np.allclose(out[4], [20 / 336, 30 / 336])
    no_fix = gaze.gaze_rows(rows, TakeKey("MISS", 4, 3), scale=336.0)
    assert np.allclose(no_fix[0], [100 / 336, 50 / 336])
    assert np.allclose(gaze.gaze_rows(rows, TakeKey("Ultrasound", 1, 1), 336.0, fixation=False)[0], no_fix[0])


def test_gaze_fixation_table_is_the_reference_list():
    counts = {name: len(takes) for name, takes in gaze.GAZE_FIXATION_TAKES.items()}
    assert counts == {"assistant": 7, "head_surgeon": 10, "anesthetist": 10, "circulator": 6}
    assert TakeKey("MISS", 1, 4) in gaze.GAZE_FIXATION_TAKES["circulator"]


def test_gaze_depth():
    out = gaze.gaze_depth(np.array([np.nan, np.inf, 1.7, 0.4, -np.inf], np.float32), scale=1.0)
    assert np.allclose(out, [0, 1, 1, 0.4, 0])


def test_hand_rows():
    rows = np.full((3, 17), 100.0, np.float32)
    rows[:, 0] = [1, 2, 3]
    rows[1, 1:9] = np.nan  # left hand untracked
    rows[2, 1:] = np.nan  # nothing tracked
    points, tracked = hands.hand_rows(rows, scale=336.0)
    assert points.shape == (3, 16)
    assert np.allclose(points[0], 100 / 336)
    assert np.array_equal(points[1, :8], np.zeros(8)) and np.allclose(points[1, 8:], 100 / 336)
    assert tracked.tolist() == [True, True, False]


def reference_audio(snippet):
    """The reference's torch code path (train.py:884-911, 1401-1404), step by step, on a [S, 2] snippet."""
    data = torch.from_numpy(snippet).float().clone()
    max_vals = data.abs().max(dim=1, keepdim=True)[0]  # AudioTransform: dim 1 of [S, 2] is the channel axis
    data /= max_vals + 1e-6
    audio = data.to(dtype=torch.bfloat16).unsqueeze(0).clone()  # the dataset; then AudioProcessor:
    audio = audio.mean(dim=-1)  # mono mean of the bf16 tensor
    return audio.to(dtype=torch.float32)[0].numpy()


def test_audio_reference_norm_is_the_reference_code_bit_for_bit():
    rng = np.random.default_rng(2)
    snippet = (rng.normal(0, 0.3, (48000, 2)) * rng.choice([1.0, 1e-3, 1e-7], (48000, 2))).astype(np.float32)
    snippet[:50] = 0  # silence
    snippet[50:100, 1] = 0  # one silent channel
    ours = audio.audio_snippet(snippet, "reference")
    assert ours.shape == (48000,) and ours.dtype == np.float32
    assert np.array_equal(ours, reference_audio(snippet))
    quiet = rng.normal(0, 0.01, (4800, 2)).astype(np.float32)
    # amplitude erased, as in the reference: 100 times louder gives the same values, up to bf16 rounding
    difference = audio.audio_snippet(quiet, "reference") - audio.audio_snippet(100 * quiet, "reference")
    assert np.abs(difference).max() <= 2**-7


def test_audio_reference_norm_by_hand():
    snippet = np.array([[0.5, -0.25], [0.0, 0.0], [0.001, 0.003], [1.0, 0.3]], np.float32)
    # each sample / (max(|L|, |R|) + 1e-6), to bf16, mean, to bf16: (1 - 0.5) / 2 = 0.25; silence 0;
    # 1/3 -> bf16 171 * 2^-9 = 0.333984375 and 1 - 3.3e-4 -> bf16 1.0: mean 0.6669921875 -> bf16 171 * 2^-8;
    # 1.0 and 0.3 -> bf16 154 * 2^-9 = 0.30078125: mean 0.650390625 = 166.5 * 2^-8 -> ties to even: 166 * 2^-8
    ours = audio.audio_snippet(snippet, "reference")
    assert ours.tolist() == [0.25, 0.0, 171 / 256, 166 / 256]


def test_audio_silence_stays_zero_and_per_snippet_norm():
    snippet = np.zeros((100, 2), np.float32)
    snippet[10] = [0.5, -0.25]
    reference = audio.audio_snippet(snippet, "reference")
    assert np.isfinite(reference).all() and reference[0] == 0 and reference[10] == pytest.approx(0.25)
    peak = audio.audio_snippet(snippet, "per_snippet")
    assert peak[10] == pytest.approx((1.0 - 0.5) / 2)
    with pytest.raises(ValueError, match="audio_norm"):
        audio.audio_snippet(snippet, "loud")


def test_bfloat16_rounding_matches_torch():
    values = np.random.default_rng(3).normal(0, 10, 10_000).astype(np.float32)
    expected = torch.from_numpy(values).to(torch.bfloat16).float().numpy()
    assert np.array_equal(audio._round_to_bfloat16(values), expected)


def test_point_cloud_is_stored_values():
    xyz = np.random.default_rng(4).normal(size=(5, 3)).astype(np.float32)
    rgb = np.random.default_rng(5).random((5, 3)).astype(np.float32)
    out = point_cloud.point_cloud(xyz, rgb)
    assert out.shape == (5, 6) and np.array_equal(out[:, :3], xyz) and np.array_equal(out[:, 3:], rgb)
