"""The docs are tests: every ```bash and ```python block of README.md and docs/*.md runs, exactly as written and in
the page's order, in a fresh temporary folder holding a copy of ``configs/`` (what the tutorial asks a user to
prepare), and must exit with status 0. A block a user cannot run here (the real dataset, the hub, a GPU) is
marked in the page by ``<!-- not-run: why -->`` on the line right before it; each marked block is listed as a
skipped test carrying that reason, so the list is in every test report."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Every page: its unmarked blocks run, each page in its own folder, in page order.
PAGES = ("README.md", *sorted(str(path.relative_to(ROOT)) for path in (ROOT / "docs").glob("*.md")))
#: Languages of the blocks a user runs; other fences (file layouts, output) are text.
LANGUAGES = ("bash", "python")
_FENCE = re.compile(r"^```(\w*)\s*$")
_MARKER = re.compile(r"^<!--\s*not-run:\s*(.*?)\s*-->\s*$")
#: Seconds one block may take (the tutorial's longest, training + inference, takes about 20 s on 2 cores).
_BLOCK_TIMEOUT = 300


@dataclass(frozen=True)
class Block:
    page: str
    line: int  # of the opening fence, 1-based
    language: str
    text: str
    not_run: str | None  # the marker's reason

    @property
    def name(self) -> str:
        return f"{self.page}:{self.line}"


def blocks(page: str) -> list[Block]:
    """The ```bash and ```python blocks of ``page`` (relative to the repository) with their not-run reasons."""
    lines = (ROOT / page).read_text().splitlines()
    found, index = [], 0
    while index < len(lines):
        fence = _FENCE.match(lines[index])
        if fence is None:
            index += 1
            continue
        end = next((i for i in range(index + 1, len(lines)) if lines[i].startswith("```")), None)
        assert end is not None, f"{page}:{index + 1}: a code block that is never closed"
        marker = _MARKER.match(lines[index - 1]) if index else None
        if fence.group(1) in LANGUAGES:
            text = "\n".join(lines[index + 1 : end]) + "\n"
            found.append(Block(page, index + 1, fence.group(1), text, marker and marker.group(1)))
        index = end + 1
    return found


def run_block(block: Block, folder: Path) -> subprocess.CompletedProcess:
    bin_dir = str(Path(sys.executable).parent)  # the console scripts (egoexor-merge-h5 ...) of this environment
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "PWD": str(folder),
        "HF_HUB_OFFLINE": "1",
        "MPLBACKEND": "Agg",
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
    }
    if block.language == "bash":
        argv = ["bash", "-e", "-o", "pipefail", "-c", block.text]
    else:
        argv = [sys.executable, "-c", block.text]
    return subprocess.run(
        argv, cwd=folder, env=env, capture_output=True, text=True, timeout=_BLOCK_TIMEOUT, check=False
    )


_MARKED = [block for page in PAGES for block in blocks(page) if block.not_run]
#: The pages with a block to run.
_RUN_PAGES = [page for page in PAGES if any(not block.not_run for block in blocks(page))]


def test_blocks_are_found_with_their_markers(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "text\n```bash\necho one\n```\n<!-- not-run: needs the real dataset -->\n```python\nprint(2)\n```\n"
        "```\nlayout, not a command\n```\n<!-- not-run: too far -->\n\n```bash\necho three\n```\n"
    )
    found = blocks(str(page))  # an absolute path: ROOT / page is page
    assert [(b.line, b.language, b.text, b.not_run) for b in found] == [
        (2, "bash", "echo one\n", None),
        (6, "python", "print(2)\n", "needs the real dataset"),
        (14, "bash", "echo three\n", None),  # a marker counts only on the line right before the fence
    ]


def test_the_pages_that_run_are_those_with_commands_to_try():
    """The tutorial and README have blocks that run; a page cannot drop out by marking them all."""
    assert _RUN_PAGES == ["README.md", "docs/tutorial.md"]


def test_a_failing_block_fails(tmp_path):
    """The check of a block's status can fail: a bash block stops at its first failing command."""
    block = Block("page.md", 1, "bash", "false\necho not reached\n", None)
    result = run_block(block, tmp_path)
    assert result.returncode != 0 and "not reached" not in result.stdout


@pytest.mark.parametrize("block", _MARKED, ids=[block.name for block in _MARKED])
def test_marked_blocks(block):
    """Each block a page marks as not runnable, listed with the page's reason."""
    assert block.not_run.strip(), f"{block.name}: a not-run marker needs a reason"
    pytest.skip(f"{block.name} not run: {block.not_run}")


@pytest.mark.slow
@pytest.mark.parametrize("page", _RUN_PAGES)
def test_page_runs_as_written(page, tmp_path):
    """Every unmarked block of the page, in order, in one fresh folder: exit status 0."""
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    runnable = [block for block in blocks(page) if not block.not_run]
    for block in runnable:
        result = run_block(block, tmp_path)
        assert result.returncode == 0, (
            f"{block.name} ({block.language}) exited with {result.returncode}:\n{block.text}\n"
            f"--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-3000:]}"
        )
