"""Scene-graph metrics: per-frame, per-ordered-entity-pair relation classification, as EgoExOR scores it.

**Evaluation.** The EgoExOR evaluator does not match triplets. For every frame it builds an entity
set, and each ordered pair ``(a, b)``, ``a != b``, of that set becomes one classification sample over
23 labels (:data:`egoexor.vocab.RELATION_LABELS`: the 22 predicates and ``none``). The ground-truth
label is the predicate of the first ground-truth triplet ``(a, r, b)`` in text order, else ``none``;
the predicted label is that of the first predicted ``(a, r, b)``, else ``none``, and ``none`` too when
``r`` is not a predicate (names share one space, so a model can write an entity in the predicate
slot). Frames whose ground truth is empty are not scored at all. The headline number is the macro
P/R/F1 over the labels that occur in the ground truth (support > 0), ``none`` included; sklearn's
plain ``macro avg`` over all 23 labels, the accuracy row (micro), a binary interaction report and an
entity report come with it. Everything is pooled per take, per surgery type and overall (pooling adds
confusion matrices; it never averages takes).

Two protocols:

``paper``
    Bit-for-bit the reference evaluator (``scene_graph_prediction_model.py``): ``reference`` parsing
    for ground truth and prediction, and the entity set taken from the **predicted** triplets (a
    known bug of the reference; MM-OR used the ground truth). Ground-truth relations between
    entities the model never names are ignored, so recall is inflated, and the entity report is
    degenerate (every entry is a hit).
``gt``
    The protocol of MM-OR / 4D-OR: ``robust`` parsing, entity set from the **ground-truth** triplets.
    Use this for a correct number; use ``paper`` to compare with published EgoExOR figures.

Both protocols also report exact-triplet precision/recall/F1: the set of (subject, object,
predicate) triplets of a frame against the ground-truth set, counts summed over **all** frames,
empty-ground-truth frames included (so hallucinations on empty frames cost precision here, unlike in
the pair metric). Undefined ratios are 0, as sklearn's ``zero_division`` does.

Two reference behaviours needed a decision, since the reference crashes on them: a subject or
object that is a predicate word enters the entity set as usual (so the pair metric is exactly what
the reference computes up to its crash) but is left out of the entity report, where the reference
raises ``ValueError``; such names are counted in ``non_entity_names``. A ground-truth triplet whose
predicate is not a predicate (the reference raises too) gives the label ``none``, as a prediction
would. Takes without a single scored pair are absent from the reference's output; their (possible)
entity entries are likewise left out of the pooled entity reports.

**Uncertainty.** The overall and per-surgery-type macro F1 come with a bootstrap confidence interval
(``macro_f1_interval``, 95 %, 1000 resamples, seeded): the **takes** are resampled with replacement,
each with all its frames, within each surgery type (the frames of one take are consecutive moments of one
recording, far from independent, so resampling single frames would give an interval that is too narrow;
the test set's mix of surgery types is held fixed). Each resample pools the drawn takes' confusion
matrices, so it costs one matrix product, not a re-scoring. With fewer than two takes there is nothing
to resample and the interval is ``None``; with a handful of takes it is coarse, and honestly wide.

The reports are computed from confusion matrices with numpy (the same numbers as sklearn's
``classification_report(..., output_dict=True)`` with ``zero_division=0``), so nothing here needs
sklearn or torch, and 100k frames take seconds.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import numpy as np

from egoexor import vocab
from egoexor.scene_graph import ParseMode, Triplet

Protocol = Literal["paper", "gt"]
PROTOCOLS: tuple[str, ...] = get_args(Protocol)
#: How each protocol parses ground truth and predictions.
PARSE_MODE: dict[str, ParseMode] = {"paper": "reference", "gt": "robust"}
#: Where each protocol takes a frame's entity set from.
ENTITY_SET: dict[str, str] = {"paper": "predicted", "gt": "ground_truth"}
BINARY_LABELS: tuple[str, ...] = ("no_interaction", "interaction")

_RELATION_ID: dict[str, int] = {name: i for i, name in enumerate(vocab.RELATION_LABELS)}
_PREDICATE_ID: dict[str, int] = {name: _RELATION_ID[name] for name in vocab.PREDICATES}
_NONE_ID = _RELATION_ID[vocab.NONE]
_N_RELATIONS = len(vocab.RELATION_LABELS)
_ENTITY_ID: dict[str, int] = {name: vocab.ENTITY_LABELS.index(name) for name in vocab.ENTITIES}
_N_ENTITY_LABELS = len(vocab.ENTITY_LABELS)
#: Column of the entity confusion matrix for "entity not predicted" (the reference's ``-1``).
_MISSED = _N_ENTITY_LABELS


def take_name(hdf5_indices: Mapping[str, Any]) -> str:
    """The pooling key of a sample, ``<surgery_type>_<procedure_id>_<take_id>``, as the reference builds it."""
    return f"{hdf5_indices['surgery_type']}_{hdf5_indices['procedure_id']}_{hdf5_indices['take_id']}"


def surgery_type(take: str) -> str:
    """The reference's data type of a take: ``MISS`` when the name contains it, else ``Ultrasound``."""
    miss, ultrasound = vocab.SURGERY_TYPES
    return miss if miss in take else ultrasound


@dataclass
class Counts:
    """Additive counts behind every report, so takes pool into surgery types and overall by summing.

    ``relation`` is the 23x23 confusion matrix (rows ground truth, columns prediction, label order
    of :data:`egoexor.vocab.RELATION_LABELS`); ``entity`` is 37x38 over
    :data:`egoexor.vocab.ENTITY_LABELS` with a last column for "entity not predicted".
    """

    relation: np.ndarray = field(default_factory=lambda: np.zeros((_N_RELATIONS, _N_RELATIONS), dtype=np.int64))
    entity: np.ndarray = field(default_factory=lambda: np.zeros((_N_ENTITY_LABELS, _MISSED + 1), dtype=np.int64))
    frames: int = 0
    scored_frames: int = 0
    triplet_tp: int = 0
    triplet_fp: int = 0
    triplet_fn: int = 0
    non_entity_names: int = 0

    @property
    def pairs(self) -> int:
        return int(self.relation.sum())


class _Tally:
    """Per-take accumulation in plain Python lists: per-frame numpy updates would dominate the run time.

    Only pairs that carry a ground-truth or predicted triplet are visited; every other pair of the
    entity set is a (none, none) sample and is counted without enumerating it.
    """

    def __init__(self, entities_from_gt: bool) -> None:
        self.entities_from_gt = entities_from_gt
        self.relation_codes: list[int] = []
        self.none_pairs = 0
        self.entity_codes: list[int] = []
        self.counts = Counts()

    def add(self, gt: Sequence[Triplet], pred: Sequence[Triplet]) -> None:
        counts = self.counts
        counts.frames += 1
        gt_set, pred_set = set(gt), set(pred)
        hits = len(gt_set & pred_set)
        counts.triplet_tp += hits
        counts.triplet_fp += len(pred_set) - hits
        counts.triplet_fn += len(gt_set) - hits
        if not gt:
            return
        counts.scored_frames += 1
        predicted = {name for triplet in pred for name in (triplet.subject, triplet.object)}
        entities = (
            {name for triplet in gt for name in (triplet.subject, triplet.object)}
            if self.entities_from_gt
            else predicted
        )
        gt_first = first_predicates(gt)
        pred_first = first_predicates(pred)
        visited = 0
        for pair in gt_first.keys() | pred_first.keys():
            a, b = pair
            if a == b or a not in entities or b not in entities:
                continue
            label = _PREDICATE_ID.get(gt_first.get(pair), _NONE_ID)
            guess = _PREDICATE_ID.get(pred_first.get(pair), _NONE_ID)
            self.relation_codes.append(label * _N_RELATIONS + guess)
            visited += 1
        self.none_pairs += len(entities) * (len(entities) - 1) - visited
        for name in entities:
            entity_id = _ENTITY_ID.get(name)
            if entity_id is None:
                counts.non_entity_names += 1
            else:
                guess = entity_id if name in predicted else _MISSED
                self.entity_codes.append(entity_id * (_N_ENTITY_LABELS + 1) + guess)

    def result(self) -> Counts:
        counts = self.counts
        counts.relation = _histogram(self.relation_codes, counts.relation.shape)
        counts.relation[_NONE_ID, _NONE_ID] += self.none_pairs
        counts.entity = _histogram(self.entity_codes, counts.entity.shape)
        return counts


def _histogram(codes: list[int], shape: tuple[int, ...]) -> np.ndarray:
    """Matrix of counts from flat ``row * n_columns + column`` codes."""
    size = int(np.prod(shape))
    return np.bincount(np.asarray(codes, dtype=np.int64), minlength=size).reshape(shape)


def first_predicates(triplets: Sequence[Triplet]) -> dict[tuple[str, str], str]:
    """Ordered pair -> predicate of its first triplet in text order (the reference's loop ``break``)."""
    first: dict[tuple[str, str], str] = {}
    for subject, obj, predicate in triplets:
        first.setdefault((subject, obj), predicate)
    return first


def _ratio(numerator: np.ndarray | int, denominator: np.ndarray | int) -> np.ndarray:
    """Elementwise numerator/denominator with 0 where the denominator is 0 (sklearn's zero_division=0)."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)


def _scores(precision: float, recall: float, f1: float, support: int) -> dict[str, float | int]:
    return {"precision": float(precision), "recall": float(recall), "f1-score": float(f1), "support": int(support)}


def classification_report(confusion: np.ndarray, target_names: Sequence[str]) -> dict[str, Any]:
    """sklearn's ``classification_report(output_dict=True, zero_division=0)``, from a confusion matrix.

    ``confusion`` is L x L (rows ground truth) or L x (L+1), where the extra column counts predictions
    outside the label set (the entity report's ``-1``). As in sklearn, the micro row is ``accuracy``
    when every prediction is one of the labels and ``micro avg`` otherwise.
    """
    confusion = np.asarray(confusion, dtype=np.int64)
    n_labels = len(target_names)
    tp = np.diag(confusion[:, :n_labels])
    support = confusion.sum(axis=1)
    predicted = confusion[:, :n_labels].sum(axis=0)
    precision = _ratio(tp, predicted)
    recall = _ratio(tp, support)
    f1 = _ratio(2 * tp, predicted + support)
    report: dict[str, Any] = {
        name: _scores(precision[i], recall[i], f1[i], support[i]) for i, name in enumerate(target_names)
    }
    total = int(support.sum())
    if confusion.shape[1] == n_labels or not confusion[:, n_labels:].any():
        report["accuracy"] = float(_ratio(tp.sum(), total))
    else:
        report["micro avg"] = _scores(
            _ratio(tp.sum(), predicted.sum()),
            _ratio(tp.sum(), total),
            _ratio(2 * tp.sum(), predicted.sum() + total),
            total,
        )
    report["macro avg"] = _scores(precision.mean(), recall.mean(), f1.mean(), total)
    weights = _ratio(support, total)
    report["weighted avg"] = _scores(precision @ weights, recall @ weights, f1 @ weights, total)
    return report


def macro_over_supported(report: Mapping[str, Any], target_names: Sequence[str]) -> dict[str, float | int] | None:
    """The paper's headline: mean P/R/F1 over the labels with support > 0 (``none`` included).

    ``None`` when no label has support (the reference prints ``nan`` there).
    """
    supported = [report[name] for name in target_names if report[name]["support"] > 0]
    if not supported:
        return None
    means = {key: float(np.mean([row[key] for row in supported])) for key in ("precision", "recall", "f1-score")}
    return {**means, "labels": len(supported)}


def _binary_confusion(relation: np.ndarray) -> np.ndarray:
    """Collapse the 23x23 matrix to interaction / no interaction (a pair interacts iff its label is not none)."""
    interacts = np.arange(_N_RELATIONS) != _NONE_ID
    return np.array(
        [
            [relation[~interacts][:, ~interacts].sum(), relation[~interacts][:, interacts].sum()],
            [relation[interacts][:, ~interacts].sum(), relation[interacts][:, interacts].sum()],
        ]
    )


def summarize(counts: Counts) -> dict[str, Any]:
    """Every number of one pooled group; reports are ``None`` where the group has nothing to score."""
    relation_report = classification_report(counts.relation, vocab.RELATION_LABELS) if counts.pairs else None
    has_entities = bool(counts.entity.any())
    tp, fp, fn = counts.triplet_tp, counts.triplet_fp, counts.triplet_fn
    return {
        "frames": counts.frames,
        "scored_frames": counts.scored_frames,
        "pairs": counts.pairs,
        "macro": macro_over_supported(relation_report, vocab.RELATION_LABELS) if relation_report else None,
        "relation_report": relation_report,
        "confusion_matrix": counts.relation.tolist(),
        "binary_report": classification_report(_binary_confusion(counts.relation), BINARY_LABELS)
        if counts.pairs
        else None,
        "entity_report": classification_report(counts.entity, vocab.ENTITY_LABELS) if has_entities else None,
        "non_entity_names": counts.non_entity_names,
        "triplet": {
            "precision": float(_ratio(tp, tp + fp)),
            "recall": float(_ratio(tp, tp + fn)),
            "f1-score": float(_ratio(2 * tp, 2 * tp + fp + fn)),
            "tp": tp,
            "fp": fp,
            "fn": fn,
        },
    }


def pool(groups: Iterable[Counts]) -> Counts:
    """Sum takes into one group; entity entries of takes without a scored pair are left out (reference)."""
    groups = list(groups)
    return Counts(
        relation=sum((g.relation for g in groups), Counts().relation),
        entity=sum((g.entity for g in groups if g.pairs), Counts().entity),
        frames=sum(g.frames for g in groups),
        scored_frames=sum(g.scored_frames for g in groups),
        triplet_tp=sum(g.triplet_tp for g in groups),
        triplet_fp=sum(g.triplet_fp for g in groups),
        triplet_fn=sum(g.triplet_fn for g in groups),
        non_entity_names=sum(g.non_entity_names for g in groups),
    )


#: Bootstrap resamples and confidence level of ``macro_f1_interval``.
BOOTSTRAP_SAMPLES, CONFIDENCE = 1000, 0.95


def batched_macro_f1(relation: np.ndarray) -> np.ndarray:
    """The headline macro F1 (:func:`macro_over_supported`) of each of a stack of confusion matrices
    ``[..., L, L]``; ``nan`` where no label has support."""
    relation = np.asarray(relation, dtype=np.float64)
    tp = np.diagonal(relation, axis1=-2, axis2=-1)
    support, predicted = relation.sum(axis=-1), relation.sum(axis=-2)
    f1 = _ratio(2 * tp, predicted + support)
    supported = support > 0
    labels = supported.sum(axis=-1)
    return np.divide((f1 * supported).sum(axis=-1), labels, out=np.full(labels.shape, np.nan), where=labels > 0)


def macro_f1_interval(
    strata: Sequence[Sequence[Counts]], samples: int = BOOTSTRAP_SAMPLES, seed: int = 0, confidence: float = CONFIDENCE
) -> dict[str, Any] | None:
    """Percentile bootstrap interval of the macro F1, takes resampled with replacement within each stratum
    (a list of takes' counts: one per surgery type); ``None`` with fewer than two takes in every stratum."""
    if samples < 1 or all(len(takes) < 2 for takes in strata):
        return None
    rng = np.random.default_rng(seed)
    pooled = np.zeros((samples, _N_RELATIONS * _N_RELATIONS))
    for takes in strata:
        matrices = np.stack([counts.relation.ravel() for counts in takes]).astype(np.float64)
        draws = rng.multinomial(len(takes), np.full(len(takes), 1 / len(takes)), size=samples)
        pooled += draws @ matrices
    macro = batched_macro_f1(pooled.reshape(samples, _N_RELATIONS, _N_RELATIONS))
    if np.isnan(macro).all():
        return None
    low, high = np.nanquantile(macro, [(1 - confidence) / 2, (1 + confidence) / 2])
    return {
        "low": float(low),
        "high": float(high),
        "confidence": confidence,
        "samples": samples,
        "seed": seed,
        "takes": sum(len(takes) for takes in strata),
        "resampled": "takes, within each surgery type",
    }


def check_protocol(protocol: str) -> None:
    """``ValueError`` unless ``protocol`` is one of :data:`PROTOCOLS` (callers check before parsing anything)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")


def compute_metrics(
    frames: Iterable[tuple[str, Sequence[Triplet], Sequence[Triplet]]],
    protocol: Protocol = "paper",
    *,
    bootstrap: int = BOOTSTRAP_SAMPLES,
    seed: int = 0,
) -> dict[str, Any]:
    """Score parsed frames ``(take, ground_truth, prediction)``; triplets in text order, parsed per :data:`PARSE_MODE`.

    Returns ``{"protocol", "parse_mode", "entity_set", "overall", "surgery_types", "takes"}``, the last
    three holding :func:`summarize` dictionaries (takes and surgery types in sorted order); overall and
    each surgery type also hold ``macro_f1_interval`` (:func:`macro_f1_interval` with ``bootstrap``
    resamples from ``seed``; 0 resamples: ``None``).
    """
    check_protocol(protocol)
    tallies: dict[str, _Tally] = {}
    for take, gt, pred in frames:
        tally = tallies.get(take)
        if tally is None:
            tally = tallies[take] = _Tally(entities_from_gt=protocol == "gt")
        tally.add(gt, pred)
    takes = {take: tallies[take].result() for take in sorted(tallies)}
    by_type: dict[str, list[Counts]] = defaultdict(list)
    for take, counts in takes.items():
        by_type[surgery_type(take)].append(counts)
    return {
        "protocol": protocol,
        "parse_mode": PARSE_MODE[protocol],
        "entity_set": ENTITY_SET[protocol],
        "overall": {
            **summarize(pool(takes.values())),
            "macro_f1_interval": macro_f1_interval(list(by_type.values()), bootstrap, seed),
        },
        "surgery_types": {
            name: {**summarize(pool(group)), "macro_f1_interval": macro_f1_interval([group], bootstrap, seed)}
            for name, group in sorted(by_type.items())
        },
        "takes": {take: summarize(counts) for take, counts in takes.items()},
    }
