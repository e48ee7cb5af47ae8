"""python -m egoexor env, the lock files, and the `egoexor` command."""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from egoexor import __main__ as egoexor_main
from egoexor import env

ROOT = Path(__file__).resolve().parents[1]
CPU_LOCK = ROOT / "requirements" / "cpu-lock.txt"
GPU_LOCK = ROOT / "requirements" / "gpu-lock.txt"


def test_a_universal_lock_gives_the_pin_whose_markers_fit_this_interpreter(tmp_path):
    lock = tmp_path / "lock.txt"
    lock.write_text(
        "# header\n"
        "numpy==1.0.0 ; python_full_version < '3.0'\n"
        "numpy==2.4.6 ; python_full_version >= '3.0'\n"
        "    # via egoexor\n"
        "colorama==0.4.6 ; sys_platform == 'no-such-platform'\n"
        "Typing_Extensions==4.0\n"
    )
    assert env.read_lock(lock) == {"numpy": "2.4.6", "typing-extensions": "4.0"}


def test_the_comparison_finds_a_different_version_an_absent_package_and_accepts_a_local_build_label(tmp_path):
    numpy = importlib.metadata.version("numpy")
    torch = Version(importlib.metadata.version("torch")).public  # '2.13.0' also for an installed '2.13.0+cpu'
    lock = tmp_path / "lock.txt"
    lock.write_text(f"numpy=={numpy}\ntorch=={torch}\nh5py==0.0.1\nno-such-package==1.0\n")
    comparison = env.compare_with_lock(lock)
    assert comparison.same == ("numpy", "torch")
    assert comparison.differ == (("h5py", importlib.metadata.version("h5py"), "0.0.1"),)
    assert comparison.absent == ("no-such-package",)
    assert "DIFFERS: h5py" in comparison.summary()


def run_env(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "egoexor", "env", *args], capture_output=True, text=True, cwd=ROOT)


def test_env_check_exits_1_on_a_drifted_install_and_0_where_it_matches(tmp_path):
    numpy = importlib.metadata.version("numpy")
    drifted, matching = tmp_path / "drifted.txt", tmp_path / "matching.txt"
    drifted.write_text("numpy==0.0.1\n")
    matching.write_text(f"numpy=={numpy}\n")
    process = run_env("--lock", str(drifted), "--check")
    assert process.returncode == 1, process.stderr
    assert f"lock: {drifted}: DIFFERS: numpy {numpy} (locked 0.0.1)" in process.stdout
    for name in ("python", "torch", "transformers", "peft", "bitsandbytes", "accelerate", "flash-attn", "deepspeed"):
        assert f"\n{name}: " in f"\n{process.stdout}"
    assert "GPUs: " in process.stdout
    process = run_env("--lock", str(matching), "--check")
    assert process.returncode == 0 and f"lock: {matching}: matches (1 packages" in process.stdout


@pytest.mark.parametrize(
    ("content", "says"),
    [("numpy>=1.0\n", "pins no single version"), ("numpy==1.0 ; nonsense\n", "line 1:"), (None, "no such file")],
)
def test_a_bad_lock_file_is_one_line(tmp_path, capsys, content, says):
    lock = tmp_path / "lock.txt"
    if content is not None:
        lock.write_text(content)
    assert env.main(["--lock", str(lock)]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [err.strip()] and says in err
    assert err.startswith(f"egoexor.env: error: --lock {lock}")


def _pyproject_requirements() -> list[Requirement]:
    """pyproject.toml's dependencies and its dev extra, as the installed egoexor declares them."""
    requirements = [Requirement(text) for text in importlib.metadata.requires("egoexor")]
    return [r for r in requirements if r.marker is None or r.marker.evaluate({"extra": "dev"})]


@pytest.mark.parametrize("lock", [CPU_LOCK, GPU_LOCK], ids=["cpu", "gpu"])
def test_the_locks_pin_every_dependency_of_pyproject_within_its_range(lock):
    """Fails when a dependency is added or its range moved without running scripts/lock.sh."""
    pins: dict[str, list[str]] = {}
    for line in lock.read_text().splitlines():
        if line and line[0] not in " #":
            requirement = Requirement(line)
            pins.setdefault(canonicalize_name(requirement.name), []).append(next(iter(requirement.specifier)).version)
    for requirement in _pyproject_requirements():
        versions = pins.get(canonicalize_name(requirement.name))
        assert versions, f"{lock.name} lacks {requirement.name}: run scripts/lock.sh"
        assert all(requirement.specifier.contains(v) for v in versions), (lock.name, requirement, versions)


def test_the_gpu_lock_agrees_with_the_cpu_lock_on_every_package_they_share():
    linux_311 = {"python_full_version": "3.11.7", "python_version": "3.11", "sys_platform": "linux"}
    linux_311 |= {"platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython"}
    cpu, gpu = env.read_lock(CPU_LOCK, linux_311), env.read_lock(GPU_LOCK, linux_311)
    shared = set(cpu) & set(gpu)
    assert len(shared) > 50 and {"torch", "transformers", "peft", "bitsandbytes", "accelerate"} <= shared
    assert {name: gpu[name] for name in shared} == {name: cpu[name] for name in shared}
    assert {"flash-attn", "deepspeed", "wandb"} <= set(gpu) - set(cpu)


def test_every_subcommand_of_egoexor_runs_its_module_main():
    for name, (module, _) in egoexor_main.SUBCOMMANDS.items():
        assert callable(importlib.import_module(module).main), name
        assert f"  {name} " in egoexor_main.usage()


def test_egoexor_help_version_and_an_unknown_subcommand(capsys):
    assert egoexor_main.main(["--version"]) == 0
    assert capsys.readouterr().out == f"egoexor {env.installed_version('egoexor')}\n"
    assert egoexor_main.main(["trian"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [err.strip()] and err.startswith("egoexor: error: unknown subcommand 'trian'")


#: What ``egoexor SUBCOMMAND --help`` must not import: each takes seconds (torch pulls in peft, bitsandbytes ...).
HEAVY = {"torch", "transformers"}


def help_imports(name: str, cache: Path) -> tuple[subprocess.CompletedProcess, set[str]]:
    """``egoexor NAME --help`` in a fresh interpreter, and which of :data:`HEAVY` it imported (``-X importtime``
    lists every module a process imports on stderr, one ``import time: self | cumulative | name`` line each)."""
    env = {**os.environ, "XDG_CACHE_HOME": str(cache), "COLUMNS": "100"}
    argv = [sys.executable, "-X", "importtime", "-m", "egoexor", name, "--help"]
    process = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, env=env, check=False)
    names = {line.rsplit("|", 1)[-1].strip() for line in process.stderr.splitlines() if line.startswith("import time:")}
    return process, names & HEAVY


@pytest.mark.parametrize("name", list(egoexor_main.SUBCOMMANDS))
def test_help_of_every_subcommand_imports_neither_torch_nor_transformers(name, tmp_path):
    """--help prints at once: the heavy libraries load where a command runs, not when its parser is built.
    train's help lists transformers' TrainingArguments, so its first call builds the text (importing them:
    the check sees what it looks for) and keeps it in the cache folder for the next calls."""
    if name == "train":
        built, imported = help_imports(name, tmp_path)
        assert built.returncode == 0 and imported == HEAVY, built.stderr[-2000:]
    process, imported = help_imports(name, tmp_path)
    assert process.returncode == 0 and process.stdout.startswith("usage: "), process.stderr[-2000:]
    assert imported == set(), f"egoexor {name} --help imported {sorted(imported)}"
    if name == "train":
        assert process.stdout == built.stdout and "--learning_rate" in process.stdout
