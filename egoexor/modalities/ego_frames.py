"""Ego frames: the smart glasses' cameras, the ego branch's views (CLIP patch tokens).

Which cameras become a sample's views is ``egoexor.data.views``'s rule, shared by the three camera kinds
(``ego_frames``, ``exo_frames``, ``ultrasound``), with the reference's camera ranges; ``drop_modalities``
blanks the kind's views (``egoexor.data.processor``). A sample lists ``ego_frames`` where its take has
frames and an ego device.
"""

from __future__ import annotations

from egoexor import vocab
from egoexor.modalities import register_modality
from egoexor.modalities.base import Camera


class EgoFrames(Camera):
    name, branch, groups, builtin = "ego_frames", "ego", ("ego_frames",), True

    def available_groups(self, take, sources):
        has_ego = any(source in vocab.EGO_SOURCES for source in sources)
        return list(self.groups) if has_ego and "frames" in take else []


register_modality(EgoFrames())
