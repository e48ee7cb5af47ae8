"""Parity with the reference, frozen: figures ardamamur/EgoExOR's own code produced on synthetic data.

``tests/data/reference/`` was written by ``scripts/check_reference_parity.py --write-golden`` (the
reference run from its checkout under transformers 4.31, see README "Checking parity with the
reference") on the same synthetic data as these fixtures: the ``tiny`` profile, seed 0, merged, the
train split with 2 permutations. These tests recompute egoexor's side with no reference installed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from llama_tokenizer import write_tokenizer_folder

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts" / "parity"))

import egoexor_side  # noqa: E402

from egoexor.data.dataset import EgoExorDataset  # noqa: E402
from egoexor.data.processor import Collator  # noqa: E402
from egoexor.data.tokenizer import load_tokenizer  # noqa: E402
from egoexor.modalities.audio import audio_snippet  # noqa: E402
from egoexor.prompt import IMAGE_TOKEN_ID  # noqa: E402

GOLDEN = Path(__file__).parent / "data" / "reference"


def _collapse(ids: torch.Tensor) -> list[int]:
    """egoexor's run of visual placeholders -> the reference's single -200."""
    keep = torch.ones(len(ids), dtype=torch.bool)
    keep[1:] = ~((ids[1:] == IMAGE_TOKEN_ID) & (ids[:-1] == IMAGE_TOKEN_ID))
    return ids[keep].tolist()


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return load_tokenizer(write_tokenizer_folder(tmp_path_factory.mktemp("llava-v1.5-7b")))


@pytest.fixture(scope="module")
def datasets(sample_files, merged_file, llama, tmp_path_factory):
    """The reference's data settings; audio embedded by the parity check's CLAP stand-in."""
    cache = egoexor_side.write_audio_cache(merged_file, tmp_path_factory.mktemp("audio") / "stand_in.h5")
    config = egoexor_side.data_config(cache)
    return {
        mode: EgoExorDataset(sample_files["train"], merged_file, llama, config, mode=mode)
        for mode in ("train", "generate")
    }


def test_training_ids_labels_and_inference_prompts_equal_the_references(datasets):
    records = json.loads((GOLDEN / "tokens.json").read_text())
    assert len(records) >= 6
    for index, record in enumerate(records):
        train, prompt = datasets["train"][index], datasets["generate"][index]
        assert datasets["train"].samples[index].id == record["id"]
        ids, labels = train["input_ids"], train["labels"]
        keep = torch.ones(len(ids), dtype=torch.bool)
        keep[1:] = ~((ids[1:] == IMAGE_TOKEN_ID) & (ids[:-1] == IMAGE_TOKEN_ID))
        assert ids[keep].tolist() == record["input_ids"], record["id"]
        assert labels[keep].tolist() == record["labels"], record["id"]
        assert _collapse(prompt["input_ids"]) == record["inference_ids"], record["id"]


sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from check_reference_parity import egoexor_batch, egoexor_view_names  # noqa: E402


@pytest.mark.slow
def test_every_sample_tensor_equals_the_references_after_bfloat16_rounding(datasets):
    """Per sample: the same views in the same order, and each tensor's sum and absolute sum equal
    the reference's (bf16) ones once ours is rounded to bf16 (ours is within half a bf16 step)."""
    dataset = datasets["train"]
    records = json.loads((GOLDEN / "items.json").read_text())
    assert len(records) >= 200
    compared = 0
    for index, record in enumerate(records):
        sample = dataset.samples[index]
        assert sample.id == record["id"]
        item = dataset[index]
        ego, exo = egoexor_view_names(dataset, sample)
        assert ego == record["ego"], sample.id
        ours = {}
        if ego:
            ours["ego images"] = item["ego_images"]
        for name in record["exo"]:
            ours[f"exo image {name}"] = item["exo_images"][exo.index(name)]
        for key, tensor, mask in (
            ("eye_gaze", item["gaze"][:, :2], item["gaze_mask"]),
            ("eye_gaze_depth", item["gaze"][:, 2], item["gaze_mask"]),
            ("hand_tracking", item["hands"], item["hand_mask"]),
        ):
            if key in record:
                rows = record[key][2][0]  # the reference's rows: exactly our unmasked views, in order
                assert mask.tolist() == [True] * rows + [False] * (len(mask) - rows), (sample.id, key)
                ours[key] = tensor[:rows]
        if "audio input" in record:
            snippet = dataset.reader.read(sample.take, sample.frame, {"audio"}).arrays["audio"]
            ours["audio input"] = torch.from_numpy(audio_snippet(snippet, "reference"))
        if "point cloud" in record:  # equal, not within bf16: compared unrounded
            cloud = item["point_cloud"].double()
            total, absolute, shape = record.pop("point cloud")
            assert list(cloud.shape) == shape, sample.id
            assert [float(cloud.sum()), float(cloud.abs().sum())] == pytest.approx([total, absolute], rel=1e-9)
            compared += 1
        else:
            assert item["point_cloud"] is None, sample.id
        expected = {k: v for k, v in record.items() if k not in ("id", "ego", "exo")}
        assert set(ours) == set(expected), sample.id
        for name, (total, absolute, shape) in expected.items():
            rounded = ours[name].to(torch.bfloat16).double()
            assert list(rounded.shape) == shape, (sample.id, name)
            assert float(rounded.sum()) == pytest.approx(total, rel=1e-5, abs=1e-3), (sample.id, name)
            assert float(rounded.abs().sum()) == pytest.approx(absolute, rel=1e-5, abs=1e-3), (sample.id, name)
            compared += 1
    assert compared > 1000


@pytest.mark.slow
def test_parity_model_logits_and_greedy_ids_equal_the_references(datasets, llama):
    """The reference model, given the parity model's weights, produced these logits (float32) on a
    batch of samples with different view counts (``mask_extras: false``), and these greedy ids."""
    golden = np.load(GOLDEN / "logits.npz")
    model = egoexor_side.build_model()
    indices = golden["indices"].tolist()
    train, generate = datasets["train"], datasets["generate"]
    records = json.loads((GOLDEN / "items.json").read_text())
    exo_orders = [records[index]["exo"] for index in indices]  # the reference's seeded view draw
    batch = egoexor_batch(train, Collator(llama.pad_token_id), indices, exo_orders)
    assert torch.equal(batch["attention_mask"], torch.from_numpy(golden["mask"]))
    with torch.no_grad():
        logits = model(**batch)["logits"].float()
    mask = batch["attention_mask"].bool()
    top_ids = torch.from_numpy(golden["top_ids"])
    top_values = torch.from_numpy(golden["top_values"])
    ours = logits.gather(-1, top_ids)
    assert float((ours - top_values)[mask].abs().max()) <= 1e-4
    assert torch.equal(logits.topk(3, dim=-1).indices[mask][:, 0], top_ids[mask][:, 0])
    sums = torch.from_numpy(golden["row_sums"])
    assert float((logits.sum(-1) - sums)[mask].abs().max()) <= 1e-2
    for index, names, expected in zip(indices, exo_orders, golden["generated"].tolist(), strict=True):
        single = egoexor_batch(train, Collator(llama.pad_token_id, "left"), [index], [names], generate)
        assert model.generate(**single, max_new_tokens=len(expected), eos_token_id=llama.eos_token_id)[0].tolist() == (
            expected
        )


def test_the_trained_clip_window_read_from_the_references_saved_keys_is_the_one_it_trained():
    """The key list the reference's own save code wrote (``--unfreeze_n_vision_tower_layers 2`` of a 3-layer
    CLIP: layers 1 and 2) gives the window convert_reference now reads from a released folder."""
    from egoexor.convert_reference import trained_clip_layers

    keys = json.loads((GOLDEN / "checkpoint_keys.json").read_text())["non_lora"]
    assert trained_clip_layers({key: torch.zeros(1) for key in keys}) == egoexor_side.UNFREEZE == 2


@pytest.fixture(scope="module")
def reference_init():
    """Per-parameter statistics of the reference's pooler and projector as its training code builds them
    (``from_pretrained`` of a LLaVA base without those weights, then its BERT and PTv3 re-initialisations)."""
    return json.loads((GOLDEN / "init.json").read_text())


def test_pooler_and_projector_start_as_the_references(reference_init):
    """Every pooler and projector tensor of the ``reference`` preset is a draw of the reference's init: shape,
    mean, standard deviation and kurtosis within sampling error (``scripts/parity/init_stats.py``)."""
    import init_stats

    compared, failures, _ = init_stats.differences(egoexor_side.init_statistics(), reference_init)
    assert compared >= 300 and not failures, failures[:5]
    gaze = reference_init["base_model.model.model.image_pooler.gaze_encoder.mlp.0.weight"]
    assert gaze["std"] == pytest.approx(0.02, rel=0.05)  # N(0, 0.02): LLaMA's _init_weights, not xavier


def test_pytorch_default_linear_init_is_not_the_references(reference_init):
    """The comparison can fail: PyTorch's default init of the gaze and audio layers (what egoexor kept before)."""
    import init_stats

    torch.manual_seed(0)
    for name, layer in (
        ("image_pooler.gaze_encoder.mlp.0", torch.nn.Linear(3, 512)),
        ("image_pooler.gaze_encoder.mlp.2", torch.nn.Linear(512, 1024)),
        ("image_pooler.audio_projector", torch.nn.Linear(512, 1024)),
    ):
        ours = init_stats.statistics(
            (f"base_model.model.model.{name}.{key}", tensor) for key, tensor in layer.state_dict().items()
        )
        for key, stats in ours.items():
            assert init_stats.difference(stats, reference_init[key]) is not None, key
