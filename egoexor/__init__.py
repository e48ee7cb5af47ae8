"""egoexor: a clean reimplementation of the EgoExOR dual-branch scene-graph-generation baseline."""

__version__ = "0.1.0"
