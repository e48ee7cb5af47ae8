"""Linear probe of the LLM-input visual tokens: ``python -m egoexor.probe --checkpoint DIR --hdf5 F --samples S``.

What reaches the language model of each input? For every frame of ``--samples`` (one sample per frame: the
permutations of a frame share its tokens) the model computes the visual tokens it writes into the prompt's
placeholder positions (:meth:`egoexor.model.egoexor_llava.EgoExorLlava.visual_features`: the ego branch's N
tokens, then the exo branch's N, [2N, H] per frame; a branch the frame lacks is zeros). For each input of the
synthetic ``parts`` benchmark (:data:`egoexor.data.synthetic.PARTS`: ego frames, gaze, hands, exo frames,
ultrasound, audio, point cloud) a linear probe (multinomial logistic regression with a small L2 penalty, on
the flattened tokens, standardised on the training folds) predicts that input's level (which of its part's
three predicates the frame's scene graph holds, read from the sample's answer) with k-fold cross-validation.
A frame counts for an input where its graph holds that input's part: ``parts`` puts a part in a take's
graphs only where the take records the input (:func:`egoexor.data.synthetic.take_parts`).

The table gives, per input, the cross-validated accuracy with its standard error over the folds, the chance
level (the share of the most frequent level: what a probe that ignores the tokens gets) and the number of
frames. An input at chance does not reach the language model in a linearly readable form, whatever the LLM.
``--drop_modalities`` removes inputs as ``egoexor.infer`` does (a removed input's probe must fall to chance:
the check that the probe reads the input and nothing else). ``--json FILE`` also writes the rows.

Inputs are checked as ``egoexor.ablate`` checks them, before the model loads; errors are one line (exit 2),
Ctrl-C one line (exit 130).
"""

from __future__ import annotations

import math
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from egoexor import cli, infer, modalities
from egoexor.atomic import write_json
from egoexor.data.samples import Sample
from egoexor.data.synthetic import PARTS
from egoexor.scene_graph import parse

if TYPE_CHECKING:  # torch is imported where it runs: --help and a user mistake do without it
    import torch
    from torch import Tensor

    from egoexor.data.dataset import EgoExorDataset

COMMAND = "egoexor.probe"
#: Batch keys that are not inputs of ``visual_features``.
_TEXT_KEYS = ("input_ids", "attention_mask", "labels")


def part_levels(sample: Sample) -> dict[str, int]:
    """Input -> level (index of the predicate in its part's group) of each part in the sample's answer."""
    levels = {}
    for subject, obj, predicate in parse(sample.answer):
        for part in PARTS:
            if (subject, obj) == (part.subject, part.object) and predicate in part.predicates:
                levels[part.modality] = part.predicates.index(predicate)
    return levels


def one_per_frame(samples: Sequence[Sample]) -> list[Sample]:
    """The first sample of each (take, frame), in order: a frame's permutations share its visual tokens."""
    seen, kept = set(), []
    for sample in samples:
        if (sample.take, sample.frame) not in seen:
            seen.add((sample.take, sample.frame))
            kept.append(sample)
    return kept


def visual_tokens(
    model, dataset: EgoExorDataset, batch_size: int, device: torch.device, num_workers: int = 0
) -> Tensor:
    """[samples, Ne + Nx, H] float32: each sample's ego then exo block of LLM-input visual tokens (zeros for a
    branch the sample does not have); a block is the branch's ``tokens_per_branch`` plus its appended tokens."""
    import torch
    from torch.utils.data import DataLoader

    from egoexor.data.processor import Collator

    config = dataset.config
    sizes = [config.tokens_per_branch + appended for appended in config.appended_tokens]
    loader = DataLoader(
        dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=Collator(dataset.tokenizer.pad_token_id)
    )
    model.eval()
    width = model.language_model.config.hidden_size
    out = []
    for batch in loader:
        inputs = {key: value.to(device) if torch.is_tensor(value) else value for key, value in batch.items()}
        with torch.no_grad():
            visual = model.visual_features(**{key: value for key, value in inputs.items() if key not in _TEXT_KEYS})
        present = torch.stack([batch["ego_view_mask"].any(1), batch["exo_view_mask"].any(1)], 1)  # [B, 2]
        tokens = torch.zeros(len(present), sum(sizes), width)
        blocks = [(b, branch) for b, branches in enumerate(present.tolist()) for branch in (0, 1) if branches[branch]]
        if blocks:
            rows = visual.float().cpu().split([sizes[branch] for _, branch in blocks])
            for (b, branch), block in zip(blocks, rows, strict=True):
                start = sum(sizes[:branch])
                tokens[b, start : start + sizes[branch]] = block
        out.append(tokens)
    return torch.cat(out)


def _fit_predict(train_x: Tensor, train_y: Tensor, test_x: Tensor, classes: int, l2: float, steps: int) -> Tensor:
    """Multinomial logistic regression on standardised features (mean cross entropy + ``l2`` * |W|^2).

    Fitted in the span of the (standardised) training rows, an exact change of basis here: the L2 penalty
    keeps the optimal weights in that span, and the rows have far fewer dimensions than the tokens.
    """
    import torch

    mean, std = train_x.mean(0), train_x.std(0)
    std = torch.where(std > 1e-6 * std.max().clamp(min=1e-30), std, torch.ones_like(std))
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    _, singular, basis = torch.linalg.svd(train_x, full_matrices=False)
    basis = basis[singular > 1e-9 * singular.max().clamp(min=1e-30)]
    train_x, test_x = train_x @ basis.T, test_x @ basis.T
    weight = torch.zeros(train_x.shape[1], classes, dtype=train_x.dtype, requires_grad=True)
    bias = torch.zeros(classes, dtype=train_x.dtype, requires_grad=True)
    optimiser = torch.optim.LBFGS([weight, bias], max_iter=steps, history_size=10, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(train_x @ weight + bias, train_y) + l2 * weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimiser.step(closure)
    return (test_x @ weight + bias).argmax(1)


def cross_validated(
    features: Tensor, levels: Tensor, folds: int = 5, seed: int = 0, l2: float = 1e-3, steps: int = 100
) -> dict:
    """k-fold accuracy of the probe: {accuracy, se (over folds), folds (each fold's), chance, n}."""
    import torch

    n = len(levels)
    x = features.reshape(n, -1).double()
    classes = int(levels.max()) + 1
    chance = float(torch.bincount(levels, minlength=classes).max()) / n
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    accuracies = []
    for fold in order.tensor_split(folds):
        train = torch.ones(n, dtype=torch.bool)
        train[fold] = False
        predicted = _fit_predict(x[train], levels[train], x[fold], classes, l2, steps)
        accuracies.append(float((predicted == levels[fold]).double().mean()))
    spread = float(np.std(accuracies, ddof=1)) if folds > 1 else math.nan
    return {
        "accuracy": float(np.mean(accuracies)),
        "se": spread / math.sqrt(folds),
        "folds": accuracies,
        "chance": chance,
        "n": n,
    }


def probe(tokens: Tensor, samples: Sequence[Sample], folds: int = 5, seed: int = 0, l2: float = 1e-3) -> list[dict]:
    """One row per input of :data:`PARTS` that at least ``2 * folds`` samples' answers hold: {input, accuracy, se,
    folds, chance, n}; ``tokens`` are the samples' :func:`visual_tokens`."""
    import torch

    levels = [part_levels(sample) for sample in samples]
    rows = []
    for part in PARTS:
        rows_of = [i for i, sample_levels in enumerate(levels) if part.modality in sample_levels]
        if len(rows_of) < 2 * folds:
            continue
        y = torch.tensor([levels[i][part.modality] for i in rows_of])
        rows.append({"input": part.modality, **cross_validated(tokens[rows_of], y, folds, seed, l2)})
    return rows


def format_table(rows: list[dict], folds: int) -> str:
    lines = [
        f"Linear probe of the LLM-input visual tokens ({folds}-fold cross-validated accuracy +- standard error)",
        "",
        "| input | accuracy | chance | n |",
        "|---|---|---|---|",
    ]
    lines += [f"| {r['input']} | {r['accuracy']:.3f} +- {r['se']:.3f} | {r['chance']:.3f} | {r['n']} |" for r in rows]
    return "\n".join(lines)


def _parser() -> cli.ArgumentParser:
    parser = cli.ArgumentParser(prog=f"python -m {COMMAND}", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, type=Path, help="checkpoint folder (ours or the released one)")
    parser.add_argument("--hdf5", required=True, type=Path, help="merged file of the synthetic parts profile")
    parser.add_argument("--samples", required=True, type=Path, help="sample JSON (one sample per frame is used)")
    parser.add_argument("--folds", type=cli.int_flag(2), default=5, help="cross-validation folds")
    parser.add_argument("--seed", type=cli.int_flag(0), default=0, help="seed of the fold assignment")
    parser.add_argument(
        "--l2", type=cli.float_flag(0.0), default=1e-3, help="L2 penalty on the probe's weights (standardised inputs)"
    )
    parser.add_argument(
        "--drop_modalities",
        type=cli.names_flag(modalities.droppable()),
        default=(),
        help=f"comma-separated inputs to remove before probing, of {', '.join(modalities.droppable())} (default: none)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the rows to this JSON file")
    parser.add_argument("--batch_size", type=cli.int_flag(1), default=16, help="samples per batch")
    parser.add_argument("--bits", type=int, choices=(4, 8, 16), default=16, help="LLM weights (default: 16)")
    parser.add_argument("--num_workers", type=cli.int_flag(0), default=0, help="data loading processes")
    parser.add_argument(
        "--audio_cache", type=Path, default=None, help="audio embeddings from python -m egoexor.data.precompute_audio"
    )
    cli.add_overwrite_flag(parser)
    return parser


def run(argv: Sequence[str] | None = None) -> list[dict]:
    """The command as a function: the table's rows (see :func:`probe`)."""
    args = _parser().parse_args(argv)
    if args.json is not None:
        inputs = [args.checkpoint, args.hdf5, args.samples, args.audio_cache]
        cli.check_output(args.json, inputs=inputs, overwrite=args.overwrite, flag="--json")
    samples = one_per_frame(infer.check_model_inputs(args))
    counts = [sum(part.modality in part_levels(sample) for sample in samples) for part in PARTS]
    if max(counts) < 2 * args.folds:
        raise cli.CommandError(
            f"--samples {args.samples}: no input has {2 * args.folds} frames with its part "
            "(probe data of the synthetic parts profile: python -m egoexor.data.synthetic --profile parts)"
        )
    import torch

    from egoexor.data.dataset import EgoExorDataset

    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    with tempfile.TemporaryDirectory() as scratch:  # a released checkpoint is converted there
        converted = Path(scratch) / "converted"
        model, tokenizer, data_config = infer.load_model(args.checkpoint, args.bits, device, converted)
    cli.checks_done()
    data_config = replace(data_config, drop_modalities=tuple(data_config.drop_modalities) + args.drop_modalities)
    if args.audio_cache is not None:
        data_config = replace(data_config, audio_cache=str(args.audio_cache))
    dataset = EgoExorDataset(samples, args.hdf5, tokenizer, data_config, "generate")
    tokens = visual_tokens(model, dataset, args.batch_size, device, args.num_workers)
    rows = probe(tokens, samples, args.folds, args.seed, args.l2)
    print(format_table(rows, args.folds))
    if args.json is not None:
        settings = {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}
        write_json(args.json, {"rows": rows, "settings": settings})
        print(f"wrote {args.json}")
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status (2 for bad input, 130 after Ctrl-C)."""

    def body() -> None:
        run(argv)

    return cli.run(COMMAND, body, errors=infer.ERRORS)


if __name__ == "__main__":
    sys.exit(main())
