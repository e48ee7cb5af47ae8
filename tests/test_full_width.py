"""The model at full width on a CPU (``scripts/full_width_cpu.py``): one training step and one generation step
with every modality; real shapes and dtypes flow, and the memory formulas match what autograd keeps."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Two LLaMA-7B layers: q, k, v, o (4096 x 4096) and gate, up, down (4096 x 11008), all in NF4.
LLM_LINEAR = 2 * (4 * 4096 * 4096 + 3 * 4096 * 11008)


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("full_width") / "report.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "full_width_cpu.py"), "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=1800,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.slow
def test_training_and_generation_steps_at_full_width(report, record_property):
    for key in ("build_s", "train_step_s", "generate_s", "peak_rss_gib"):
        record_property(key, round(report[key], 2))
    print({key: round(report[key], 1) for key in ("build_s", "train_step_s", "generate_s", "peak_rss_gib")})
    assert report["logits_shape"] == [1, report["sequence_length"], 32000] and report["sequence_length"] > 1152
    assert math.isfinite(report["loss"]) and report["loss"] > 0
    assert report["generated_shape"] == [1, 2]
    # the dtypes of the recipe: bf16 autocast logits, NF4 weights, float32 residual stream and lm_head
    # (prepare_model_for_kbit_training), as the memory plan assumes
    assert (report["logits_dtype"], report["residual_stream_dtype"], report["lm_head_dtype"]) == (
        "bfloat16",
        "float32",
        "float32",
    )
    nf4 = report["nf4_bytes"]
    assert nf4["dtypes"] == ["nf4"] and nf4["parameters"] == LLM_LINEAR
    assert nf4["measured"] == pytest.approx(nf4["calculated"], rel=1e-6)  # the footprint's NF4 formula


@pytest.mark.slow
def test_every_trainable_weight_learns_but_the_last_clip_layer(report):
    """The last CLIP layer comes after the selected hidden state (the reference's trainable set); LoRA A gets
    a zero gradient while B is still zero, and changes through weight decay."""
    last_layer = "vision_tower.vision_tower.encoder.layers.23."
    assert len(report["no_gradient"]) == 16 and all(n.startswith(last_layer) for n in report["no_gradient"])
    assert report["unchanged_after_step"] == report["no_gradient"]
    assert len(report["zero_gradient"]) == 2 * 7 and all(".lora_A." in n for n in report["zero_gradient"])


@pytest.mark.slow
def test_memory_formulas_match_what_autograd_keeps(report):
    """The plan's per-layer formulas, with the CPU's kernels, against the bytes measured during the step."""
    measured, planned = report["saved_bytes"], report["planned_bytes"]
    for part in ("CLIP", "projector", "LLM layer per token"):
        assert measured[part] == pytest.approx(planned[part], rel=0.02), part
    # the fusion encoders' CPU path differs more: math attention with float32 q, k, v, bf16 dropout masks
    assert measured["fusion"] == pytest.approx(planned["fusion"], rel=0.1)
