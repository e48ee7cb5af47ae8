"""egoexor reproduce end to end and offline: the synthetic dataset in a local hub cache as ardamamur/EgoExOR, a tiny
checkpoint in the released layout as the hub model ardamamur/EgoExOR, the tiny base LLM, CLIP and CLAP."""

from __future__ import annotations

import json

import huggingface_hub
import pytest
import torch
from test_download import _hub_cache
from test_infer import released  # noqa: F401  (a fixture)

from egoexor import cli
from egoexor.convert_reference import REFERENCE_FILES
from egoexor.reproduce import RECORDS, REFERENCE_INFERENCE, reproduce

STAGES = ["download", "merge", "samples", "checkpoint", "infer", "evaluate", "report"]


def _files(folder):
    """Every file under ``folder`` with its inode and modification time: what a rewrite changes."""
    return {path: (path.stat().st_ino, path.stat().st_mtime_ns) for path in folder.rglob("*") if path.is_file()}


def test_reproduce_runs_every_stage_then_reuses_every_stage(
    released,  # noqa: F811
    tiny_dataset,
    clap_dir,
    tmp_path,
    monkeypatch,
    capsys,
):
    folder, base, _, model_overrides = released
    cache = _hub_cache(tmp_path / "hub", [*tiny_dataset.files, tiny_dataset.splits_file])
    _hub_cache(cache, [folder / name for name in REFERENCE_FILES], repo="models--ardamamur--EgoExOR")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    out = tmp_path / "reproduced"
    settings = dict(allow_cpu=True, base=str(base), audio_encoder=str(clap_dir), cache_dir=cache, num_workers=0)
    settings.update(batch_size=8, max_new_tokens=5, model_overrides=model_overrides)

    first = reproduce(out, **settings)
    printed = capsys.readouterr().out
    assert first.stages == dict.fromkeys(STAGES, "ran")
    assert [f"[{n}/7] {stage}: wrote" in printed for n, stage in enumerate(STAGES, 1)] == [True] * 7
    rows = [row.strip("| ").split(" | ") for row in first.table.splitlines()]
    assert rows[0] == ["group", "paper", "`paper` protocol", "95% CI", "`gt` protocol", "95% CI"]
    assert [row[:2] for row in rows[2:]] == [["overall", "0.79"], ["Ultrasound", "0.86"], ["MISS", "0.70"]]
    gt = json.loads((out / "evaluation" / "gt" / "metrics.json").read_text())  # the untrained model's answers
    assert rows[2][4] == f"{gt['overall']['macro']['f1-score']:.4f}" and gt["protocol"] == "gt"
    run = json.loads((out / "predictions" / "run.json").read_text())
    assert {k: run[k] for k in REFERENCE_INFERENCE} == REFERENCE_INFERENCE and run["protocol"] == "paper"
    assert first.table in (out / "report.md").read_text()
    for path in ("data/splits.h5", "egoexor.h5", "checkpoint/egoexor_config.json", "predictions/raw_predictions.json"):
        assert (out / path).is_file(), path
    assert {p.name for p in (out / "evaluation").iterdir()} == {"paper", "gt"}
    written = _files(out)

    second = reproduce(out, **settings)
    printed = capsys.readouterr().out
    assert second.stages == dict.fromkeys(STAGES, "reused") and second.table == first.table
    assert [f"[{n}/7] {stage}: reused {out}" in printed for n, stage in enumerate(STAGES, 1)] == [True] * 7
    assert _files(out) == written  # nothing rewritten

    with pytest.raises(cli.CommandError, match=f"stage infer finished with other settings .*{RECORDS}"):
        reproduce(out, **{**settings, "max_new_tokens": 6})  # the earlier stages are reused; infer is not redone
    assert _files(out) == written


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is there")
def test_without_a_gpu_it_stops_at_once_unless_allowed(tmp_path):
    with pytest.raises(cli.CommandError, match="no CUDA GPU: .* pass --allow-cpu"):
        reproduce(tmp_path / "out")
    assert not (tmp_path / "out").exists()
