"""Where the LLM looks when it writes a part's predicate (docs/modality_benchmark.md, "Why the tiny LLM reads
no slot").

    python scripts/predicate_attention.py --checkpoint runs/summary-seed0 --hdf5 parts.h5 --samples held_out.json

For each triplet of a ``parts`` sample (the synthetic modality benchmark), the position that predicts the
first token of the triplet's predicate is found (where the answer with another predicate of the group first
differs), and the LLM's attention from it is read under teacher forcing, per layer, mean over heads: to the
visual placeholder that carries the part's own input (its slot with ``summary`` or ``append``; none with
``first_view``), to all visual placeholders, and the share one position would get under uniform attention.
The table prints the mean over the triplets of each part. A slot at or below the uniform share is one the
LLM does not look at, whatever the slot holds (``egoexor probe`` says what it holds).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path


def measure(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--hdf5", type=Path, required=True)
    parser.add_argument("--samples", type=Path, required=True)
    parser.add_argument("--frames", type=int, default=30, help="the first FRAMES samples (default: 30)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    from egoexor import infer
    from egoexor.ablate import GROUPS, choice_candidates
    from egoexor.data.dataset import EgoExorDataset
    from egoexor.data.processor import Collator
    from egoexor.prompt import IMAGE_TOKEN_ID

    model, tokenizer, data_config = infer.load_model(args.checkpoint, 16, torch.device("cpu"), args.checkpoint)
    model.eval()
    language_model = model.language_model
    language_model.set_attn_implementation("eager")  # the attention weights themselves, not a fused kernel
    collate = Collator(tokenizer.pad_token_id)
    sums: dict[str, list[list[float]]] = {}  # part -> per triplet: [own, all visual, uniform] per layer
    for sample in infer.read_samples(args.samples)[: args.frames]:
        for part, _, texts in choice_candidates(sample, GROUPS["parts"]):
            candidates = [replace(sample, answer=text) for text in texts[:2]]
            dataset = EgoExorDataset(candidates, args.hdf5, tokenizer, data_config, "eval")
            batch = collate([dataset[0], dataset[1]])
            ids = batch["input_ids"]
            query = int((ids[0] != ids[1]).nonzero()[0, 0]) - 1  # predicts the predicate's first token
            # causal attention: at ``query`` it is the same for every candidate answer
            visual = {k: v[:1] for k, v in batch.items() if k not in ("input_ids", "attention_mask", "labels")}
            with torch.no_grad():
                embeds = model.input_embeddings(ids[:1], **visual)
                mask = batch["attention_mask"][:1]
                output = language_model(
                    inputs_embeds=embeds, attention_mask=mask, output_attentions=True, use_cache=False
                )
            positions = (ids[0] == IMAGE_TOKEN_ID).nonzero()[:, 0]
            present = [branch for branch in ("ego", "exo") if visual[f"{branch}_view_mask"].any()]
            labels = [name for branch in present for name in model.image_pooler.output_names(branch)]
            own = [int(p) for p, name in zip(positions, labels, strict=True) if name == part]
            row = []
            for layer in output.attentions:
                weights = layer[0, :, query].float().mean(0)  # [T], mean over heads
                own_share = float(weights[own].sum()) if own else float("nan")
                row += [own_share, float(weights[positions].sum()), 1.0 / (query + 1)]
            sums.setdefault(part, []).append(row)
    layers = len(next(iter(sums.values()))[0]) // 3
    print(f"Attention from the position predicting each part's predicate ({args.checkpoint}, mean over heads)\n")
    header = " | ".join(f"layer {i} own slot | layer {i} all visual" for i in range(layers))
    print(f"| part | triplets | {header} | uniform share |\n|---|---" + "|---" * (2 * layers + 1) + "|")
    for part, rows in sums.items():
        mean = torch.tensor(rows).nanmean(0).tolist()
        cells = " | ".join(f"{mean[3 * i]:.4f} | {mean[3 * i + 1]:.4f}" for i in range(layers))
        print(f"| {part} | {len(rows)} | {cells} | {mean[2]:.4f} |")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Bad input (a missing checkpoint, HDF5 or samples file) is one line and exit 2, as in egoexor's commands."""
    from egoexor import cli, infer

    return cli.run("predicate_attention", lambda: measure(argv), errors=infer.ERRORS)


if __name__ == "__main__":
    sys.exit(main())
