"""Distributed training trains the same weights as one process: ``torchrun --nproc_per_node 2`` (CPU) with a
per-device batch of 1, under DDP (gloo) and under DeepSpeed ZeRO-2 (``configs/zero2.json``, DeepSpeed's CPU
accelerator), against one process with a batch of 2, all through ``python -m egoexor.train``.

(``--fsdp`` cannot be tested so: on a CPU, accelerate 1.x sets up FSDP only for GPU-like devices and trains
the run as plain DDP without a word; see docs/gpu.md.)

Both runs see the same samples in the same steps: the Trainer's random order is seeded alike in every
process, and accelerate deals batch k of that order to rank k mod 2, so step s pairs items 2s and 2s+1 on
either layout; an item's own random draws are seeded by its index (``EgoExorDataset``), not by the worker
or rank that reads it. What would still differ, and is set aside here, is not distribution:

* dropout (LoRA 0.05, fusion BERT 0.1): each process draws its masks from its own stream, for a tensor of
  its own batch shape, so no two layouts draw the same masks. The runs turn every dropout off (LoRA by its
  flag, the fusion encoders' by a harness, as they have no flag);
* the loss is the mean over the supervised tokens of a micro-batch (the reference's): DDP averages the
  two ranks' per-sample means, one process takes the mean over both samples' tokens. These agree when the
  two samples supervise equally many tokens, so the runs use such samples;
* a sample's fusion sequence depends on its batch-mates: view slots are padded to the batch's most views and
  an extra token kind exists when any sample has it, so positions shift. The samples share views and
  extras (every exo view in camera order, ``--exo_views all``);
* AdamW: its update g / (sqrt(v) + eps) amplifies float rounding in gradients near eps (the same runs with
  AdamW differ by ~3e-5) and is blind to a gradient's scale, so a rank that averaged wrongly would pass;
  plain SGD (``--optim sgd``) keeps rounding at rounding size and shows any scale error;
* point clouds: PTv3 runs in train mode and its BatchNorm normalises over all points of the batch (its
  DropPath and order shuffle draw random numbers too), so a cloud's token depends on its batch-mates.
  The runs leave point clouds out (``--features gaze,hand,audio``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from egoexor.config import parse_train_args

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.yaml")
STEPS = 3
#: Float rounding of the tiny model's weights (~0.1) after SGD steps is ~1e-8; any error of distribution
#: (other samples, a gradient averaged wrongly) moves weights by the size of a step, >1e-4.
TOLERANCE = 1e-6

#: ``python -m egoexor.train`` with every dropout module of the built model at p = 0, recording how each rank
#: was set up (``$SETUP_LOG/rank<N>.json``).
_HARNESS = """
import json, os, sys
from pathlib import Path
import torch
from egoexor import train
from egoexor.model import build

built, trained = build.build_model, train.EgoExorTrainer.train

def without_dropout(config):
    model = built(config)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model

def recorded(self, *args, **kwargs):
    result = trained(self, *args, **kwargs)
    stage = getattr(self.model_wrapped, "zero_optimization_stage", lambda: None)()
    setup = {"distributed_type": self.accelerator.distributed_type.value, "stage": stage,
             "wrapped": type(self.model_wrapped).__name__, "world_size": self.args.world_size}
    Path(os.environ["SETUP_LOG"], f"rank{os.environ.get('RANK', 0)}.json").write_text(json.dumps(setup))
    return result

build.build_model, train.EgoExorTrainer.train = without_dropout, recorded
sys.exit(train.main(sys.argv[1:]))
"""


def _signature(item: dict) -> tuple:
    """What makes two samples' computations independent of being batched together: views, extras, and
    the number of supervised tokens."""
    return (
        int(item["ego_view_mask"].sum()),
        int(item["exo_view_mask"].sum()),
        tuple(item["gaze_mask"].tolist()),
        tuple(item["hand_mask"].tolist()),
        bool(item["audio_mask"].any()),
        int((item["labels"] != -100).sum()),
    )


def uniform_samples(sample_file: Path, merged_file: Path, out: Path, count: int) -> Path:
    """``count`` training samples with one :func:`_signature`, as a sample file."""
    from egoexor.config import DataConfig
    from egoexor.data.dataset import EgoExorDataset
    from egoexor.data.processor import Collator
    from egoexor.data.samples import load_samples
    from egoexor.data.tokenizer import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    tokenizer.pad_token = tokenizer.unk_token
    samples = load_samples(sample_file)
    config = DataConfig(image_size=32, tokens_per_branch=16, audio_encoder=None, exo_views="all")
    dataset = EgoExorDataset(samples, merged_file, tokenizer, config, "train")
    collate = Collator(tokenizer.pad_token_id)
    signatures = [_signature({k: v[0] for k, v in collate([dataset[i]]).items()}) for i in range(len(samples))]
    common, size = Counter(signatures).most_common(1)[0]
    assert size >= count, f"only {size} samples share a signature"
    ids = {s.id for s, signature in zip(samples, signatures, strict=True) if signature == common}
    records = [r for r in json.loads(sample_file.read_text()) if r["id"] in ids][:count]
    out.write_text(json.dumps(records))
    return out


class Runs:
    """Training runs of one sample subset, each in its own folder under ``root``."""

    def __init__(self, root: Path, subset: Path, merged_file: Path) -> None:
        self.root = root
        self.flags = [
            "--config",
            TINY,
            "--data_path",
            str(subset),
            "--hdf5_path",
            str(merged_file),
            "--max_steps",
            str(STEPS),
            "--lora_dropout",
            "0",
            "--exo_views",
            "all",
            "--features",
            "gaze,hand,audio",
            "--save_strategy",
            "no",
            "--dataloader_num_workers",
            "0",
            "--optim",
            "sgd",
            "--disable_tqdm",
            "True",
        ]
        (root / "harness.py").write_text(_HARNESS)

    def train(self, name: str, ranks: int, batch: int, *flags: str) -> dict:
        """Run ``name``; its weights, the ranks' setups and its time."""
        output, log = self.root / name, self.root / f"{name}-setup"
        log.mkdir()
        launcher = ["-m", "torch.distributed.run", "--nproc_per_node", str(ranks), "--master_port", "29571"]
        args = [*self.flags, "--output_dir", str(output), "--per_device_train_batch_size", str(batch), *flags]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "SETUP_LOG": str(log)}
        start = time.perf_counter()
        result = subprocess.run(
            [sys.executable, *(launcher if ranks > 1 else []), str(self.root / "harness.py"), *args],
            capture_output=True,
            text=True,
            timeout=900,
            env=env,
            cwd=self.root,
            check=False,
        )
        seconds = time.perf_counter() - start
        assert result.returncode == 0, result.stderr[-3000:]
        assert json.loads((output / "trainer_state.json").read_text())["global_step"] == STEPS
        weights = {
            **load_file(output / "adapter_model.safetensors"),
            **load_file(output / "non_lora_trainables.safetensors"),
        }
        setups = [json.loads(path.read_text()) for path in sorted(log.iterdir())]
        return {"weights": weights, "setups": setups, "seconds": seconds}

    def initial_weights(self) -> dict[str, torch.Tensor]:
        """The trained non-LoRA weights of the runs' model as built, before any step (any layout's)."""
        from egoexor.model.build import build_model

        model = build_model(parse_train_args([*self.flags, "--output_dir", str(self.root / "unused")]).model)
        trained = {n for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n}
        return {name: tensor.detach() for name, tensor in model.state_dict().items() if name in trained}


@pytest.fixture(scope="module")
def runs(sample_files, merged_file, tmp_path_factory) -> Runs:
    root = tmp_path_factory.mktemp("distributed")
    subset = uniform_samples(sample_files["train"], merged_file, root / "samples.json", 2 * STEPS)
    return Runs(root, subset, merged_file)


@pytest.fixture(scope="module")
def one_process(runs) -> dict:
    """The reference run: one process, batch 2."""
    run = runs.train("one", ranks=1, batch=2)
    assert run["setups"] == [{"distributed_type": "NO", "stage": None, "wrapped": "EgoExorLlava", "world_size": 1}]
    return run


def _compare(one: dict, other: dict, runs: Runs, record_property, name: str) -> None:
    """The same weights within :data:`TOLERANCE`, and training moved them by far more than that."""
    assert one["weights"].keys() == other["weights"].keys()
    difference = max(float((one["weights"][k] - other["weights"][k]).abs().max()) for k in one["weights"])
    record_property("max_weight_difference", difference)
    print(
        f"{name}: max |w - w_one_process| = {difference:.3g}; one process {one['seconds']:.1f} s, "
        f"{name} {other['seconds']:.1f} s"
    )
    assert difference < TOLERANCE
    initial = runs.initial_weights()
    moved = max(float((one["weights"][k] - initial[k]).abs().max()) for k in initial)
    assert moved > 1000 * max(difference, 1e-8)
    assert all(float(w.abs().max()) > 0 for k, w in one["weights"].items() if "lora_B" in k)  # LoRA B starts at 0


@pytest.mark.slow
def test_ddp_two_ranks_of_batch_1_train_the_weights_of_one_process_of_batch_2(runs, one_process, record_property):
    ddp = runs.train("ddp", ranks=2, batch=1)
    assert [s["distributed_type"] for s in ddp["setups"]] == ["MULTI_CPU"] * 2
    assert [s["wrapped"] for s in ddp["setups"]] == ["DistributedDataParallel"] * 2
    _compare(one_process, ddp, runs, record_property, "torchrun x 2, DDP")


@pytest.mark.slow
def test_deepspeed_zero2_two_ranks_train_the_weights_of_one_process(runs, one_process, record_property):
    """``--deepspeed configs/zero2.json`` as the recipe passes it; needs deepspeed (``pip install deepspeed``, no
    CUDA needed: DS_BUILD_OPS=0, its CPU accelerator builds one small op on first use)."""
    pytest.importorskip("deepspeed", reason="deepspeed is not installed (pip install 'egoexor[gpu]')")
    zero2 = runs.train("zero2", 2, 1, "--deepspeed", str(ROOT / "configs" / "zero2.json"))
    assert [(s["distributed_type"], s["stage"], s["wrapped"]) for s in zero2["setups"]] == [
        ("DEEPSPEED", 2, "DeepSpeedEngine")
    ] * 2
    _compare(one_process, zero2, runs, record_property, "torchrun x 2, DeepSpeed ZeRO-2")
