"""Pictures of the data and of a model's errors: ``python -m egoexor.viz frame|take|errors``.

:mod:`.timepoint` draws one timepoint (every view, gaze, hands, point cloud, audio, scene graph),
:mod:`.graph` the scene graph with each edge's status against a prediction, :mod:`.video` a take as
an MP4, :mod:`.errors` an evaluation as a static HTML page. Nothing here imports torch.
"""
