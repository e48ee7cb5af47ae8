"""Per-pair relation metrics on hand-computed frames, and the report arithmetic against sklearn."""

from __future__ import annotations

import random
import warnings

import numpy as np
import pytest
from sklearn.metrics import classification_report as sklearn_report

from egoexor import vocab
from egoexor.metrics import (
    batched_macro_f1,
    classification_report,
    compute_metrics,
    macro_over_supported,
    surgery_type,
    take_name,
)
from egoexor.scene_graph import Triplet as T

HS, PAT, OT, AS = "head_surgeon", "patient", "operating_table", "assistant"
REL = {name: i for i, name in enumerate(vocab.RELATION_LABELS)}


def overall(frames, protocol="paper"):
    return compute_metrics(frames, protocol)["overall"]


def cell(group, truth: str, guess: str) -> int:
    return group["confusion_matrix"][REL[truth]][REL[guess]]


def test_first_triplet_of_a_pair_wins_in_ground_truth_and_prediction():
    gt = [T(HS, PAT, "holding"), T(HS, PAT, "touching")]
    pred = [T(HS, PAT, "touching"), T(HS, PAT, "holding")]
    group = overall([("MISS_1_1", gt, pred)])
    assert group["pairs"] == 2
    assert cell(group, "holding", "touching") == 1
    assert cell(group, "none", "none") == 1


def test_hand_computed_frame_none_support_counts_in_the_macro():
    # Entity set (paper) = predicted {HS, PAT, OT}: 6 ordered pairs; GT holding on (HS, PAT), none elsewhere;
    # predicted holding on (HS, PAT) and a false lyingon on (PAT, OT).
    gt = [T(HS, PAT, "holding")]
    pred = [T(HS, PAT, "holding"), T(PAT, OT, "lyingon")]
    group = overall([("MISS_1_1", gt, pred)])
    report = group["relation_report"]
    assert group["pairs"] == 6
    assert report["none"] == pytest.approx({"precision": 1.0, "recall": 0.8, "f1-score": 8 / 9, "support": 5})
    assert report["lyingon"] == pytest.approx({"precision": 0.0, "recall": 0.0, "f1-score": 0.0, "support": 0})
    # headline: mean over holding and none (lyingon has no support and is left out)
    assert group["macro"] == pytest.approx({"precision": 1.0, "recall": 0.9, "f1-score": (1 + 8 / 9) / 2, "labels": 2})
    # sklearn's plain macro avg divides by all 23 labels
    assert report["macro avg"]["f1-score"] == pytest.approx((1 + 8 / 9) / 23)
    assert report["macro avg"]["precision"] == pytest.approx(2 / 23)
    assert report["accuracy"] == pytest.approx(5 / 6)
    assert group["binary_report"]["interaction"]["precision"] == pytest.approx(0.5)


def test_predicted_and_ground_truth_entity_sets_differ():
    # The model never names the operating table: the paper protocol does not see the missed lyingon.
    gt = [T(HS, PAT, "holding"), T(PAT, OT, "lyingon")]
    pred = [T(HS, PAT, "holding")]
    paper = overall([("MISS_1_1", gt, pred)], "paper")
    correct = overall([("MISS_1_1", gt, pred)], "gt")
    assert paper["pairs"] == 2
    assert paper["macro"]["f1-score"] == 1.0
    assert correct["pairs"] == 6
    assert cell(correct, "lyingon", "none") == 1
    assert correct["macro"]["f1-score"] == pytest.approx((1 + 0 + 8 / 9) / 3)
    # ... and a spurious predicted entity only creates pairs under the paper protocol
    spurious = [T(HS, PAT, "holding"), T(AS, PAT, "touching")]
    assert overall([("MISS_1_1", gt[:1], spurious)], "paper")["pairs"] == 6
    assert overall([("MISS_1_1", gt[:1], spurious)], "gt")["pairs"] == 2


def test_empty_ground_truth_frames_add_no_pairs_but_cost_triplet_precision():
    scored = ("MISS_1_1", [T(HS, PAT, "holding")], [T(HS, PAT, "holding")])
    empty = ("MISS_1_1", [], [T(HS, PAT, "holding"), T(AS, PAT, "touching")])
    alone, both = overall([scored]), overall([scored, empty])
    assert both["relation_report"] == alone["relation_report"]
    assert (both["frames"], both["scored_frames"], both["pairs"]) == (2, 1, 2)
    assert both["triplet"] == pytest.approx(
        {"precision": 1 / 3, "recall": 1.0, "f1-score": 0.5, "tp": 1, "fp": 2, "fn": 0}
    )


def test_entity_word_in_predicate_slot_counts_as_none_even_when_a_valid_triplet_follows():
    gt = [T(HS, PAT, "holding")]
    group = overall([("MISS_1_1", gt, [T(HS, PAT, PAT), T(HS, PAT, "holding")])])
    assert group["pairs"] == 2
    assert cell(group, "holding", "none") == 1
    assert group["binary_report"]["interaction"]["recall"] == 0.0
    assert group["triplet"]["tp"] == 1  # the exact-triplet metric still finds the later valid triplet


def test_predicate_word_as_entity_stays_in_the_pairs_but_not_in_the_entity_report():
    # The reference raises ValueError here (classNames.index); the pairs are what it computes before that.
    gt = [T(HS, PAT, "holding")]
    pred = [T("holding", PAT, "touching"), T(HS, PAT, "holding")]
    group = overall([("MISS_1_1", gt, pred)])
    assert group["pairs"] == 6
    assert group["non_entity_names"] == 1
    entities = group["entity_report"]
    assert [name for name in vocab.ENTITY_LABELS if entities[name]["support"]] == [HS, PAT]


def test_self_relations_are_not_pairs():
    group = overall([("MISS_1_1", [T(PAT, PAT, "touching"), T(HS, PAT, "holding")], [T(PAT, PAT, "touching")])])
    assert group["pairs"] == 0  # the predicted entity set is {patient}: no ordered pair with a != b
    assert group["macro"] is None and group["relation_report"] is None


def test_pooling_adds_confusion_matrices_per_take_and_surgery_type():
    frames = [
        ("MISS_1_1", [T(HS, PAT, "holding")], [T(HS, PAT, "holding")]),
        ("MISS_2_1", [T(HS, PAT, "cutting"), T(AS, PAT, "touching")], [T(HS, PAT, "holding"), T(AS, PAT, "touching")]),
        ("Ultrasound_1_1", [T(PAT, OT, "lyingon")], [T(PAT, OT, "lyingon")]),
        ("Ultrasound_1_1", [], [T(HS, PAT, "holding")]),
    ]
    result = compute_metrics(frames)
    assert list(result["takes"]) == ["MISS_1_1", "MISS_2_1", "Ultrasound_1_1"]
    assert list(result["surgery_types"]) == ["MISS", "Ultrasound"]
    takes, miss = result["takes"], result["surgery_types"]["MISS"]
    expected = np.add(takes["MISS_1_1"]["confusion_matrix"], takes["MISS_2_1"]["confusion_matrix"])
    assert np.array_equal(miss["confusion_matrix"], expected)
    pooled_macro = macro_over_supported(classification_report(expected, vocab.RELATION_LABELS), vocab.RELATION_LABELS)
    assert miss["macro"] == pytest.approx(pooled_macro)
    mean_of_takes = np.mean([takes[t]["macro"]["f1-score"] for t in ("MISS_1_1", "MISS_2_1")])
    assert miss["macro"]["f1-score"] != pytest.approx(mean_of_takes)  # pooled, not averaged
    assert result["surgery_types"]["Ultrasound"]["frames"] == 2
    assert result["overall"]["pairs"] == sum(t["pairs"] for t in takes.values())


def test_take_name_and_surgery_type_follow_the_reference():
    assert take_name({"surgery_type": "MISS", "procedure_id": 3, "take_id": 2, "frame_idx": 7}) == "MISS_3_2"
    assert surgery_type("MISS_3_2") == "MISS"
    assert surgery_type("Ultrasound_5_1") == "Ultrasound"


def _random_frames(seed: int, n: int) -> list[tuple[str, list[T], list[T]]]:
    rng = random.Random(seed)
    frames = []
    for _ in range(n):
        pool = rng.sample(vocab.ENTITIES, 4)
        gt = [T(*rng.sample(pool, 2), rng.choice(vocab.PREDICATES)) for _ in range(rng.randint(0, 5))]
        frames.append((rng.choice(["MISS_1_1", "Ultrasound_2_1"]), gt, list(gt)))
    return frames


@pytest.mark.parametrize("protocol", ["paper", "gt"])
def test_perfect_predictions_score_one(protocol):
    group = overall(_random_frames(0, 50), protocol)
    assert group["pairs"] > 0
    assert group["macro"]["precision"] == group["macro"]["recall"] == group["macro"]["f1-score"] == 1.0
    assert group["relation_report"]["accuracy"] == 1.0
    assert group["triplet"]["f1-score"] == 1.0
    assert group["entity_report"]["accuracy"] == 1.0


def test_empty_predictions_known_values():
    frames = [
        ("MISS_1_1", [T(HS, PAT, "holding"), T(PAT, OT, "lyingon")], []),
        ("MISS_1_1", [T(AS, PAT, "touching")], []),
    ]
    paper = overall(frames, "paper")
    assert (paper["pairs"], paper["macro"], paper["relation_report"], paper["entity_report"]) == (0, None, None, None)
    assert paper["triplet"] == {"precision": 0.0, "recall": 0.0, "f1-score": 0.0, "tp": 0, "fp": 0, "fn": 3}
    # gt protocol: 6 + 2 pairs, 5 of them none, everything predicted none
    correct = overall(frames, "gt")
    assert correct["pairs"] == 8
    assert correct["relation_report"]["none"] == pytest.approx(
        {"precision": 5 / 8, "recall": 1.0, "f1-score": 10 / 13, "support": 5}
    )
    assert correct["macro"] == pytest.approx({"precision": 5 / 32, "recall": 1 / 4, "f1-score": 10 / 52, "labels": 4})
    assert correct["binary_report"]["interaction"]["f1-score"] == 0.0
    assert correct["entity_report"]["micro avg"] == pytest.approx(
        {"precision": 0.0, "recall": 0.0, "f1-score": 0.0, "support": 5}
    )


def test_paper_entity_report_is_degenerate_gt_entity_report_is_not():
    frames = [("MISS_1_1", [T(HS, PAT, "holding"), T(PAT, OT, "lyingon")], [T(HS, PAT, "holding")])]
    assert overall(frames, "paper")["entity_report"]["accuracy"] == 1.0
    entities = overall(frames, "gt")["entity_report"]
    assert "accuracy" not in entities
    assert entities[OT] == pytest.approx({"precision": 0.0, "recall": 0.0, "f1-score": 0.0, "support": 1})
    assert entities["micro avg"]["recall"] == pytest.approx(2 / 3)


def test_unknown_protocol_is_rejected():
    with pytest.raises(ValueError, match="protocol"):
        compute_metrics([], "strict")


def test_macro_is_none_without_support():
    report = classification_report(np.zeros((23, 23), dtype=int), vocab.RELATION_LABELS)
    assert macro_over_supported(report, vocab.RELATION_LABELS) is None


def _confusion(truth: np.ndarray, guess: np.ndarray, n_labels: int) -> np.ndarray:
    """Rows = truth labels, columns = guesses, the last extra column for guesses outside the labels (-1)."""
    confusion = np.zeros((n_labels, n_labels + 1), dtype=int)
    np.add.at(confusion, (truth, np.where(guess < 0, n_labels, guess)), 1)
    return confusion


def _assert_same_report(ours: dict, theirs: dict) -> None:
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        assert ours[key] == pytest.approx(value, abs=1e-12), key


@pytest.mark.parametrize("seed", range(6))
def test_classification_report_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    n_labels, names = len(vocab.RELATION_LABELS), list(vocab.RELATION_LABELS)
    present = rng.choice(n_labels, size=rng.integers(2, n_labels), replace=False)  # some labels never occur
    truth = rng.choice(present, size=400)
    guess = np.where(rng.random(400) < 0.6, truth, rng.integers(0, n_labels, size=400))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = sklearn_report(truth, guess, labels=range(n_labels), target_names=names, output_dict=True)
    _assert_same_report(classification_report(_confusion(truth, guess, n_labels)[:, :n_labels], names), expected)

    # entity-style: guesses of -1 fall outside the labels, so sklearn reports a micro avg instead of accuracy
    entity_names = list(vocab.ENTITY_LABELS)
    truth = rng.integers(0, len(entity_names) - 1, size=300)
    guess = np.where(rng.random(300) < 0.7, truth, -1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = sklearn_report(
            truth, guess, labels=range(len(entity_names)), target_names=entity_names, output_dict=True
        )
    _assert_same_report(classification_report(_confusion(truth, guess, len(entity_names)), entity_names), expected)


def _noisy_frames(seed: int, takes: list[str], n: int) -> list[tuple[str, list[T], list[T]]]:
    """Frames whose predictions keep, change or drop each ground-truth triplet."""
    rng = random.Random(seed)
    frames = []
    for _, gt, _ in _random_frames(seed, n):
        pred = [t if rng.random() < 0.6 else t._replace(predicate=rng.choice(vocab.PREDICATES)) for t in gt]
        frames.append((rng.choice(takes), gt, [t for t in pred if rng.random() < 0.9]))
    return frames


def test_batched_macro_f1_is_the_headline():
    result = compute_metrics(_noisy_frames(1, ["MISS_1_1", "MISS_1_2", "Ultrasound_2_1"], 200))
    groups = [result["overall"], *result["surgery_types"].values(), *result["takes"].values()]
    stack = np.array([group["confusion_matrix"] for group in groups])
    expected = [group["macro"]["f1-score"] for group in groups]
    assert batched_macro_f1(stack) == pytest.approx(expected, abs=1e-12)
    assert np.isnan(batched_macro_f1(np.zeros((23, 23))))


def test_bootstrap_resamples_whole_takes():
    """One perfect take and one all-wrong take: resampling takes reaches both extremes (1.0, and the wrong
    take's own score); resampling single frames would stay near the pooled score."""
    perfect = [("MISS_1_1", [T(HS, PAT, "holding")], [T(HS, PAT, "holding")])] * 20
    wrong = [("MISS_1_2", [T(HS, PAT, "cutting")], [T(HS, PAT, "drilling")])] * 20
    result = compute_metrics(perfect + wrong)
    interval = result["overall"]["macro_f1_interval"]
    assert interval == result["surgery_types"]["MISS"]["macro_f1_interval"]  # one surgery type: the same draws
    assert interval["high"] == 1.0
    assert interval["low"] == result["takes"]["MISS_1_2"]["macro"]["f1-score"] < 0.5
    assert interval["low"] < result["overall"]["macro"]["f1-score"] < interval["high"]
    assert interval["takes"] == 2 and interval["samples"] == 1000 and interval["confidence"] == 0.95


def test_bootstrap_is_seeded_and_absent_without_takes_to_resample():
    frames = _noisy_frames(2, [f"MISS_1_{take}" for take in range(1, 9)], 300)
    first, again = (compute_metrics(frames, bootstrap=500, seed=3)["overall"] for _ in range(2))
    other = compute_metrics(frames, bootstrap=500, seed=4)["overall"]
    assert first["macro_f1_interval"] == again["macro_f1_interval"] != other["macro_f1_interval"]
    assert first["macro_f1_interval"]["low"] < first["macro"]["f1-score"] < first["macro_f1_interval"]["high"]
    one_take = [("MISS_1_1", gt, pred) for _, gt, pred in frames]
    assert compute_metrics(one_take)["overall"]["macro_f1_interval"] is None
    assert compute_metrics(frames, bootstrap=0)["overall"]["macro_f1_interval"] is None
