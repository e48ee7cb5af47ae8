"""Scene-graph memory: parity with the reference's own functions (frozen), and the token budget.

``tests/data/reference/memory.json`` was written by ``scripts/check_memory_parity.py --write-golden``
with ardamamur/EgoExOR f8bf610 (``surgery_sg_to_memory_str``, ``llava_sg_to_surgery_sg``) and MM-OR
0a42524 (its generator's per-sample memory step) on 24 synthetic takes. These tests recompute egoexor's
side with no reference installed.
"""

from __future__ import annotations

import json
import random
import sys
from dataclasses import replace
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from check_memory_parity import differences, egoexor_side  # noqa: E402

from egoexor import memory  # noqa: E402
from egoexor.data.layout import TakeKey  # noqa: E402
from egoexor.data.processor import EgoExorProcessor  # noqa: E402
from egoexor.data.samples import Sample  # noqa: E402
from egoexor.prompt import HUMAN_TURN  # noqa: E402

GOLDEN = json.loads((Path(__file__).parent / "data" / "reference" / "memory.json").read_text())


def _golden_takes():
    return [[(frame, [tuple(t) for t in triplets]) for frame, triplets in take] for take in GOLDEN["takes"]]


def test_memory_equals_the_reference_on_the_frozen_takes():
    assert len(GOLDEN["takes"]) >= 20
    rows = differences(GOLDEN, egoexor_side(_golden_takes(), GOLDEN["seeds"]))
    checked = {name for name, _, _ in rows}
    styles = {f"memory {style}/{drop}" for style in memory.STYLES for drop in (False, GOLDEN["drop_history"])}
    assert styles | {"change log", "prompt augment/False", "prompt augment/True"} == checked
    for name, compared, failures in rows:
        assert compared > 200, name
        assert failures == [], (name, failures[:3])


def test_the_frozen_takes_exercise_the_reference_quirks():
    """The golden texts hold what makes the format tricky: an empty Long section and a bare ``Short``."""
    texts = [t for per_take in GOLDEN["memory"]["longshort/0.5"] for t in per_take]
    assert any(t.startswith("Long: Short: ") for t in texts)
    assert "Short" in GOLDEN["memory"]["short/False"][0]
    assert any(",not " in t for t in texts)
    prompts = [p for per_take in GOLDEN["prompt"]["augment/True"] for p in per_take]
    assert {p == "<image>\n" for p in prompts} == {True, False}  # no memory for some samples, memory for others


def test_render_and_parse_are_inverse_on_every_golden_text():
    texts = [t for group in GOLDEN["memory"].values() for per_take in group for t in per_take]
    for text in texts:
        assert memory.render(memory.parse_sections(text)) == text


class _Draws:
    """An RNG whose ``random()`` returns given numbers."""

    def __init__(self, *values: float) -> None:
        self.values = list(values)

    def random(self) -> float:
        return self.values.pop(0)


def test_augmentation_uses_mmors_thresholds():
    cases = {0.0: None, 0.4999: None, 0.5: "short", 0.6659: "short", 0.666: "long", 0.8329: "long", 0.833: "longshort"}
    for draw, style in cases.items():
        assert memory.augmented_style(_Draws(draw)) == style


def test_insertion_follows_the_image_line():
    question = memory.insert_memory(HUMAN_TURN, "Short: a,b,holding")
    assert question == "<image>\n<memory_start>: Short: a,b,holding<memory_end>.\n" + HUMAN_TURN.removeprefix(
        "<image>\n"
    )


LONG_MEMORY = "Long: a,b,holding; c,d,cutting; e,f,touching; Short: a,b,not holding; g,h,preparing"


def test_fit_memory_drops_the_oldest_entries_first():
    question = memory.insert_memory(HUMAN_TURN, LONG_MEMORY)
    calls = []

    def fits(q: str) -> bool:
        calls.append(q)
        return len(q) <= len(question) - len("a,b,holding; c,d,cutting; ")

    fitted = memory.fit_memory(question, fits)
    assert fitted == memory.insert_memory(HUMAN_TURN, "Long: e,f,touching; Short: a,b,not holding; g,h,preparing")
    assert len(calls) <= 4  # a binary search over 5 entries, not one try per entry
    everything = memory.fit_memory(question, lambda q: False)
    assert everything == memory.insert_memory(HUMAN_TURN, "Long: Short")
    assert memory.fit_memory(question, lambda q: True) == question
    assert memory.fit_memory(HUMAN_TURN, lambda q: False) == HUMAN_TURN


def test_short_shows_the_last_five_changes_and_drop_history_needs_an_rng():
    # each frame f holds only (a, e_f): it adds that pair and removes the one before, two changes a frame
    log = memory.change_log([(f, [("a", f"e{f}", "holding")]) for f in range(8)], random.Random(0))
    [(header, entries)] = memory.parse_sections(memory.memory_text(log, 8, "short"))
    assert header == "Short" and len(entries) == 5
    assert {"a,e7,holding", "a,e6,not holding", "a,e6,holding", "a,e5,not holding"} < set(entries)
    assert memory.memory_text(log, 1, "short") == "Short: a,e0,holding"
    assert memory.memory_text(log, 0, "longshort") == "Long: Short"
    with pytest.raises(ValueError, match="rng"):
        memory.memory_text(log, 8, "short", drop_history=0.5)


def _processor(tokenizer, config, model_max_length: int) -> EgoExorProcessor:
    return EgoExorProcessor(tokenizer, replace(config, model_max_length=model_max_length))


def test_a_prompt_over_budget_loses_its_oldest_memory_entries_counted_in_tokens(tokenizer, tiny_data_config):
    entries = [f"head surgeon,patient,holding{i}" for i in range(40)]

    def sample(dropped: int) -> Sample:
        sections = [("Long", entries[:35]), ("Short", entries[35:])]
        kept = [
            (header, part[max(0, dropped - start) :]) for (header, part), start in zip(sections, (0, 35), strict=True)
        ]
        question = memory.insert_memory(HUMAN_TURN, memory.render(kept))
        return Sample("MISS_1_1_3_0", TakeKey("MISS", 1, 1), 3, frozenset(), question, "<SG> patient,bin,holding </SG>")

    unbounded = _processor(tokenizer, tiny_data_config, 100_000)
    lengths = [len(unbounded.tokens(sample(k), n_visual=8, generating=False)["input_ids"]) for k in range(41)]
    limit = lengths[0] - 30  # a few entries too long
    fewest = next(k for k, n in enumerate(lengths) if n <= limit)
    assert 1 < fewest < 35
    item = _processor(tokenizer, tiny_data_config, limit).tokens(sample(0), n_visual=8, generating=False)
    expected = unbounded.tokens(sample(fewest), n_visual=8, generating=False)
    assert item["input_ids"].tolist() == expected["input_ids"].tolist()  # the oldest `fewest` entries, no more
    assert item["labels"].tolist() == expected["labels"].tolist()  # the answer is whole: the memory gave way
    generating = _processor(tokenizer, tiny_data_config, limit).tokens(sample(0), n_visual=8, generating=True)
    assert len(generating["input_ids"]) <= limit
    assert len(generating["input_ids"]) > limit - 12  # without an answer to make room for, fewer entries go
