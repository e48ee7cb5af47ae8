"""python -m egoexor env: the installed stack, the GPUs, and whether the installed set is the locked one.

What a bug report needs (README asks for this output): the versions of Python and of the libraries whose
behaviour moves the numbers, torch's CUDA and cuDNN, each GPU's name and memory, and a comparison of every
installed package with the lock file the numbers were measured with (``requirements/cpu-lock.txt``, or
``gpu-lock.txt`` when flash-attn or DeepSpeed is installed). ``--check`` exits with status 1 when an installed
package differs from the lock (.ci/run uses it: CI tests exactly the locked set).
"""

from __future__ import annotations

import importlib.metadata
import platform
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from egoexor import cli

COMMAND = "egoexor.env"
#: The libraries a report names, in this order (distribution names).
LIBRARIES = (
    "egoexor",
    "torch",
    "transformers",
    "tokenizers",
    "peft",
    "bitsandbytes",
    "accelerate",
    "huggingface_hub",
    "kernels",
    "safetensors",
    "flash-attn",
    "deepspeed",
    "wandb",
    "h5py",
    "numpy",
)
#: The lock files of a source checkout (scripts/lock.sh writes them).
LOCKS = Path(__file__).resolve().parents[1] / "requirements"
GPU_EXTRAS = ("flash-attn", "deepspeed")


def installed_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def read_lock(path: Path, environment: dict[str, str] | None = None) -> dict[str, str]:
    """The lock's pins that apply to this interpreter and platform (or to the marker values ``environment``
    sets): canonical name -> version. A universal lock holds several lines for a package, each with the
    markers that select it."""
    pins = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line[0] in " #-":
            continue
        try:
            requirement = Requirement(line)
        except InvalidRequirement as error:
            raise cli.CommandError(f"--lock {path}: line {number}: {error}") from None
        pinned = [spec.version for spec in requirement.specifier if spec.operator == "=="]
        if len(pinned) != 1:
            raise cli.CommandError(f"--lock {path}: line {number}: {line.strip()!r} pins no single version")
        if requirement.marker is None or requirement.marker.evaluate(environment):
            pins[canonicalize_name(requirement.name)] = pinned[0]
    return pins


@dataclass(frozen=True)
class LockComparison:
    """Installed packages against a lock: those at the locked release, those at another, those absent."""

    lock: Path
    same: tuple[str, ...]
    differ: tuple[tuple[str, str, str], ...]  # (name, installed, locked)
    absent: tuple[str, ...]

    def summary(self) -> str:
        if self.differ:
            found = ", ".join(f"{name} {have} (locked {want})" for name, have, want in self.differ)
            return f"{self.lock}: DIFFERS: {found}"
        absent = f"; {len(self.absent)} locked packages not installed here" if self.absent else ""
        return f"{self.lock}: matches ({len(self.same)} packages at their locked versions{absent})"


def compare_with_lock(path: Path) -> LockComparison:
    """A local build label is the same release (torch 2.13.0+cpu is the locked 2.13.0)."""
    same, differ, absent = [], [], []
    for name, locked in sorted(read_lock(path).items()):
        have = installed_version(name)
        if have is None:
            absent.append(name)
        elif Version(have).public == Version(locked).public:
            same.append(name)
        else:
            differ.append((name, have, locked))
    return LockComparison(path, tuple(same), tuple(differ), tuple(absent))


def default_lock() -> Path:
    """The GPU lock where a GPU extra is installed, else the CPU lock."""
    gpu = any(installed_version(name) for name in GPU_EXTRAS)
    return LOCKS / ("gpu-lock.txt" if gpu else "cpu-lock.txt")


def _gpus() -> list[str]:
    import torch

    if not torch.cuda.is_available():
        return []
    gpus = []
    for index in range(torch.cuda.device_count()):
        properties = torch.cuda.get_device_properties(index)
        gpus.append(f"{index}: {properties.name}, {properties.total_memory / 2**30:.1f} GiB")
    return gpus


def _torch_build() -> str:
    import torch

    cuda = torch.version.cuda or "none"
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return f"CUDA {cuda}, cuDNN {cudnn or 'none'}"


def report(lock: Path | None) -> tuple[list[str], LockComparison | None]:
    """The report's lines and, where the lock file exists, the comparison."""
    lines = [f"python: {platform.python_version()} ({sys.platform}, {platform.machine()})"]
    for name in LIBRARIES:
        version = installed_version(name)
        extra = f" ({_torch_build()})" if name == "torch" and version else ""
        lines.append(f"{name}: {version or 'not installed'}{extra}")
    lines.append(f"GPUs: {'; '.join(_gpus()) or 'none'}")
    lock = lock or default_lock()
    comparison = compare_with_lock(lock) if lock.is_file() else None
    lines.append(f"lock: {comparison.summary() if comparison else f'{lock}: not found (pass --lock)'}")
    return lines, comparison


def _parser() -> cli.ArgumentParser:
    parser = cli.ArgumentParser(prog=f"python -m {COMMAND}", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--lock",
        type=Path,
        help="lock file to compare with (default: the checkout's CPU lock, or its GPU lock where flash-attn or "
        "DeepSpeed is installed)",
    )
    parser.add_argument("--check", action="store_true", help="exit with status 1 when the installed set differs")
    return parser


def _run(args) -> int:
    if args.lock is not None:
        cli.input_file(args.lock, "--lock")
    lines, comparison = report(args.lock)
    print("\n".join(lines))
    if args.check and (comparison is None or comparison.differ):
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run(COMMAND, lambda: _run(_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
