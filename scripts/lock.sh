#!/usr/bin/env bash
# Re-resolve the lock files from pyproject.toml's ranges (run after changing a dependency, or to move the
# tested set forward; then run the suite on it: README, "Reproducible installs").
#
#   requirements/cpu-lock.txt   every package of `pip install -e ".[dev]"` at one version, for Python 3.10+
#                               on every platform (uv's universal resolution); torch at the release CI
#                               installs first. README's commands and .ci/run install with it as constraints.
#   requirements/gpu-lock.txt   the same plus the [gpu] extra (flash-attn, DeepSpeed, wandb) and PyPI's CUDA
#                               build of torch, for Linux x86_64 and Python 3.11, agreeing with the CPU lock
#                               on every package they share.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH=2.13.0          # the release .ci/run and README install first (a CPU wheel on CI's machine)
FLASH_ATTN=2.8.3.post2 DEEPSPEED=0.19.8   # requirements/gpu-metadata.toml declares their requirements
python -m pip install --quiet "uv==0.13.9"
header=(--custom-compile-command "scripts/lock.sh" --quiet)
python -m uv pip compile pyproject.toml --extra dev --universal --python-version 3.10 \
    --constraint <(echo "torch==$TORCH") "${header[@]}" -o requirements/cpu-lock.txt
python -m uv pip compile pyproject.toml --extra dev --extra gpu --python-version 3.11 \
    --python-platform x86_64-manylinux_2_28 --config-file requirements/gpu-metadata.toml \
    --constraint requirements/cpu-lock.txt \
    --constraint <(printf 'torch==%s\nflash-attn==%s\ndeepspeed==%s\n' "$TORCH" "$FLASH_ATTN" "$DEEPSPEED") \
    "${header[@]}" -o requirements/gpu-lock.txt
echo "wrote requirements/cpu-lock.txt ($(grep -c '^[a-z]' requirements/cpu-lock.txt) pins)," \
    "requirements/gpu-lock.txt ($(grep -c '^[a-z]' requirements/gpu-lock.txt) pins)"
