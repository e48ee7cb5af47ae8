"""The CPUs a process may use: its affinity capped by the cgroup quota (a fake ``cpu.max`` here)."""

import os

import pytest

from egoexor import cpus

AFFINITY = len(os.sched_getaffinity(0))


@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [
        ("100000 100000\n", 1),  # docker --cpus 1
        ("150000 100000\n", min(2, AFFINITY)),  # 1.5 CPUs: two threads may run, rounded up
        ("max 100000\n", AFFINITY),  # no quota
        (None, AFFINITY),  # no cgroup v2 file
        ("garbage\n", AFFINITY),
        (f"{AFFINITY * 1000000} 100000\n", AFFINITY),  # a quota above the affinity: the affinity
    ],
)
def test_available_cpus_is_the_affinity_capped_by_the_quota(tmp_path, cpu_max, expected):
    path = tmp_path / "cpu.max"
    if cpu_max is not None:
        path.write_text(cpu_max)
    assert cpus.available_cpus(path) == expected


def test_available_cpus_follows_the_affinity(tmp_path):
    before = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(before)})
        assert cpus.available_cpus(tmp_path / "none") == 1
    finally:
        os.sched_setaffinity(0, before)


@pytest.mark.parametrize(("available", "workers"), [(1, 0), (2, 1), (3, 2), (16, 4)])
def test_default_workers_leave_a_cpu_to_the_model(available, workers):
    assert cpus.default_workers(available) == workers


def test_infer_and_ablate_default_to_it():
    from egoexor import ablate, infer

    for parser in (infer._parser(), ablate._parser()):
        assert parser.get_default("num_workers") == cpus.default_workers()


def test_torch_threads_are_capped_unless_omp_num_threads_is_set(monkeypatch, tmp_path):
    import torch

    before = torch.get_num_threads()
    try:
        monkeypatch.setattr(cpus, "CGROUP_CPU_MAX", tmp_path / "cpu.max")
        (tmp_path / "cpu.max").write_text("100000 100000\n")
        torch.set_num_threads(2)
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        cpus.limit_torch_threads()
        assert torch.get_num_threads() == 2  # the user's choice stays
        monkeypatch.delenv("OMP_NUM_THREADS")
        cpus.limit_torch_threads()
        assert torch.get_num_threads() == 1  # the quota's one CPU
    finally:
        torch.set_num_threads(before)
