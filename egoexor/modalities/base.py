"""What an input kind is to egoexor: the classes a modality module subclasses, and the batching rules.

A modality module holds one subclass of :class:`Camera` (a kind of camera view: its frames go through CLIP)
or :class:`TokenInput` (an extra input: one encoder turns it into tokens of its branch), and everything
about that input: its names, its HDF5 datasets and their schema, which take groups a sample lists for it,
how its rows go with the views, its item keys and their batching, its encoder under the checkpoint's
parameter name, and the tokens the encoder gives. :mod:`egoexor.modalities` keeps them in a registry; the
reader, the sample writer, the Dataset, the collator, the fusion, ``drop_modalities`` and ``ablate``
iterate it.

This module loads without torch (the HDF5 side of ``egoexor.data`` uses the registry); the hooks that
make tensors import it when called.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    import h5py
    import torch
    from torch import Tensor, nn

    from egoexor.config import DataConfig, ModelConfig
    from egoexor.data.reader import Timepoint
    from egoexor.data.samples import Sample
    from egoexor.data.views import EgoView

Branch = Literal["ego", "exo"]


@dataclass(frozen=True)
class TakeDataset:
    """One dataset of a take that an input reads: its path in the take group and its schema.

    ``field``: the name :meth:`egoexor.data.reader.EgoExorReader.read` reads it under (None: not read per
    frame, like the whole-take audio waveform). ``rank`` and ``width`` (last axis, None: any) are checked by
    :func:`egoexor.data.layout.check_layout`, which also refuses an infinity where ``finite_or_nan``.
    """

    path: str
    field: str | None
    rank: int
    width: int | None
    shape: str
    frame_axis: bool = True
    finite_or_nan: bool = False


@dataclass
class InputContext:
    """What an input's :meth:`TokenInput.item` may use beside the frame: the data settings, the sample, and
    ``state``, a dict the Dataset keeps for its inputs (a loaded encoder, an open cache)."""

    config: DataConfig
    sample: Sample
    state: dict[str, Any] = field(default_factory=dict)


class Modality:
    """An input kind. Subclasses set the class attributes; :class:`Camera` and :class:`TokenInput` say more."""

    #: The name in ``drop_modalities``, ``ablate --modalities`` and the docs.
    name: str
    #: The branch it belongs to.
    branch: Branch
    #: The names a sample's ``available_modalities`` lists for it (the take groups it reads), in order.
    groups: tuple[str, ...] = ()
    #: The take datasets it reads (checked by ``check_layout``).
    datasets: tuple[TakeDataset, ...] = ()
    #: ``make_samples``' ``modality_dropout_prob`` draws for each of its groups (the reference's rule).
    dropped_when_sampling: bool = True
    #: Whether the input is part of this package (a plug-in's is not: its data stays out of existing runs).
    builtin: bool = False

    def available_groups(self, take: h5py.Group, sources: Sequence[str]) -> list[str]:
        """The groups of :attr:`groups` a take holds for this input (``make_samples``; default: those in the
        take group when the take has a camera of the input's branch)."""
        from egoexor import vocab

        names = vocab.EGO_SOURCES if self.branch == "ego" else vocab.EXO_SOURCES
        if not any(source in names for source in sources):
            return []
        return [group for group in self.groups if group in take]

    #: ``viz frame`` gives it a panel of its own in the bottom row, beside the scene graph (:meth:`panel`).
    has_panel: bool = False

    def view_marks(self, axes: Any) -> Any | None:
        """What it draws on each ego camera panel of ``viz frame``: an object with ``update(point, source)`` and
        ``legend()`` (its legend entries); None: nothing."""
        return None

    def panel(self, axes: Any, present: bool) -> Any:
        """Its own panel of ``viz frame`` (``has_panel``): an object with ``update(point)``; ``present``: the take
        has the input."""
        raise NotImplementedError

    def write_synthetic(
        self, take: h5py.Group, sources: Sequence[str], n_frames: int, rng: np.random.Generator
    ) -> None:
        """Write this input's datasets into a synthetic take (``egoexor.data.synthetic``); the built-in inputs'
        writers are the synthetic profiles' own (their signals tie the inputs together)."""


class Camera(Modality):
    """A kind of camera view of a branch. Which cameras form the views is ``egoexor.data.views``'s rule (the
    reference's, with its camera ranges); ``drop_modalities`` blanks the kind's views."""

    dropped_when_sampling = False


class TokenInput(Modality):
    """An extra input: read per frame, turned into item tensors, batched, and encoded into tokens of its branch.

    ``builtin`` inputs are in the default ``ModelConfig.features``; a plug-in's input is used where a
    configuration names its :attr:`feature`.
    """

    #: Its name in ``ModelConfig.features`` (a checkpoint's configuration records these).
    feature: str
    #: The fusion module's attribute holding its encoder: checkpoint keys read ``image_pooler.<parameter>.*``.
    parameter: str
    #: Modality dropout (``modality_dropout``) may remove it; its draw comes after those of lower rank
    #: (the reference drew gaze, hands, point cloud, audio), plug-ins' after the built-ins' in registry order.
    dropout_rank: int | None = None
    #: Its encoder is built (its random weights drawn) before the others': a frozen random encoder is not
    #: saved in a checkpoint but rebuilt from ``init_seed``, so it must not depend on which other inputs are used.
    built_first: bool = False

    def prepare(self, config: DataConfig, state: dict[str, Any]) -> None:
        """Set up what :meth:`item` keeps in the Dataset's ``state`` (once per Dataset; default: nothing)."""

    def fields(self, config: DataConfig) -> set[str]:
        """The reader fields a kept input needs read."""
        return {dataset.field for dataset in self.datasets if dataset.field is not None}

    def batching(self) -> dict[str, Batching]:
        """Item key -> how the collator batches it (:class:`ViewStack`, :class:`OptionalVector`, :class:`PointSets`)."""
        raise NotImplementedError

    def batch_keys(self) -> set[str]:
        """Every batch key its item keys become (values, masks, indices)."""
        return {name for key, rule in self.batching().items() for name in (key, *rule.extra_keys())}

    def item(
        self, point: Timepoint, views: Sequence[EgoView] | Sequence[int], kept: bool, context: InputContext
    ) -> dict[str, Tensor | None]:
        """The item's tensors for one sample: ``views`` are the branch's (``EgoView`` s or exo camera indices);
        ``kept`` is False where the sample lacks the input or the branch has no view (the keys are still given)."""
        raise NotImplementedError

    def build_encoder(self, config: ModelConfig, hidden: int) -> nn.Module:
        """Its encoder, ``hidden`` being the fusion width."""
        raise NotImplementedError

    def tokens(
        self, encoder: nn.Module, inputs: dict[str, Tensor], views: Tensor, view_mask: Tensor, config: ModelConfig
    ) -> tuple[Tensor, Tensor] | None:
        """Its tokens for the fusion encoder, ``([B, k, D], attended mask [B, k])``, from the batch ``inputs``
        (None: no token this batch). ``views`` are the branch's [B, V, P, D] view tokens."""
        raise NotImplementedError


class PerViewInput(TokenInput):
    """An ego input with one row per device: each ego view's row goes through an MLP into one token per view slot.

    Subclasses set :attr:`width`, :attr:`key`, :attr:`mask_key` and :meth:`rows`.
    """

    branch: Branch = "ego"
    #: Values per row after :meth:`rows`.
    width: int
    #: The item / batch keys of the values [V, width] and of the mask [V] of views with a row.
    key: str
    mask_key: str

    def rows(self, point: Timepoint, views: Sequence[EgoView], config: DataConfig) -> list[np.ndarray | None]:
        """The row of each view, scaled as the encoder reads it; None where the view has none."""
        raise NotImplementedError

    def batching(self) -> dict[str, Batching]:
        return {self.key: ViewStack(), self.mask_key: ViewStack()}

    def item(self, point, views, kept, context):
        rows = self.rows(point, views, context.config) if kept else [None] * len(views)
        values, mask = per_view(rows, self.width)
        return {self.key: values, self.mask_key: mask}

    def build_encoder(self, config, hidden):
        from egoexor.model.encoders import MLPEncoder

        return MLPEncoder(self.width, hidden, config.encoder_hidden)

    def tokens(self, encoder, inputs, views, view_mask, config):
        rows, present = inputs.get(self.key), inputs.get(self.mask_key)
        if present is None or not bool(present.any()):
            return None
        padding = ~view_mask[..., None]  # view slots beyond a sample's views
        return encoder(rows.to(views.dtype)).masked_fill(padding, 0), present


def row_by_source(rows: np.ndarray | None, source_id: int | None) -> int | None:
    """The index of the first row whose first value is the device id ``source_id`` (None: no such row)."""
    if rows is None or source_id is None:
        return None
    matches = np.flatnonzero(rows[:, 0] == source_id)
    return int(matches[0]) if len(matches) else None


def per_view(rows: list[np.ndarray | None], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[V, width] values, zero where a view has no row, and the [V] mask of views with one."""
    import torch

    values, mask = torch.zeros(len(rows), width), torch.zeros(len(rows), dtype=torch.bool)
    for view, row in enumerate(rows):
        if row is not None:
            values[view], mask[view] = torch.from_numpy(row), True
    return values, mask


@dataclass(frozen=True)
class ViewStack:
    """Per sample [V, ...] -> [B, V_max, ...], zeros past V; with ``mask``, also the [B, V_max] mask of real views."""

    mask: str | None = None

    def __call__(self, key: str, tensors: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        import torch

        most = max(len(t) for t in tensors)
        out = tensors[0].new_empty((len(tensors), most, *tensors[0].shape[1:]))
        mask = torch.zeros(len(tensors), most, dtype=torch.bool)
        for b, t in enumerate(tensors):
            out[b, : len(t)] = t
            out[b, len(t) :] = 0  # only the padding is zero-filled: image batches are large
            mask[b, : len(t)] = True
        return {key: out, self.mask: mask} if self.mask else {key: out}

    def extra_keys(self) -> tuple[str, ...]:
        return (self.mask,) if self.mask else ()


@dataclass(frozen=True)
class OptionalVector:
    """Per sample [D] or None -> [B, D] (D = 0 when no sample has one), zeros for None, and the [B] ``mask``."""

    mask: str

    def __call__(self, key: str, vectors: list[torch.Tensor | None]) -> dict[str, torch.Tensor]:
        import torch

        dim = next((len(v) for v in vectors if v is not None), 0)
        return {
            key: torch.stack([v if v is not None else torch.zeros(dim) for v in vectors]),
            self.mask: torch.tensor([v is not None for v in vectors]),
        }

    def extra_keys(self) -> tuple[str, ...]:
        return (self.mask,)


@dataclass(frozen=True)
class PointSets:
    """Per sample [N, width] or None -> every sample's rows concatenated [P, width], the [P] sample
    ``index`` of each row, and the [B] ``mask`` of samples with rows."""

    mask: str
    index: str
    width: int

    def __call__(self, key: str, sets: list[torch.Tensor | None]) -> dict[str, torch.Tensor]:
        import torch

        present = [s for s in sets if s is not None]
        index = [torch.full((len(s),), b, dtype=torch.long) for b, s in enumerate(sets) if s is not None]
        return {
            key: torch.cat(present) if present else torch.zeros(0, self.width),
            self.index: torch.cat(index) if present else torch.zeros(0, dtype=torch.long),
            self.mask: torch.tensor([s is not None for s in sets]),
        }

    def extra_keys(self) -> tuple[str, ...]:
        return (self.index, self.mask)


Batching = ViewStack | OptionalVector | PointSets
