"""The registry of input kinds: one module per kind, and plug-ins from other packages.

Built in, in registry order (the order of a branch's extra tokens and of ``make_samples``' draws):
``ego_frames``, ``gaze``, ``hands``, ``audio`` (ego-side availability, exo-branch token: the reference's),
``exo_frames``, ``ultrasound``, ``point_cloud``. A package adds a kind by subclassing
:class:`~egoexor.modalities.base.TokenInput` (or ``PerViewInput``) and either calling
:func:`register_modality` when it is imported, or naming the instance in the entry-point group
``egoexor.modalities`` of its metadata, which every egoexor process loads on first use of the registry::

    [project.entry-points."egoexor.modalities"]
    imu = "my_lab_inputs.imu:IMU"

``docs/architecture.md`` ("Adding a modality") walks through such a plug-in.
"""

from __future__ import annotations

import importlib.metadata

from egoexor.modalities.base import Camera, Modality, TokenInput

ENTRY_POINT_GROUP = "egoexor.modalities"
_BUILTIN_MODULES = ("ego_frames", "gaze", "hands", "audio", "exo_frames", "ultrasound", "point_cloud")

_registry: dict[str, Modality] = {}
_loaded = False


class ModalityError(ValueError):
    """A modality cannot be registered (a name, group, key or parameter taken), or a plug-in failed to load."""


def register_modality(modality: Modality) -> Modality:
    """Add an input kind to the registry (after those there); returns it, so it can decorate an instance's class.

    Refuses a name, sample group, item key or fusion parameter another kind has: each must mean one input.
    """
    if isinstance(modality, type):
        modality = modality()
    if not isinstance(modality, Modality):
        raise ModalityError(f"{modality!r} is not an egoexor.modalities.base.Modality")
    if modality.branch not in ("ego", "exo"):
        raise ModalityError(f"modality {modality.name!r}: branch must be 'ego' or 'exo', got {modality.branch!r}")
    if modality.name in _registry:
        if type(_registry[modality.name]) is type(modality):
            return _registry[modality.name]  # the same plug-in imported twice
        raise ModalityError(f"modality {modality.name!r} is registered already ({type(_registry[modality.name])})")
    taken = _taken_names()
    for kind, names in _claims(modality).items():
        for name in names:
            if name in taken[kind]:
                raise ModalityError(f"modality {modality.name!r}: {kind} {name!r} belongs to {taken[kind][name]!r}")
    _registry[modality.name] = modality
    return modality


def _claims(modality: Modality) -> dict[str, list[str]]:
    claims = {"sample group": list(modality.groups), "dataset": [d.path for d in modality.datasets]}
    if isinstance(modality, TokenInput):
        claims.update(
            {"item key": list(modality.batching()), "feature": [modality.feature], "parameter": [modality.parameter]}
        )
    return claims


def _taken_names() -> dict[str, dict[str, str]]:
    taken: dict[str, dict[str, str]] = {
        kind: {} for kind in ("sample group", "dataset", "item key", "feature", "parameter")
    }
    for other in _registry.values():
        for kind, names in _claims(other).items():
            taken[kind].update(dict.fromkeys(names, other.name))
    return taken


def _load() -> None:
    """The built-in modules, then every installed plug-in's entry point (once per process)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in _BUILTIN_MODULES:
        importlib.import_module(f"{__name__}.{module}")
    # the built-ins in their fixed order whatever imported one of them first, then what was registered before
    modules = [f"{__name__}.{module}" for module in _BUILTIN_MODULES]
    order = {
        name: modules.index(type(m).__module__) if type(m).__module__ in modules else len(modules)
        for name, m in _registry.items()
    }
    ordered = sorted(_registry, key=order.__getitem__)
    _registry.update({name: _registry.pop(name) for name in ordered})
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            loaded = entry.load()
        except Exception as error:
            raise ModalityError(f"modality plug-in {entry.name!r} ({entry.value}) failed to load: {error}") from error
        if not isinstance(loaded, type(importlib)):  # a module registers its kinds itself
            register_modality(loaded)


def modalities() -> tuple[Modality, ...]:
    """Every registered input kind, in registry order."""
    _load()
    return tuple(_registry.values())


def modality(name: str) -> Modality:
    """The input kind of that name; a clear error naming the known ones otherwise."""
    known = {m.name: m for m in modalities()}
    if name not in known:
        raise ModalityError(f"unknown modality {name!r}; registered: {', '.join(known)}")
    return known[name]


def token_inputs(branch: str | None = None) -> tuple[TokenInput, ...]:
    """The extra inputs (of one branch), in registry order."""
    return tuple(m for m in modalities() if isinstance(m, TokenInput) and branch in (None, m.branch))


def cameras() -> tuple[Camera, ...]:
    return tuple(m for m in modalities() if isinstance(m, Camera))


def camera_kinds(branch: str) -> tuple[str, ...]:
    """The camera kinds of a branch; a view's kind in a batch (``<branch>_view_kinds``) is an index into it."""
    return tuple(m.name for m in cameras() if m.branch == branch)


def default_features() -> tuple[str, ...]:
    """``ModelConfig.features`` by default: the built-in extra inputs (a plug-in's is named where used)."""
    return tuple(m.feature for m in token_inputs() if m.builtin)


def features() -> tuple[str, ...]:
    return tuple(m.feature for m in token_inputs())


def droppable() -> tuple[str, ...]:
    """What ``drop_modalities`` can remove: every input kind, then the two branches."""
    return (*(m.name for m in modalities()), "ego", "exo")


def sample_groups() -> tuple[str, ...]:
    """Every name a sample's ``available_modalities`` may list, in the order records write them."""
    return tuple(group for m in modalities() for group in m.groups)


def dropout_order() -> tuple[TokenInput, ...]:
    """The inputs modality dropout may remove, in the order of its draws."""
    ranked = [m for m in token_inputs() if m.dropout_rank is not None]
    return tuple(sorted(ranked, key=lambda m: m.dropout_rank))
