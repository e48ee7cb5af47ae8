"""Check egoexor against the reference's own code (ardamamur/EgoExOR), on synthetic data.

    python scripts/check_reference_parity.py --reference-src ~/EgoExOR --reference-python ~/egoexor-ref/bin/python

``--reference-src`` is your checkout of ardamamur/EgoExOR (checked at f8bf610); ``--reference-python``
the interpreter of an environment with its pinned libraries (README, "Checking parity with the
reference"). The reference's code is imported from your checkout at run time, never copied here;
what it only imports (deepspeed, flash-attn, open3d, CUDA calls) is stubbed at run time by
``scripts/parity/reference_side.py``. egoexor runs in this interpreter. On one synthetic dataset
(black ego frames, missing gaze/audio/point clouds, a blank camera, duplicate-free takes) it compares:

* **merge**: the reference's ``merge_h5.py`` output and ``egoexor-merge-h5``'s, object by object;
* **samples**: the reference's sample generator and ``make_samples`` (records and token counts);
* **tokens**: training ids and labels (``preprocess``) and inference prompt ids
  (``tokenizer_image_token``) with the real LLaMA vocabulary (``--tokenizer``, default: rebuilt
  from ``tests/data/llama-vocab``), against egoexor's Dataset (visual placeholders collapsed);
* **items**: every training sample's tensors (images, gaze, depth, hands, audio input, point cloud),
  reference Dataset against egoexor's with the reference's data settings;
* **forward**: logits of the reference's ``LlavaLlamaForCausalLM`` and egoexor's ``reference``
  preset, same weights (float32), on a batch of samples with different view counts, and 20 greedy
  ids per sample from each model's ``generate``;
* **checkpoint**: a folder written by the reference's own save code imports with
  ``egoexor.convert_reference`` with every tensor accounted for and equal to the weights it was
  written from;
* **init**: the initial values of every pooler and projector tensor (shape, mean, standard deviation,
  excess kurtosis, ``scripts/parity/init_stats.py``) of the reference model as its training code builds
  it (``from_pretrained`` of a LLaVA base without those weights, then its re-initialisations) and of
  egoexor's ``reference`` preset.

It prints one table (check, items compared, failures, worst difference) and exits 1 on any failure.
``--write-golden DIR`` also freezes the reference's figures (token ids, per-sample tensor checksums,
logits, checkpoint keys, init statistics) for ``tests/test_reference_golden.py``, which checks them on every change
with no reference installed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "scripts" / "parity"), str(ROOT / "tests")]

import egoexor_side  # noqa: E402
import init_stats  # noqa: E402

from egoexor.prompt import IMAGE_TOKEN_ID  # noqa: E402

SPLIT, PERMUTATIONS = "train", 2
#: Takes whose samples the reference's model accepts in one batch (every sample with ego views,
#: gaze and audio: its collation has no per-sample gaps) with different ego-view counts.
FORWARD_TAKES = ("MISS_1_1", "MISS_2_1")
#: Frames of those takes with a black ego camera in the synthetic ``tiny`` profile.
BLACK_EGO_FRAMES = (("MISS_1_1", 1), ("MISS_2_1", 0))
FORWARD_SAMPLES = 3
NEW_TOKENS = 20
TOKEN_RECORDS = 12


class Report:
    """One row per check: compared, failures, worst difference, a few failure descriptions."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, int, int, float, list[str]]] = []

    def add(self, name: str, compared: int, failures: list[str], worst: float = 0.0) -> None:
        self.rows.append((name, compared, len(failures), worst, failures[:5]))

    def print(self) -> int:
        print(f"\n{'check':<28}{'compared':>10}{'failures':>10}{'worst diff':>14}")
        for name, compared, failed, worst, examples in self.rows:
            print(f"{name:<28}{compared:>10}{failed:>10}{worst:>14.3g}")
            for example in examples:
                print(f"    {example}")
        total = sum(row[2] for row in self.rows)
        print(f"\n{len(self.rows)} checks, {total} failures")
        return int(total > 0)


def run_reference(python: str, src: Path, work: Path, kind: str, **job) -> dict:
    job_file = work / f"{kind}.job.json"
    result = work / f"{kind}.result.pt"
    job_file.write_text(
        json.dumps(
            {"kind": kind, "result": str(result), "workdir": str(work / "reference"), "reference_src": str(src), **job}
        )
    )
    subprocess.run(
        [python, str(ROOT / "scripts" / "parity" / "reference_side.py"), "--reference-src", str(src), str(job_file)],
        check=True,
    )
    return torch.load(result, weights_only=False)


def run_egoexor(*argv: str) -> None:
    subprocess.run([sys.executable, "-m", *argv], check=True, stdout=subprocess.DEVNULL)


# --------------------------------------------------------------------------------------------------
# merge and samples


def _equal_values(x: np.ndarray, y: np.ndarray) -> bool:
    if np.asarray(x).dtype.kind == "f":
        return np.array_equal(x, y, equal_nan=True)
    return np.array_equal(x, y)


def h5_differences(a: Path, b: Path) -> tuple[int, list[str]]:
    """Objects compared and their differences: names and order, attributes, dtypes, layout, values."""
    failures: list[str] = []
    compared = 0
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:

        def attrs(x, y, path):
            if list(x.attrs) != list(y.attrs):
                failures.append(f"{path}: attributes {list(x.attrs)} vs {list(y.attrs)}")
                return
            for key in x.attrs:
                vx, vy = x.attrs[key], y.attrs[key]
                if np.asarray(vx).dtype != np.asarray(vy).dtype or not np.array_equal(vx, vy):
                    failures.append(f"{path}@{key}: {vx!r} vs {vy!r}")

        def walk(x, y, path):
            nonlocal compared
            compared += 1
            attrs(x, y, path)
            if isinstance(x, h5py.Dataset):
                same = (x.dtype, x.shape, x.chunks, x.compression, x.compression_opts) == (
                    y.dtype,
                    y.shape,
                    y.chunks,
                    y.compression,
                    y.compression_opts,
                )
                if not same or not _equal_values(x[()], y[()]):
                    failures.append(f"{path}: dataset differs")
                return
            if list(x) != list(y):
                failures.append(f"{path}: members {list(x)} vs {list(y)}")
                return
            for name in x:
                walk(x[name], y[name], f"{path}/{name}")

        walk(fa, fb, "")
    return compared, failures


def sample_differences(ours: Path, reference: Path) -> tuple[int, list[str]]:
    a, b = json.loads(ours.read_text()), json.loads(reference.read_text())
    failures = [] if len(a) == len(b) else [f"{len(a)} samples vs the reference's {len(b)}"]
    for x, y in zip(a, b, strict=False):  # a length difference is reported above
        x, y = dict(x), dict(y)
        mx, my = (set(r["hdf5_indices"].pop("available_modalities")) for r in (x, y))
        if x != y or mx != my:
            failures.append(f"sample {x.get('id')} differs from the reference's {y.get('id')}")
    return len(b), failures


# --------------------------------------------------------------------------------------------------
# tokens


def collapse_placeholders(ids: torch.Tensor, labels: torch.Tensor | None = None):
    """egoexor writes T placeholder ids per sample where the reference writes one -200: collapse the run."""
    keep = torch.ones(len(ids), dtype=torch.bool)
    keep[1:] = ~((ids[1:] == IMAGE_TOKEN_ID) & (ids[:-1] == IMAGE_TOKEN_ID))
    return ids[keep], None if labels is None else labels[keep]


def token_differences(reference: dict, train_items: list[dict], prompt_items: list[dict]) -> tuple[int, list[str]]:
    failures = []
    for record, item, prompt in zip(reference["records"], train_items, prompt_items, strict=True):
        ids, labels = collapse_placeholders(item["input_ids"], item["labels"])
        if not torch.equal(ids, record["input_ids"]):
            failures.append(f"{record['id']}: training ids differ")
        if not torch.equal(labels, record["labels"]):
            failures.append(f"{record['id']}: labels differ")
        prompt_ids, _ = collapse_placeholders(prompt["input_ids"])
        if not torch.equal(prompt_ids, record["inference_ids"]):
            failures.append(f"{record['id']}: inference prompt ids differ")
    return len(reference["records"]), failures


# --------------------------------------------------------------------------------------------------
# per-sample tensors


def _bf16_steps(ours: torch.Tensor, reference: torch.Tensor) -> float:
    """Largest difference in units of one bfloat16 step at our value (the reference's data are bf16)."""
    ours, reference = ours.float(), reference.float()
    if ours.shape != reference.shape:
        return float("inf")
    if ours.numel() == 0:
        return 0.0
    step = torch.exp2(torch.floor(torch.log2(ours.abs().clamp(min=2**-126))) - 7)
    return float(((ours - reference).abs() / step).max())


def egoexor_view_names(dataset, sample) -> tuple[list[str], list[str]]:
    """The source names of egoexor's ego and exo views of a sample, in the Dataset's order."""
    from egoexor.data import views

    point = dataset.reader.read(sample.take, sample.frame, {"rgb"})
    available, config = sample.modalities, dataset.config
    ego = []
    if "ego_frames" in available:
        ego = views.ego_views(point.sources, point.rgb, generating=False, selection=config.camera_selection)
    exo = (
        views.exo_cameras(
            point.sources,
            "exo_frames" in available,
            "ultrasound" in available,
            config.camera_selection,
            sample_views=False,
            max_views=config.max_exo_views,
            rng=None,
        )
        if point.rgb is not None
        else []
    )
    return [view.source for view in ego], [point.sources[c] for c in exo]


def item_differences(reference: list[dict], dataset, audio) -> tuple[int, list[str], float, list[dict]]:
    """Compare each reference record with egoexor's item of the same sample; also returns checksums."""
    failures, worst, golden = [], 0.0, []
    for index, record in enumerate(reference):
        sample = dataset.samples[index]
        item = dataset[index]
        where = f"sample {sample.id}"
        ego_names, exo_names = egoexor_view_names(dataset, sample)
        checks: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        exact: dict[str, list] = {}  # golden checksums of tensors that must be equal, not within bf16
        if record.get("ego_source_names", []) != ego_names:
            failures.append(f"{where}: ego views {ego_names} vs the reference's {record.get('ego_source_names')}")
            continue
        if ego_names:
            checks["ego images"] = (item["ego_images"], record["ego_frames"])
        for name_index, name in enumerate(record.get("exo_source_names", [])):
            if name not in exo_names:
                failures.append(f"{where}: the reference has exo view {name}, egoexor does not")
                continue
            checks[f"exo image {name}"] = (item["exo_images"][exo_names.index(name)], record["exo_frames"][name_index])
        n_ego = len(ego_names)
        for key, ours, mask in (
            ("eye_gaze", item["gaze"][:, :2], item["gaze_mask"]),
            ("eye_gaze_depth", item["gaze"][:, 2], item["gaze_mask"]),
            ("hand_tracking", item["hands"], item["hand_mask"]),
        ):
            theirs = record.get(key)
            if theirs is None or n_ego == 0:
                continue
            if int(mask.sum()) != len(theirs) or not bool(mask[: len(theirs)].all()):
                failures.append(f"{where}: {key}: {len(theirs)} rows in the reference, views {mask.tolist()} here")
            checks[key] = (ours[: len(theirs)], theirs)
        if record.get("point_cloud") is not None:
            ours_cloud = item["point_cloud"]
            if ours_cloud is None or not torch.equal(ours_cloud, record["point_cloud"]):
                failures.append(f"{where}: point cloud differs")
            cloud = record["point_cloud"].double()
            exact["point cloud"] = [float(cloud.sum()), float(cloud.abs().sum()), list(cloud.shape)]
        elif item.get("point_cloud") is not None:
            failures.append(f"{where}: egoexor has a point cloud, the reference none")
        if record.get("audio") is not None:
            snippet = dataset.reader.read(sample.take, sample.frame, {"audio"}).arrays["audio"]
            checks["audio input"] = (torch.from_numpy(audio(snippet, "reference")), record["audio"][0])
        for name, (ours, theirs) in checks.items():
            steps = _bf16_steps(ours, theirs)
            worst = max(worst, steps)
            if steps > 1:
                failures.append(f"{where}: {name} differs by {steps:.3g} bf16 steps")
        golden.append(
            {
                "id": sample.id,
                "ego": ego_names,
                "exo": record.get("exo_source_names", []),
                **{
                    name: [float(theirs.float().sum()), float(theirs.float().abs().sum()), list(theirs.shape)]
                    for name, (_, theirs) in checks.items()
                },
                **exact,
            }
        )
    return len(reference), failures, worst, golden


# --------------------------------------------------------------------------------------------------
# model


def egoexor_batch(dataset, collator, indices, exo_orders, prompts=None) -> dict:
    """egoexor's own items for the samples, exo views in the order the reference's draw kept
    (``exo_orders``: the reference's exo source names per sample), without point clouds (the
    reference's PTv3 needs flash-attn), rounded to bf16 as the reference's Dataset rounds them (the
    model is compared on equal inputs; the data path is compared by ``item_differences``); with
    ``prompts`` (a generate-mode Dataset), the inference prompt in place of the training text."""
    items = []
    for index, names in zip(indices, exo_orders, strict=True):
        item = dict(dataset[index], point_cloud=None)
        _, exo_names = egoexor_view_names(dataset, dataset.samples[index])
        item["exo_images"] = item["exo_images"][[exo_names.index(name) for name in names]]
        if prompts is not None:
            del item["labels"]
            item["input_ids"] = prompts[index]["input_ids"]
        items.append(item)
    batch = collator(items)
    for key in ("ego_images", "exo_images", "gaze", "hands"):  # the reference's Dataset gives bf16 values
        batch[key] = batch[key].to(torch.bfloat16).float()
    return batch


def forward_differences(reference: dict, logits: torch.Tensor, batch: dict) -> tuple[int, list[str], float]:
    failures, worst = [], 0.0
    for b in range(len(logits)):
        length = int(batch["attention_mask"][b].sum())
        theirs = reference["logits"][b, :length]
        ours = logits[b, :length]
        if theirs.shape != ours.shape:
            failures.append(f"sample {b}: {tuple(ours.shape)} logits vs the reference's {tuple(theirs.shape)}")
            continue
        difference = float((ours - theirs).abs().max())
        worst = max(worst, difference)
        if difference > 1e-4:
            failures.append(f"sample {b}: logits differ by {difference:.3g}")
    return len(logits), failures, worst


# --------------------------------------------------------------------------------------------------
# main


def build_data(work: Path, src: Path, python: str, tokenizer: Path, report: Report) -> tuple[Path, Path]:
    """Synthetic files -> both merges -> both sample files; returns egoexor's merged file and samples."""
    from egoexor.data.synthetic import generate

    dataset = generate(work / "download", "tiny", seed=0)
    names = [path.name for path in dataset.files]
    ours, theirs = work / "merged.h5", work / "merged_reference.h5"
    run_egoexor(
        "egoexor.data.merge_h5",
        "--data_dir",
        str(dataset.directory),
        "--input_files",
        *names,
        "--splits_file",
        dataset.splits_file.name,
        "--output_file",
        str(ours),
        "--quiet",
    )
    run_reference(
        python,
        src,
        work,
        "merge",
        data_dir=str(dataset.directory),
        input_files=names,
        splits_file=dataset.splits_file.name,
        out=str(theirs),
    )
    report.add("merge (HDF5 objects)", *h5_differences(ours, theirs))

    samples_dir, reference_dir = work / "samples", work / "samples_reference"
    run_egoexor(
        "egoexor.data.make_samples",
        "--hdf5",
        str(ours),
        "--split",
        SPLIT,
        "--n-permutations",
        str(PERMUTATIONS),
        "--out",
        str(samples_dir),
        "--tokenizer",
        str(tokenizer),
    )
    run_reference(
        python,
        src,
        work,
        "samples",
        hdf5=str(ours),
        split=SPLIT,
        n_permutations=PERMUTATIONS,
        out=str(reference_dir),
        tokenizer=str(tokenizer),
    )
    ours_json = next(samples_dir.glob(f"{SPLIT}_*.json"))
    reference_json = next(p for p in reference_dir.glob(f"{SPLIT}_*.json"))
    report.add("samples (records)", *sample_differences(ours_json, reference_json))
    ours_freqs = next(p for p in samples_dir.glob("*token_freqs*.json"))
    reference_freqs = next(p for p in reference_dir.glob("*token_freqs*.json"))
    same = json.loads(ours_freqs.read_text()) == json.loads(reference_freqs.read_text())
    report.add("samples (token counts)", 1, [] if same else ["token frequencies differ"])
    return ours, ours_json


def forward_indices(samples: Path) -> list[int]:
    """Samples of FORWARD_TAKES, one per frame: the frames with a black ego camera (if in the split),
    then the first other frame of each take, so the batch mixes ego-view counts."""
    from egoexor.data.samples import load_samples

    loaded = load_samples(samples)
    wanted = [*BLACK_EGO_FRAMES, *((take, None) for take in FORWARD_TAKES)]
    chosen, frames = [], set()
    for take, frame in wanted:
        for index, sample in enumerate(loaded):
            key = (sample.take.name, sample.frame)
            if sample.take.name == take and frame in (None, sample.frame) and key not in frames:
                chosen.append(index)
                frames.add(key)
                break
    return chosen[:FORWARD_SAMPLES]


def model_checks(
    work: Path,
    src: Path,
    python: str,
    tokenizer: Path,
    merged: Path,
    samples: Path,
    tokenizer_obj,
    report: Report,
    golden: dict,
) -> None:
    """Forward, generation and checkpoint import of the parity model, both sides."""
    from egoexor.convert_reference import convert
    from egoexor.data.dataset import EgoExorDataset
    from egoexor.data.processor import Collator
    from egoexor.model.build import load_trained

    model = egoexor_side.build_model()
    reference = run_reference(python, src, work, "init", **egoexor_side.REFERENCE_JOB)["statistics"]
    report.add("init (pooler, projector)", *init_stats.differences(egoexor_side.init_statistics(model), reference))
    golden["init"] = reference
    weights = work / "weights.pt"
    torch.save(egoexor_side.reference_state_dict(model), weights)
    common = dict(
        egoexor_side.REFERENCE_JOB,
        tokenizer=str(tokenizer),
        samples=str(samples),
        hdf5=str(merged),
        weights=str(weights),
    )
    indices = forward_indices(samples)
    reference = run_reference(
        python,
        src,
        work,
        "forward",
        indices=indices,
        new_tokens=NEW_TOKENS,
        exocentric_features=["audio"],
        audio_stand_in=True,
        **common,
    )
    unset = reference["unset"]["missing"] + reference["unset"]["unexpected"]
    unset = [key for key in unset if not key.endswith("rotary_emb.inv_freq")]
    report.add("weights into the reference", 1, [f"not set: {key}" for key in unset])

    config = egoexor_side.data_config(egoexor_side.write_audio_cache(merged, work / "audio_stand_in.h5"))
    train = EgoExorDataset(samples, merged, tokenizer_obj, config, mode="train")
    exo_orders = [item.get("exo_source_names", []) for item in reference["items"]]
    batch = egoexor_batch(train, Collator(tokenizer_obj.pad_token_id), indices, exo_orders)
    with torch.no_grad():
        logits = model(**batch)["logits"].float()
    compared, failures, worst = forward_differences(reference, logits, batch)
    report.add("forward (logits, float32)", compared, failures, worst)
    golden["logits"] = {"indices": list(indices), "reference": reference["logits"], "mask": batch["attention_mask"]}

    generate = EgoExorDataset(samples, merged, tokenizer_obj, config, mode="generate")
    failures, ids = [], []
    for index, names, theirs in zip(indices, exo_orders, reference["generated"], strict=True):
        single = egoexor_batch(train, Collator(tokenizer_obj.pad_token_id, "left"), [index], [names], generate)
        ours = model.generate(**single, max_new_tokens=NEW_TOKENS, eos_token_id=tokenizer_obj.eos_token_id)[0]
        ids.append(theirs.tolist())
        if ours.tolist() != theirs.tolist():
            failures.append(f"sample {index}: greedy ids {ours.tolist()} vs the reference's {theirs.tolist()}")
    report.add(f"generate ({NEW_TOKENS} greedy ids)", len(ids), failures)
    golden["generated"] = ids

    folder = work / "reference_checkpoint"
    written = run_reference(python, src, work, "checkpoint", out=str(folder), **common)
    converted = work / "converted"
    # the CLIP tower comes from the folder config.json names (the one the reference side wrote), as for a release
    overrides = {
        k: v
        for k, v in vars(egoexor_side.model_config()).items()
        if k not in ("preset", "vision_tower", "vision_config")
    }
    try:
        mapping = convert(folder, converted, **overrides)
        loaded, _ = load_trained(converted)
        theirs_state, ours_state = loaded.state_dict(), model.state_dict()
        trained = set(mapping["mapped"]) | {k for k in ours_state if "lora_" in k}
        failures = [
            f"{key}: differs after import"
            for key in sorted(trained)
            if not torch.equal(theirs_state[key].float(), ours_state[key].float())
        ]
    except Exception as error:  # noqa: BLE001  (reported as a failed check)
        failures = [f"import failed: {error}"]
    report.add("checkpoint import", len(written["non_lora_keys"]) + len(written["adapter_keys"]), failures)
    report.add("infer on the import", 1, infer_failures(converted, tokenizer, merged, samples, indices, work))
    golden["checkpoint"] = {
        "non_lora": {
            key: [list(t.shape), str(t.dtype).removeprefix("torch.")]
            for key, t in torch.load(folder / "non_lora_trainables.bin").items()
        },
        "adapter": sorted(torch.load(folder / "adapter_model.bin")),
    }


def infer_failures(checkpoint: Path, tokenizer: Path, merged: Path, samples: Path, indices, work: Path) -> list[str]:
    """``python -m egoexor.infer`` on the imported checkpoint (with the LLM's tokenizer beside it, and the
    stand-in audio embeddings: no CLAP can be downloaded here)."""
    import shutil

    for file in tokenizer.iterdir():
        if file.name != "config.json":
            shutil.copy(file, checkpoint / file.name)
    few = work / "few_samples.json"
    records = json.loads(samples.read_text())
    few.write_text(json.dumps([records[i] for i in indices]))
    out = work / "infer"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "egoexor.infer",
            "--checkpoint",
            str(checkpoint),
            "--hdf5",
            str(merged),
            "--samples",
            str(few),
            "--out",
            str(out),
            "--max_new_tokens",
            "8",
            "--bits",
            "16",
            "--audio_cache",
            str(work / "audio_stand_in.h5"),
            "--overwrite",
        ],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        return [f"infer exited {result.returncode}: {result.stderr.strip().splitlines()[-1:]}"]
    predicted = json.loads((out / "raw_predictions.json").read_text())
    return [] if len(predicted) == len(indices) else [f"{len(predicted)} predictions for {len(indices)} samples"]


def write_golden(directory: Path, golden: dict) -> None:
    """The reference's figures, small enough to commit (see tests/test_reference_golden.py)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tokens.json").write_text(json.dumps(golden["tokens"]))
    (directory / "items.json").write_text(json.dumps(golden["items"]))
    (directory / "checkpoint_keys.json").write_text(json.dumps(golden["checkpoint"], indent=1))
    (directory / "init.json").write_text(json.dumps(golden["init"], indent=1))
    logits, mask = golden["logits"]["reference"], golden["logits"]["mask"]
    top = logits.topk(3, dim=-1)
    np.savez_compressed(
        directory / "logits.npz",
        indices=np.array(golden["logits"]["indices"]),
        top_values=top.values.numpy(),
        top_ids=top.indices.numpy(),
        mask=mask.numpy(),
        row_sums=logits.sum(-1).numpy(),
        generated=np.array(golden["generated"]),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference-src", type=Path, required=True, help="checkout of ardamamur/EgoExOR")
    parser.add_argument("--reference-python", required=True, help="python of the reference's environment")
    parser.add_argument(
        "--tokenizer",
        type=Path,
        default=None,
        help="llava-v1.5-7b tokenizer folder (default: rebuilt from tests/data/llama-vocab)",
    )
    parser.add_argument("--work", type=Path, default=None, help="keep intermediate files here")
    parser.add_argument("--write-golden", type=Path, default=None, help="freeze the reference's figures here")
    parser.add_argument("--skip-model", action="store_true", help="data checks only (no model forward)")
    args = parser.parse_args(argv)
    from egoexor.data.dataset import EgoExorDataset
    from egoexor.data.tokenizer import load_tokenizer
    from egoexor.modalities.audio import audio_snippet

    src, python = args.reference_src.resolve(), args.reference_python
    with tempfile.TemporaryDirectory() as scratch:
        work = (args.work or Path(scratch)).resolve()
        work.mkdir(parents=True, exist_ok=True)
        tokenizer = args.tokenizer
        if tokenizer is None:
            import llama_tokenizer

            tokenizer = llama_tokenizer.write_tokenizer_folder(work / "llama_tokenizer")
        report, golden = Report(), {}
        merged, samples = build_data(work, src, python, tokenizer, report)
        tokenizer_obj = load_tokenizer(tokenizer)
        config = egoexor_side.data_config()
        common = dict(egoexor_side.REFERENCE_JOB, tokenizer=str(tokenizer), samples=str(samples), hdf5=str(merged))

        reference = run_reference(python, src, work, "tokens", limit=TOKEN_RECORDS, **common)
        train = EgoExorDataset(samples, merged, tokenizer_obj, config, mode="train")
        prompts = EgoExorDataset(samples, merged, tokenizer_obj, config, mode="generate")
        indices = range(len(reference["records"]))
        report.add(
            "tokens (ids, labels, prompt)",
            *token_differences(reference, [train[i] for i in indices], [prompts[i] for i in indices]),
        )
        golden["tokens"] = [
            {key: (value.tolist() if torch.is_tensor(value) else value) for key, value in r.items()}
            for r in reference["records"]
        ]

        reference = run_reference(python, src, work, "items", **common)
        compared, failures, worst, golden["items"] = item_differences(reference["items"], train, audio_snippet)
        report.add("items (per-sample tensors)", compared, failures, worst)
        if not args.skip_model:
            model_checks(work, src, python, tokenizer, merged, samples, tokenizer_obj, report, golden)
        if args.write_golden and not args.skip_model:
            write_golden(args.write_golden, golden)
        return report.print()


if __name__ == "__main__":
    sys.exit(main())
