"""Every input reaches the visual tokens of its own branch, and only those: the wiring half of the
modality benchmark (#13), without training.

The tiny model (``configs/tiny.yaml``, random weights, eval mode) encodes a frame with every input,
then the same frame with one input removed as ``--drop_modalities`` removes it. The visual tokens are
each sample's ego block then its exo block (N each). Removing an input must change its branch's block
and leave the other block as it was (float32 rounding aside); removing a branch must remove its block. A path that never
reaches the model, a mask that hides an input, or swapped branches fails its own case.

What this does not show is that training *uses* an input; see docs/modality_benchmark.md for what the
tiny model learns.
"""

from dataclasses import replace

import pytest
import torch

from egoexor.data.dataset import EgoExorDataset
from egoexor.data.layout import TakeKey
from egoexor.data.processor import Collator
from egoexor.data.samples import load_samples
from egoexor.model.build import build_model

MISS_FULL, ULTRASOUND = TakeKey("MISS", 1, 1), TakeKey("Ultrasound", 1, 1)
#: Input -> (its branch, the take whose frame has it: the MISS take has no ultrasound screen).
INPUTS = {
    "ego_frames": ("ego", MISS_FULL),
    "gaze": ("ego", MISS_FULL),
    "hands": ("ego", MISS_FULL),
    "exo_frames": ("exo", MISS_FULL),
    "ultrasound": ("exo", ULTRASOUND),
    "audio": ("exo", MISS_FULL),
    "point_cloud": ("exo", MISS_FULL),
}
#: Relative change (Frobenius) of the own block counted as "reaches", and the most the other block may
#: move. Measured with configs/tiny.yaml: own blocks 2e-4 (audio) to 1.1 (views); a hidden input changes
#: nothing. The other block moves by <= 5e-8: float32 rounding, as a batch's CLIP and projector matrix
#: products change shape with what was removed.
REACHES, UNTOUCHED = 1e-5, 1e-6


@pytest.fixture(scope="module")
def encode(tiny_model_config, tiny_data_config, sample_files, merged_file, tokenizer):
    """(take, removed names) -> the [2 N, H] visual tokens of that take's first validation frame."""
    torch.manual_seed(0)
    model = build_model(tiny_model_config).eval()
    validation = load_samples(sample_files["validation"])
    frames = {take: next(s for s in validation if s.take == take) for take in (MISS_FULL, ULTRASOUND)}

    def tokens(take: TakeKey, *removed: str) -> torch.Tensor:
        config = replace(tiny_data_config, drop_modalities=removed)
        dataset = EgoExorDataset([frames[take]], merged_file, tokenizer, config, "generate")
        batch = Collator(tokenizer.pad_token_id, "left")([dataset[0]])
        with torch.no_grad():
            return model.visual_features(**{k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask")})

    return tokens


def _relative_change(changed: torch.Tensor, original: torch.Tensor) -> float:
    return float((changed - original).norm() / original.norm())


def _blocks(tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    ego, exo = tokens.chunk(2)
    return {"ego": ego, "exo": exo}


@pytest.mark.parametrize("removed", sorted(INPUTS))
def test_removing_an_input_changes_its_own_branch_and_only_it(encode, removed):
    branch, take = INPUTS[removed]
    other = "exo" if branch == "ego" else "ego"
    full, without = _blocks(encode(take)), _blocks(encode(take, removed))
    change = _relative_change(without[branch], full[branch])
    assert change > REACHES, f"removing {removed} leaves the {branch} tokens as they were ({change:.2e})"
    side_effect = _relative_change(without[other], full[other])
    assert side_effect < UNTOUCHED, f"removing {removed} changes the {other} tokens ({side_effect:.2e})"


@pytest.mark.parametrize("branch", ["ego", "exo"])
def test_removing_a_branch_removes_its_block_and_keeps_the_other(encode, branch):
    full = _blocks(encode(MISS_FULL))
    without = encode(MISS_FULL, branch)
    kept = "exo" if branch == "ego" else "ego"
    assert without.shape == full[kept].shape
    assert _relative_change(without, full[kept]) < UNTOUCHED
