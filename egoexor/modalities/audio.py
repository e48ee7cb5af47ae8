"""Audio: one exo-branch token per sample from the CLAP embedding of the frame's 1-s snippet.

Dataset ``audio/snippets`` [F, S, 2] (48 kHz stereo; ``audio/waveform`` [S, 2], the whole take, is checked
but not read). The embedding comes from a precomputed sidecar (``audio_cache``,
``python -m egoexor.data.precompute_audio``) or from CLAP (``audio_encoder``, loaded once per DataLoader
worker) on the snippet normalised by :func:`audio_snippet`. A sample lists ``audio`` only where its
take has ego devices (the reference's sample generator), and the token needs an exo view. Encoder
``audio_projector``: a Linear ``audio_dim`` -> D.
"""

from __future__ import annotations

import math

import numpy as np

from egoexor import vocab
from egoexor.config import DataConfig
from egoexor.data import layout
from egoexor.modalities import register_modality
from egoexor.modalities.base import OptionalVector, TakeDataset, TokenInput


def audio_snippet(snippet: np.ndarray, norm: str) -> np.ndarray:
    """[S, 2] stereo -> [S] mono float32, normalised as CLAP is fed.

    ``reference``: bit for bit the reference's ``AudioTransform`` and ``AudioProcessor`` on a 2-D
    snippet (``train.py:884-911``, ``1401-1404``; inference alike): each time sample divided in
    float32 by its own max(|L|, |R|) + 1e-6 (dim 1 of a [S, 2] tensor is the channel axis: this
    erases amplitude, but the released model was trained on it), rounded to bfloat16, averaged to
    mono in bfloat16 (float32 sum, halved, rounded), then float32 again. ``per_snippet``: divided by
    the snippet's peak, then mono in float32.
    """
    audio = np.asarray(snippet, np.float32)
    if audio.ndim != 2 or audio.shape[1] != 2:
        raise ValueError(f"expected a [samples, 2] stereo snippet, got {audio.shape}")
    if norm == "reference":
        peak = np.abs(audio).max(axis=1, keepdims=True)
        audio = _round_to_bfloat16(audio / (peak + np.float32(1e-6)))
        return _round_to_bfloat16((audio[:, 0] + audio[:, 1]) * np.float32(0.5))
    if norm != "per_snippet":
        raise ValueError(f"unknown audio_norm {norm!r}; choose one of {', '.join(DataConfig.choices('audio_norm'))}")
    peak = float(np.abs(audio).max())
    audio = audio / peak if peak > 0 else audio
    return audio.mean(axis=1, dtype=np.float32)


def _round_to_bfloat16(values: np.ndarray) -> np.ndarray:
    """Round float32 to the nearest bfloat16 (ties to even), returned as float32."""
    bits = values.astype(np.float32).view(np.uint32)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return rounded.astype(np.uint32).view(np.float32)


class Audio(TokenInput):
    name, branch, feature, parameter, builtin = "audio", "exo", "audio", "audio_projector", True
    groups = ("audio",)
    datasets = (
        TakeDataset(layout.AUDIO_SNIPPETS, "audio", 3, 2, "[F, S, 2]"),
        TakeDataset(layout.AUDIO_WAVEFORM, None, 2, 2, "[S, 2]", frame_axis=False),
    )
    dropout_rank = 3

    def available_groups(self, take, sources):
        has_ego = any(source in vocab.EGO_SOURCES for source in sources)
        return [group for group in self.groups if has_ego and group in take]

    def prepare(self, config, state):
        from egoexor.data.audio import AudioCache

        state["audio_cache"] = AudioCache(config.audio_cache, config.audio_norm) if config.audio_cache else None

    def fields(self, config):
        """The snippets only for the CLAP encoder: a cache holds their embeddings already."""
        return set() if config.audio_cache or config.audio_encoder is None else {"audio"}

    def batching(self):
        return {"audio": OptionalVector(mask="audio_mask")}

    def item(self, point, views, kept, context):
        if not kept:
            return {"audio": None}
        cache = context.state.get("audio_cache")
        embedding = cache.embedding(context.sample) if cache is not None else None
        snippet, config = point.arrays.get("audio"), context.config
        if embedding is None and snippet is not None and config.audio_encoder is not None:
            if "audio_embedder" not in context.state:
                from egoexor.data.audio import ClapAudioEmbedder

                context.state["audio_embedder"] = ClapAudioEmbedder(config.audio_encoder, config.audio_norm)
            embedding = context.state["audio_embedder"]([snippet])[0]
        if embedding is None:
            return {"audio": None}
        import torch

        return {"audio": torch.from_numpy(np.asarray(embedding, np.float32))}

    def build_encoder(self, config, hidden):
        from torch import nn

        return nn.Linear(config.audio_dim, hidden)

    def tokens(self, encoder, inputs, views, view_mask, config):
        audio, present = inputs.get("audio"), inputs.get("audio_mask")
        if present is None or not bool(present.any()):
            return None
        return encoder(audio.to(views.dtype))[:, None], present[:, None]

    has_panel = True

    def panel(self, axes, present):
        return AudioPanel(axes, present)


#: Outline of the frame's own span on the spectrogram in ``viz frame``: pure cyan is not in its colour map.
FRAME_MARK_COLOUR = "#00ffff"


def spectrogram(audio: np.ndarray) -> np.ndarray:
    """Power (dB) of the channels' mean over [frequency, time]: Hann windows of about sqrt(2 x samples)
    samples (a power of two), half overlapping, so time and frequency get similar resolution."""
    signal = np.nan_to_num(np.asarray(audio, dtype=np.float64)).mean(axis=1)
    window = int(2 ** np.clip(round(math.log2(math.sqrt(2 * max(len(signal), 1)))), 4, 12))
    signal = np.pad(signal, (0, max(window - len(signal), 0)))
    frames = np.lib.stride_tricks.sliding_window_view(signal, window)[:: window // 2] * np.hanning(window)
    return 10 * np.log10(np.abs(np.fft.rfft(frames, axis=1)).T ** 2 + 1e-12)


class AudioPanel:
    """``viz frame``'s audio panel: the snippet's spectrogram, the frame's own 1/15 s outlined (a snippet starts
    at its frame and holds the sound of the next second)."""

    def __init__(self, axes, present: bool) -> None:
        from egoexor.viz.timepoint import FONT, message

        self.axes, self.image = axes, None
        if not present:
            axes.set_title("audio", fontsize=FONT)
            message(axes, "no audio")
            return
        axes.set_title("audio snippet: spectrogram, outlined: this frame", fontsize=FONT)
        self.image = axes.imshow(np.zeros((2, 2)), origin="lower", aspect="auto", cmap="magma")
        axes.axvspan(0, 1 / layout.FPS, facecolor="none", edgecolor=FRAME_MARK_COLOUR, linewidth=2.5, zorder=3)
        axes.set_xlabel("time from the frame (s)")
        axes.set_ylabel("kHz")

    def update(self, point) -> None:
        snippet = point.arrays.get("audio")
        if self.image is None or snippet is None:
            return
        power = spectrogram(snippet)
        seconds = len(snippet) / layout.AUDIO_SAMPLE_RATE
        self.image.set_data(power)
        self.image.set_extent((0, seconds, 0, layout.AUDIO_SAMPLE_RATE / 2000))
        self.image.set_clim(power.max() - 80, power.max())
        self.axes.set_xlim(0, seconds)


register_modality(Audio())
