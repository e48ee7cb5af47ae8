"""Check :mod:`egoexor.memory` against the reference's own memory code, on synthetic takes.

    python scripts/check_memory_parity.py --reference-src ~/EgoExOR --mmor-src ~/MM-OR [--write-golden DIR]

``--reference-src`` is your checkout of ardamamur/EgoExOR (checked at f8bf610), ``--mmor-src`` of
egeozsoy/MM-OR (checked at 0a42524). Nothing is copied from them: the reference's
``scene_graph_converters.py`` (pure Python) is imported from the checkout, and MM-OR's per-sample memory
step (the body of the ``for llava_scene_graph in ...`` loop of its ``generate_dataset_format_for_llava.py``:
the augmentation draw, ``drop_history`` and the insertion after ``<image>\\n``) is read from the checkout
and run as it is written. Both run in this interpreter (they need only the standard library).

On ``--takes`` synthetic takes (a random walk of scene graphs: pairs appear, disappear and change
predicate, ``closeto`` and ``none`` pairs, repeated pairs in a frame, gaps between frame numbers) it
compares, with the same seed on both sides:

* **change log**: the reference's ``llava_sg_to_surgery_sg`` and :func:`egoexor.memory.change_log`;
* **memory**: ``surgery_sg_to_memory_str`` and :func:`egoexor.memory.memory_text` at every frame, for every
  style, without and with ``drop_history`` 0.5;
* **prompts**: MM-OR's loop body, without and with its augmentation (``drop_history`` 0.5), and egoexor's
  :func:`~egoexor.memory.augmented_style` + :func:`~egoexor.memory.insert_memory` on the real prompt.

It prints one table (check, items compared, failures) and exits 1 on any failure. ``--write-golden DIR``
freezes the takes and the reference's texts in ``DIR/memory.json`` for ``tests/test_memory.py``.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import random
import sys
from pathlib import Path

from egoexor import memory, vocab
from egoexor.prompt import HUMAN_TURN, SCENE_GRAPH_PROMPT

LLAVA_HELPERS = Path("scene_graph_generation/scene_graph_prediction/llava_helpers")
DROP_HISTORY = 0.5
ENTITIES = [vocab.answer_form(name) for name in vocab.ENTITIES[:8]]
PREDICATES = ["holding", "cutting", "touching", "closeto", "preparing", "lyingon"]


def synthetic_take(rng: random.Random) -> list[tuple[int, list[tuple[str, str, str]]]]:
    """One take's frames as (frame, [(subject, object, predicate)]), a random walk of scene graphs."""
    frames, state, frame = [], {}, rng.randrange(3)
    for _ in range(rng.randint(4, 16)):
        for pair in list(state):
            p = rng.random()
            if p < 0.15:
                del state[pair]
            elif p < 0.25:
                state[pair] = rng.choice(PREDICATES)
        for _ in range(rng.choice((0, 0, 1, 1, 2, 3))):
            subject, obj = rng.sample(ENTITIES, 2)
            state[(subject, obj)] = rng.choice(PREDICATES)
        triplets = [(s, o, p) for (s, o), p in state.items()]
        if triplets and rng.random() < 0.2:  # the same pair twice in one frame
            s, o, _ = rng.choice(triplets)
            triplets.append((s, o, rng.choice(PREDICATES)))
        if rng.random() < 0.15:
            triplets.append(("none", rng.choice(ENTITIES), rng.choice(PREDICATES)))
        rng.shuffle(triplets)
        frames.append((frame, triplets))
        frame += rng.choice((1, 1, 1, 2, 5))
    return frames


def import_converters(reference_src: Path):
    path = reference_src / LLAVA_HELPERS / "scene_graph_converters.py"
    spec = importlib.util.spec_from_file_location("reference_scene_graph_converters", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def mmor_memory_step(mmor_src: Path):
    """MM-OR's per-sample memory step, compiled from its generator (the body of its loop over samples)."""
    path = mmor_src / LLAVA_HELPERS / "generate_dataset_format_for_llava.py"
    loops = [
        node
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.For) and isinstance(node.target, ast.Name) and node.target.id == "llava_scene_graph"
    ]
    if len(loops) != 1:
        raise SystemExit(f"{path}: expected one 'for llava_scene_graph in ...' loop, found {len(loops)}")
    return compile(ast.Module(body=loops[0].body, type_ignores=[]), str(path), "exec")


def reference_side(converters, step, takes, seeds) -> dict:
    """The reference's change logs, memory texts and prompts; the global RNG seeded as egoexor's is."""
    result = {"log": [], "memory": {}, "prompt": {}}
    for frames, seed in zip(takes, seeds, strict=True):
        random.seed(seed)
        sgs = [{"timepoint_idx": f, "scene_graph": [(s, p, o) for s, o, p in triplets]} for f, triplets in frames]
        log = converters.llava_sg_to_surgery_sg(sgs, entity_of_interest=None, IRRELEVANT_PREDS=["closeto", "closeTo"])
        result["log"].append([[t, *change] for t, change in log])
        for style in memory.STYLES:
            for drop in (False, DROP_HISTORY):
                random.seed(seed)
                texts = [
                    converters.surgery_sg_to_memory_str([e for e in log if e[0] < f], f, style, drop) for f, _ in frames
                ]
                result["memory"].setdefault(f"{style}/{drop}", []).append(texts)
        for augment in (False, True):
            random.seed(seed)
            prompts = []
            for f, _ in frames:
                namespace = {
                    "random": random,
                    "surgery_sg_to_memory_str": converters.surgery_sg_to_memory_str,
                    "take_to_history": {"take": log},
                    "take_timepoint_to_memory_str": {},
                    "llava_scene_graphs_with_history": [],
                    "WITH_TEMPORAL_AUG": augment,
                    "DROP_HISTORY": DROP_HISTORY,
                    "llava_scene_graph": {"id": f"take_{f}", "timepoint": f, "conversations": [{"value": HUMAN_TURN}]},
                }
                exec(step, namespace)
                prompts.append(_memory_part(namespace["llava_scene_graph"]["conversations"][0]["value"]))
            result["prompt"].setdefault(f"augment/{augment}", []).append(prompts)
    return result


def egoexor_side(takes, seeds) -> dict:
    result = {"log": [], "memory": {}, "prompt": {}}
    for frames, seed in zip(takes, seeds, strict=True):
        log = memory.change_log(frames, random.Random(seed))
        result["log"].append([list(change) for change in log])
        for style in memory.STYLES:
            for drop in (0.0, DROP_HISTORY):
                rng = random.Random(seed)
                texts = [memory.memory_text(log, f, style, drop, rng) for f, _ in frames]
                result["memory"].setdefault(f"{style}/{drop or False}", []).append(texts)
        for augment in (False, True):
            rng = random.Random(seed)
            prompts = []
            for f, _ in frames:
                style = memory.augmented_style(rng) if augment else "longshort"
                drop = DROP_HISTORY if augment else 0.0
                question = (
                    HUMAN_TURN
                    if style is None
                    else memory.insert_memory(HUMAN_TURN, memory.memory_text(log, f, style, drop, rng))
                )
                prompts.append(_memory_part(question))
            result["prompt"].setdefault(f"augment/{augment}", []).append(prompts)
    return result


def _memory_part(prompt: str) -> str:
    """The prompt without the instruction text that every prompt ends with (the golden file stays small)."""
    if not prompt.endswith(SCENE_GRAPH_PROMPT):
        raise SystemExit(f"a prompt does not end with the instruction text: {prompt[-80:]!r}")
    return prompt[: -len(SCENE_GRAPH_PROMPT)]


def differences(reference: dict, ours: dict) -> list[tuple[str, int, list[str]]]:
    """(check, items compared, failures) per check: one item per change-log entry, text or prompt."""
    rows = []
    log_failures = []
    for i, (a, b) in enumerate(zip(reference["log"], ours["log"], strict=True)):
        if a != b:
            log_failures.append(f"take {i}: change logs differ")
    rows.append(("change log", sum(len(log) for log in reference["log"]), log_failures))
    for group in ("memory", "prompt"):
        for key, per_take in reference[group].items():
            failures = [
                f"take {i} frame #{j}: {x!r} vs {y!r}"
                for i, (xs, ys) in enumerate(zip(per_take, ours[group][key], strict=True))
                for j, (x, y) in enumerate(zip(xs, ys, strict=True))
                if x != y
            ]
            rows.append((f"{group} {key}", sum(map(len, per_take)), failures))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference-src", type=Path, required=True, help="checkout of ardamamur/EgoExOR")
    parser.add_argument("--mmor-src", type=Path, required=True, help="checkout of egeozsoy/MM-OR")
    parser.add_argument("--takes", type=int, default=24, help="synthetic takes (default: 24)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic takes and of both sides")
    parser.add_argument("--write-golden", type=Path, default=None, help="freeze the reference's texts here")
    args = parser.parse_args(argv)

    rng = random.Random(args.seed)
    takes = [synthetic_take(rng) for _ in range(args.takes)]
    seeds = [args.seed * 1000 + i for i in range(args.takes)]
    reference = reference_side(import_converters(args.reference_src), mmor_memory_step(args.mmor_src), takes, seeds)
    rows = differences(reference, egoexor_side(takes, seeds))
    print(f"{args.takes} synthetic takes, {sum(len(frames) for frames in takes)} frames\n")
    print(f"{'check':<28}{'compared':>10}{'failures':>10}")
    for name, compared, failures in rows:
        print(f"{name:<28}{compared:>10}{len(failures):>10}")
        for failure in failures[:3]:
            print(f"    {failure}")
    total = sum(len(failures) for _, _, failures in rows)
    print(f"\n{len(rows)} checks, {total} failures")
    if args.write_golden is not None:
        golden = {"drop_history": DROP_HISTORY, "seeds": seeds, "takes": takes, **reference}
        args.write_golden.mkdir(parents=True, exist_ok=True)
        (args.write_golden / "memory.json").write_text(json.dumps(golden, separators=(",", ":")) + "\n")
        print(f"wrote {args.write_golden / 'memory.json'}")
    return int(total > 0)


if __name__ == "__main__":
    sys.exit(main())
