#!/usr/bin/env bash
# The newest versions pyproject.toml allows, without the lock, in a fresh virtual environment, then README's
# test command there: how we learn that a library release broke something before a user does. When it
# passes, scripts/lock.sh moves the lock to that set (README, "Reproducible installs").
#
#   scripts/test_newest.sh [VENV]     (default: a new temporary folder)
#
# torch stays at the release the lock names (TORCH=... to try another): PyPI's newest Linux wheel is a CUDA
# build of several GB, and CI's machine has only that release's CPU wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-$(mktemp -d)/venv}
python -m venv "$venv"
py="$venv/bin/python"
"$py" -m pip install --quiet --upgrade pip
torch="torch==${TORCH:-2.13.0}"
"$py" -m pip install --quiet "$torch"
# named again here, or the eager upgrade would take torch to the newest release too
"$py" -m pip install --quiet --upgrade --upgrade-strategy eager -e ".[dev]" "$torch"
date -u +"newest versions resolved on %Y-%m-%d:"
"$py" -m egoexor env || true   # prints how the set differs from the lock; the suite decides
export PATH="$venv/bin:$PATH"
ruff check . && ruff format --check . && python -m pytest -q -p no:cacheprovider
