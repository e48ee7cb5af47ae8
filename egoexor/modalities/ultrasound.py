"""The ultrasound screen: a camera of the exo branch with a modality name of its own (see ``ego_frames``
for the camera rule). A sample lists ``ultrasound`` where its take has frames and the screen, unless the
sample generator's modality dropout draws it away (the reference drew for it).
"""

from __future__ import annotations

from egoexor import vocab
from egoexor.modalities import register_modality
from egoexor.modalities.base import Camera


class Ultrasound(Camera):
    name, branch, groups, builtin = "ultrasound", "exo", ("ultrasound",), True
    dropped_when_sampling = True

    def available_groups(self, take, sources):
        return list(self.groups) if vocab.ULTRASOUND_SOURCE in sources and "frames" in take else []


register_modality(Ultrasound())
