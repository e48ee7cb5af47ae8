"""An IMU on each pair of smart glasses, added to egoexor from outside it: the worked example of
docs/architecture.md ("Adding a modality"). Nothing under ``egoexor/`` names it.

Data: ``imu/values`` [F, G, 7] per take, a row per ego device: its source id, acceleration (x, y, z, m/s²)
and angular rate (x, y, z, rad/s); NaN where the device gave no reading. Each ego view gets the row of its
device and one token from an MLP (``image_pooler.imu_encoder``). A configuration uses it by naming the
feature: ``--features gaze,hand,audio,point_cloud,imu``.

Installed, a package names the class in its metadata (``[project.entry-points."egoexor.modalities"]``
``imu = "egoexor_imu:IMU"``); the tests put this folder, with its ``.dist-info``, on ``PYTHONPATH``.
"""

import numpy as np

from egoexor import vocab
from egoexor.modalities.base import PerViewInput, TakeDataset, row_by_source

PATH = "imu/values"
#: Readings are divided by this before the encoder (about the largest value a head movement gives).
SCALE = np.float32(20.0)


class IMU(PerViewInput):
    name = feature = key = "imu"
    parameter, mask_key, width = "imu_encoder", "imu_mask", 6
    groups = ("imu",)
    datasets = (TakeDataset(PATH, "imu", rank=3, width=7, shape="[F, G, 7]", finite_or_nan=True),)
    dropout_rank = 10  # modality dropout draws for it after the built-in inputs

    def rows(self, point, ego, config):
        values = point.arrays.get("imu")
        if values is None:
            return [None] * len(ego)
        rows = [row_by_source(values, view.source_id) for view in ego]
        readings = np.nan_to_num(values[:, 1:] / SCALE, nan=0.0)
        return [None if row is None or np.isnan(values[row, 1:]).all() else readings[row] for row in rows]

    def write_synthetic(self, take, sources, n_frames, rng):
        devices = [source for source in sources if source in vocab.EGO_SOURCES]
        if not devices:
            return
        values = np.empty((n_frames, len(devices), 7), np.float32)
        values[:, :, 0] = [vocab.SOURCES[device] for device in devices]
        values[:, :, 1:] = rng.normal(0, 5, (n_frames, len(devices), 6))
        values[0, 0, 1:] = np.nan  # a device without a reading
        take.create_dataset(PATH, data=values)
