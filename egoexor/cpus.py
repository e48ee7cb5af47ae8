"""How many CPUs this process may use, and the defaults derived from it (data-loading workers, torch threads).

The host's count (``os.cpu_count()``, and torch's default thread count, its physical cores) is not what a
process on a shared machine, a container or a SLURM allocation gets: its CPU affinity (``taskset``, SLURM's
``--cpus-per-task``) and its cgroup's quota (``/sys/fs/cgroup/cpu.max``, Docker's ``--cpus``, Kubernetes
limits) say that. Workers and threads beyond it only fight over the same cores.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
#: Data-loading workers beyond this gain nothing for the batch sizes egoexor's commands use.
MAX_WORKERS = 4


def _cgroup_quota(cpu_max: Path) -> int | None:
    """CPUs of the cgroup v2 quota ``"<quota> <period>"`` (rounded up), None without one (``max``, no file)."""
    try:
        fields = cpu_max.read_text().split()
    except OSError:
        return None
    if len(fields) != 2 or fields[0] == "max":
        return None
    try:
        quota, period = int(fields[0]), int(fields[1])
    except ValueError:
        return None
    return max(1, math.ceil(quota / period)) if quota > 0 and period > 0 else None


def available_cpus(cpu_max: Path | None = None) -> int:
    """The CPUs this process may run on: its affinity, capped by its cgroup's quota (``cpu_max``, default
    :data:`CGROUP_CPU_MAX`); at least 1."""
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no affinity call
        count = os.cpu_count() or 1
    quota = _cgroup_quota(cpu_max or CGROUP_CPU_MAX)
    return max(1, min(count, quota) if quota else count)


def default_workers(cpus: int | None = None) -> int:
    """Data-loading processes: one CPU stays with the model's process, at most :data:`MAX_WORKERS`."""
    return min(MAX_WORKERS, (available_cpus() if cpus is None else cpus) - 1)


def limit_torch_threads() -> None:
    """torch's intra-op threads no more than the available CPUs, unless ``OMP_NUM_THREADS`` chose them."""
    if "OMP_NUM_THREADS" in os.environ:
        return
    import torch

    torch.set_num_threads(min(torch.get_num_threads(), available_cpus()))
