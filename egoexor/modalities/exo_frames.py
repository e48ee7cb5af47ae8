"""Exo frames: the room cameras (numbered external cameras, OR light, microscope, simulator screen), views
of the exo branch (see ``ego_frames`` for the camera rule). A sample lists ``exo_frames`` where its take has
frames and such a camera.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from egoexor.modalities import register_modality
from egoexor.modalities.base import Camera

_EXTERNAL = re.compile(r"external_[1-5]")
_OTHER_ROOM_CAMERAS = ("or_light", "microscope", "simstation")


def has_external_camera(sources: Sequence[str]) -> bool:
    """A take with a numbered room camera (the reference's ``external_[1-5]`` match)."""
    return any(_EXTERNAL.match(source) for source in sources)


class ExoFrames(Camera):
    name, branch, groups, builtin = "exo_frames", "exo", ("exo_frames",), True

    def available_groups(self, take, sources):
        has_exo = has_external_camera(sources) or any(source in _OTHER_ROOM_CAMERAS for source in sources)
        return list(self.groups) if has_exo and "frames" in take else []


register_modality(ExoFrames())
