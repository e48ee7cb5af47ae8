"""``python -m egoexor.demo`` as a user sees it in one terminal (stdout and stderr in one pipe): its training
shows progress, and its last line names the folder it leaves, not the temporary one it wrote into."""

import re
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_demo_shows_progress_and_ends_with_its_folder(tmp_path):
    out = tmp_path / "outputs" / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "egoexor.demo", "--epochs", "1", "--out", str(out)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    lines = [line for line in result.stdout.replace("\r", "\n").splitlines() if line.strip()]
    start = next(i for i, line in enumerate(lines) if line.startswith("== training"))
    end = next(i for i, line in enumerate(lines) if line.startswith("== training") and "done in" in line)
    steps = {int(m.group(1)) for line in lines[start:end] if (m := re.search(r"\b(\d+)/(\d+) \[", line))}
    assert len(steps) >= 3, "no progress while training:\n" + "\n".join(lines[start:end])
    assert lines[-1] == f"everything is in {out}; report: {out / 'evaluation' / 'report.md'}"
    assert (out / "evaluation" / "report.md").is_file()
