"""End to end: parsing rules through ``evaluate``, agreement with a re-statement of the reference evaluator, the CLI."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from matplotlib.colors import to_rgb
from sklearn.metrics import classification_report as sklearn_report

from egoexor import scene_graph, vocab
from egoexor.evaluate import InputError, confusion_figure, evaluate, f1_figure, main


def record(sample_id: str, answer: str, surgery_type: str = "MISS", procedure_id: int = 1, take_id: int = 1) -> dict:
    """A sample record in the LLaVA format the sample generator writes."""
    indices = {"surgery_type": surgery_type, "procedure_id": procedure_id, "take_id": take_id, "frame_idx": 0}
    indices["available_modalities"] = []
    conversations = [{"from": "human", "value": "<image>\nprompt"}, {"from": "gpt", "value": answer}]
    return {"id": sample_id, "timepoint": 0, "hdf5_indices": indices, "conversations": conversations}


GT = "<SG> head surgeon,patient,holding; patient,operating table,lyingon </SG>"


def test_unknown_names_drop_the_triplet():
    prediction = "<SG> head surgeon,patient,holding; robot,patient,touching; patient,operating table,close to </SG>"
    paper = evaluate({"a": prediction}, [record("a", GT)], "paper")["overall"]
    # the unknown 'robot' and the reference-unknown 'close to' leave {head surgeon, patient}
    assert paper["pairs"] == 2
    assert paper["triplet"]["tp"] == 1
    robust = evaluate({"a": prediction}, [record("a", GT)], "gt")["overall"]
    assert robust["triplet"] == pytest.approx(
        {"precision": 0.5, "recall": 0.5, "f1-score": 0.5, "tp": 1, "fp": 1, "fn": 1}
    )


def test_truncated_output_loses_its_first_triplet_in_paper_mode_only():
    truncated = "<SG> head surgeon,patient,holding; patient,operating table,lyingon; assis"
    paper = evaluate({"a": truncated}, [record("a", GT)], "paper")["overall"]
    assert paper["triplet"]["tp"] == 1  # '<SG> head surgeon' is not a name
    assert paper["pairs"] == 2  # entity set {patient, operating table}
    assert evaluate({"a": truncated}, [record("a", GT)], "gt")["overall"]["triplet"]["tp"] == 2


@pytest.mark.parametrize("protocol", ["paper", "gt"])
def test_entity_word_in_the_predicate_slot_is_predicted_none(protocol):
    group = evaluate({"a": "<SG> head surgeon,patient,patient </SG>"}, [record("a", GT)], protocol)["overall"]
    holding, none = vocab.RELATION_LABELS.index("holding"), vocab.RELATION_LABELS.index("none")
    assert group["confusion_matrix"][holding][none] == 1
    assert group["binary_report"]["interaction"]["recall"] == 0.0


def test_synonyms_resolve_in_both_modes():
    prediction = "<SG> head surgeon,patient,holding; patient,operation table,lyingOn </SG>"
    for protocol in ("paper", "gt"):
        assert evaluate({"a": prediction}, [record("a", GT)], protocol)["overall"]["triplet"]["f1-score"] == 1.0


def test_missing_and_unmatched_ids_are_reported_and_missing_scores_as_empty():
    samples = [record("a", GT), record("b", GT)]
    result = evaluate({"a": GT, "zz": GT, "yy": GT}, samples, "paper")
    assert result["missing_predictions"] == {"count": 1, "examples": ["b"], "scored_as": "empty prediction"}
    assert result["unmatched_predictions"] == {"count": 2, "examples": ["yy", "zz"], "scored_as": "ignored"}
    assert (result["samples"], result["predictions"]) == (2, 3)
    assert result["overall"]["triplet"]["fn"] == 2  # b's ground truth counts against recall
    assert result["overall"]["scored_frames"] == 2


def test_malformed_inputs_raise_input_error():
    with pytest.raises(InputError, match="conversations"):
        evaluate({}, [{"id": "a", "hdf5_indices": record("a", GT)["hdf5_indices"]}])
    with pytest.raises(InputError, match="subject, predicate, object"):
        evaluate({"a": [["head surgeon", "holding"]]}, [record("a", GT)])
    with pytest.raises(InputError, match="JSON object"):
        evaluate([GT], [record("a", GT)])


_SPELLINGS = {
    "anesthetist": ("anaesthetist", "Anesthetist"),
    "operating_table": ("operation table", "operation_table"),
    "microscope": ("microcope",),
    "closeto": ("closeTo", "close to", "CloseTo"),
    "lyingon": ("lyingOn", "lying on"),
    "looking": ("checking",),
    "anaesthetising": ("anesthasing",),
}
#: Chunks both parse modes drop: unknown entity, ``none`` as predicate, four fields, one field.
_BAD_CHUNKS = ("robot,patient,holding", "head surgeon,patient,none", "head surgeon,patient,holding,extra", "nonsense")
_TAKES = (("MISS", 1, 1), ("MISS", 2, 3), ("Ultrasound", 1, 2), ("Ultrasound", 5, 1))


def _spell(rng: random.Random, name: str) -> str:
    if name in _SPELLINGS and rng.random() < 0.3:
        return rng.choice(_SPELLINGS[name])
    return vocab.answer_form(name).title() if rng.random() < 0.05 else vocab.answer_form(name)


def _noisy_prediction(rng: random.Random, gt: list[tuple[str, str, str]], pool: list[str]) -> str:
    """Model-like output: misses, wrong and conflicting predicates, duplicates, spurious triplets, synonyms,
    spaced predicates, entity words as predicates, unknown names, bad chunks, truncation, missing tags.

    Subjects and objects are never predicate words: the reference evaluator crashes on those.
    """
    triplets = []
    for subject, obj, predicate in gt:
        roll = rng.random()
        if roll < 0.1:
            continue
        triplets.append((subject, obj, rng.choice(vocab.PREDICATES) if roll < 0.2 else predicate))
        if rng.random() < 0.1:
            triplets.append((subject, obj, rng.choice(vocab.PREDICATES)))
        if rng.random() < 0.1:
            triplets.append(triplets[-1])
    for _ in range(rng.choice((0, 0, 1, 2))):
        triplets.append((rng.choice(pool), rng.choice(vocab.ENTITIES), rng.choice(vocab.PREDICATES)))
    if gt and rng.random() < 0.1:
        triplets.insert(0, (gt[0][0], gt[0][1], rng.choice(vocab.ENTITIES)))
    if rng.random() < 0.3:
        rng.shuffle(triplets)
    chunks = [",".join(_spell(rng, name) for name in triplet) for triplet in triplets]
    if rng.random() < 0.1:
        chunks.insert(rng.randint(0, len(chunks)), rng.choice(_BAD_CHUNKS))
    text = "<SG> " + "; ".join(chunks) + " </SG>"
    style = rng.random()
    if style < 0.1:
        text = text[: rng.randrange(len(text))]
    elif style < 0.15:
        text = "; ".join(chunks)
    elif style < 0.2:
        text = '"""thinking; head surgeon,patient,cutting"""' + text + "</s>"
    elif style < 0.25:
        text = text.replace("; ", ";\n") + "."
    return text


def random_dataset(seed: int, n_frames: int) -> tuple[list[dict], dict[str, str]]:
    """Samples (ground truth with empty frames, conflicting and duplicate triplets) and noisy text predictions."""
    rng = random.Random(seed)
    samples, predictions = [], {}
    for frame in range(n_frames):
        surgery_type, procedure_id, take_id = rng.choice(_TAKES)
        pool = rng.sample(vocab.ENTITIES, 5)
        gt = [
            (rng.choice(pool), rng.choice(pool), rng.choice(vocab.PREDICATES)) for _ in range(rng.choice((0, 1, 3, 6)))
        ]
        if gt and rng.random() < 0.2:
            gt.append((gt[0][0], gt[0][1], rng.choice(vocab.PREDICATES)))
        sample_id = f"{surgery_type}_{procedure_id}_{take_id}_{frame}_0"
        samples.append(record(sample_id, scene_graph.serialize(gt), surgery_type, procedure_id, take_id))
        predictions[sample_id] = _noisy_prediction(rng, gt, pool)
    return samples, predictions


# --- An independent re-statement of the reference evaluator's per-frame loop, scored by sklearn. ---------------------

_REF_IDS = {name: i for i, name in enumerate(vocab.ENTITIES + vocab.PREDICATES)}
_REF_NAMES = vocab.ENTITIES + vocab.PREDICATES


def _ref_id(name: str) -> int:
    name = name.lower()
    name = vocab.PREDICATE_SYNONYMS.get(name, name)
    return _REF_IDS[vocab.ENTITY_SYNONYMS.get(name, name)]


def _ref_triplets(text: str, is_gt: bool) -> list[tuple[int, int, int]]:
    """(subject id, predicate id, object id) in text order, as the reference's parsing and id mapping yield them."""
    text = re.sub(r'""".*?"""', "", text, flags=re.DOTALL)
    if "<SG>" in text and "</SG>" in text and text.index("<SG>") < text.index("</SG>"):
        text = text.split("<SG>")[1].split("</SG>")[0].strip()
    ids = []
    for chunk in text.split(";"):
        chunk = chunk.replace(".", "").replace("</s>", "").replace("<s>", "").strip()
        fields = [field.strip() for field in chunk.split(",")]
        if not chunk or len(fields) != 3:
            continue
        subject, obj = (vocab.ENTITY_SYNONYMS.get(name, name) for name in fields[:2])
        predicate = vocab.PREDICATE_SYNONYMS.get(fields[2], fields[2]) if is_gt else fields[2]
        try:
            ids.append((_ref_id(subject.replace(" ", "_")), _ref_id(predicate), _ref_id(obj.replace(" ", "_"))))
        except KeyError:
            continue
    return ids


def _reference_lists(samples: list[dict], predictions: dict[str, str]) -> dict[str, dict[str, tuple[list, list]]]:
    """Per take: (truth, guess) lists of the relation, binary and entity reports."""
    relations, classes = list(vocab.RELATION_LABELS), list(vocab.ENTITY_LABELS)
    none = relations.index("none")
    takes: dict[str, dict[str, tuple[list, list]]] = defaultdict(lambda: {k: ([], []) for k in ("rel", "bin", "ent")})
    for sample in samples:
        indices = sample["hdf5_indices"]
        lists = takes[f"{indices['surgery_type']}_{indices['procedure_id']}_{indices['take_id']}"]
        gt = _ref_triplets(sample["conversations"][1]["value"], is_gt=True)
        pred = _ref_triplets(predictions[sample["id"]], is_gt=False)
        named = sorted({s for s, _, _ in pred} | {o for _, _, o in pred})
        for a in named if gt else []:
            lists["ent"][0].append(classes.index(_REF_NAMES[a]))
            lists["ent"][1].append(classes.index(_REF_NAMES[a]))  # always named: the set comes from predictions
            for b in named:
                if a == b:
                    continue
                truth = next((r for s, r, o in gt if (s, o) == (a, b)), None)
                lists["rel"][0].append(none if truth is None else relations.index(_REF_NAMES[truth]))
                lists["bin"][0].append(int(truth is not None))
                guess = next((_REF_NAMES[r] for s, r, o in pred if (s, o) == (a, b)), None)
                lists["rel"][1].append(relations.index(guess) if guess in relations else none)
                lists["bin"][1].append(int(guess in relations))
    return {take: takes[take] for take in sorted(takes) if takes[take]["rel"][0]}


def _sklearn(truth: list, guess: list, names: tuple[str, ...]) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sklearn_report(truth, guess, labels=list(range(len(names))), target_names=list(names), output_dict=True)


def _paper_macro(report: dict) -> dict:
    supported = [report[name] for name in vocab.RELATION_LABELS if report[name]["support"] > 0]
    return {key: float(np.mean([row[key] for row in supported])) for key in ("precision", "recall", "f1-score")}


def _assert_reports_close(ours: dict, theirs: dict) -> None:
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        assert ours[key] == pytest.approx(value, abs=5e-5), key


def _assert_group_matches(group: dict, lists: dict[str, tuple[list, list]]) -> None:
    relation = _sklearn(*lists["rel"], vocab.RELATION_LABELS)
    macro = {key: group["macro"][key] for key in ("precision", "recall", "f1-score")}
    assert macro == pytest.approx(_paper_macro(relation), abs=5e-5)
    _assert_reports_close(group["relation_report"], relation)
    _assert_reports_close(group["binary_report"], _sklearn(*lists["bin"], ("no_interaction", "interaction")))
    _assert_reports_close(group["entity_report"], _sklearn(*lists["ent"], vocab.ENTITY_LABELS))


def test_paper_protocol_reproduces_the_reference_evaluator():
    samples, predictions = random_dataset(seed=7, n_frames=400)
    result = evaluate(predictions, samples, "paper")
    takes = _reference_lists(samples, predictions)
    assert list(takes) == [take for take, group in result["takes"].items() if group["pairs"]]
    by_type: dict[str, dict[str, tuple[list, list]]] = defaultdict(lambda: {k: ([], []) for k in ("rel", "bin", "ent")})
    everything = {k: ([], []) for k in ("rel", "bin", "ent")}
    for take, lists in takes.items():
        _assert_group_matches(result["takes"][take], lists)
        for pooled in (by_type["MISS" if "MISS" in take else "Ultrasound"], everything):
            for key, (truth, guess) in lists.items():
                pooled[key][0].extend(truth)
                pooled[key][1].extend(guess)
    for surgery_type, lists in by_type.items():
        _assert_group_matches(result["surgery_types"][surgery_type], lists)
    _assert_group_matches(result["overall"], everything)
    assert result["overall"]["pairs"] > 1000 and 0.2 < result["overall"]["macro"]["f1-score"] < 0.95


@pytest.mark.parametrize("protocol", ["paper", "gt"])
def test_reference_list_predictions_score_like_their_text(protocol):
    samples, predictions = random_dataset(seed=3, n_frames=150)
    mode = "reference" if protocol == "paper" else "robust"
    as_lists = {
        sample_id: [[subject, predicate, obj] for subject, obj, predicate in scene_graph.split_fields(text, mode)]
        for sample_id, text in predictions.items()
    }
    from_lists, from_text = evaluate(as_lists, samples, protocol), evaluate(predictions, samples, protocol)
    assert from_lists["unparsable_predictions"]["count"] == 0  # a list of fields is parsed already
    assert from_text["unparsable_predictions"]["count"] > 0  # truncated texts without a chunk
    del from_lists["unparsable_predictions"], from_text["unparsable_predictions"]
    assert from_lists == from_text


_FRAGMENTS = (
    '<SG>|</SG>|<sg>|;|,| |.|"""|</s>|\n|none|close to|lyingOn|operation table|head surgeon|patient|holding|-|é'
)


@settings(max_examples=150, deadline=None)
@given(
    text=st.one_of(st.text(), st.lists(st.sampled_from(_FRAGMENTS.split("|")), max_size=40).map("".join)),
    protocol=st.sampled_from(["paper", "gt"]),
)
def test_evaluate_never_raises_on_arbitrary_prediction_text(text, protocol):
    result = evaluate({"a": text}, [record("a", GT)], protocol)
    json.dumps(result, allow_nan=False)
    assert result["overall"]["scored_frames"] == 1


# --- The command line. ------------------------------------------------------------------------------------------------


@pytest.fixture
def inputs(tmp_path: Path) -> tuple[Path, Path]:
    samples, predictions = random_dataset(seed=1, n_frames=60)
    del predictions[samples[0]["id"]]
    predictions["not_a_sample"] = GT
    (tmp_path / "samples.json").write_text(json.dumps(samples))
    (tmp_path / "predictions.json").write_text(json.dumps(predictions))
    return tmp_path / "predictions.json", tmp_path / "samples.json"


def test_cli_writes_every_output_and_prints_the_headline(inputs, tmp_path, capsys):
    predictions, samples = inputs
    out = tmp_path / "out"
    argv = ["--predictions", str(predictions), "--samples", str(samples), "--protocol", "gt", "--out", str(out)]
    assert main(argv) == 0
    written = sorted(path.name for path in out.iterdir())  # no temporary files left behind
    assert written == [".egoexor.evaluate", "confusion_matrix.png", "f1_per_predicate.png", "metrics.json", "report.md"]
    result = json.loads((out / "metrics.json").read_text())
    assert result["protocol"] == "gt" and result["missing_predictions"]["count"] == 1
    assert set(result["surgery_types"]) == {"MISS", "Ultrasound"}
    assert len(result["overall"]["confusion_matrix"]) == 23
    assert (out / "confusion_matrix.png").read_bytes().startswith(b"\x89PNG")
    report = (out / "report.md").read_text()
    assert "## Per take" in report
    interval = result["overall"]["macro_f1_interval"]  # takes resampled: the default 1000 resamples, seed 0
    assert interval["low"] < result["overall"]["macro"]["f1-score"] < interval["high"] and interval["samples"] == 1000
    overall_row = next(line for line in report.splitlines() if line.startswith("| overall |"))
    assert f"| {interval['low']:.4f}-{interval['high']:.4f} |" in overall_row
    assert "1000 resamples (seed 0)" in report
    printed = capsys.readouterr().out
    for fragment in ("MISS", "Ultrasound", "overall", "macro F1", "95% CI", "1 samples without a prediction"):
        assert fragment in printed


@pytest.mark.parametrize(
    ("which", "content", "message"),
    [
        ("samples", None, "no such file"),
        ("samples", "{not json", "invalid JSON"),
        ("samples", '{"a": 1}', "expected a JSON list"),
        ("samples", json.dumps([{**record("a", GT), "conversations": None}]), "conversations"),
        ("samples", json.dumps([{**record("a", GT), "hdf5_indices": {}}]), "hdf5_indices"),
        ("samples", json.dumps([record("a", GT)])[:-1] + ", 3]", "record 1"),
        ("predictions", "[]", "expected a JSON object"),
        ("predictions", '{"a": 5}', "prediction for 'a'"),
        ("predictions", b"\xff\xfe", "cannot read"),
    ],
)
def test_cli_reports_bad_input_in_one_line(inputs, tmp_path, capsys, which, content, message):
    predictions, samples = inputs
    bad = tmp_path / "bad.json"
    if content is not None:
        bad.write_bytes(content if isinstance(content, bytes) else content.encode())
    paths = {"predictions": predictions, "samples": samples, which: bad}
    argv = [
        "--predictions",
        str(paths["predictions"]),
        "--samples",
        str(paths["samples"]),
        "--out",
        str(tmp_path / "o"),
    ]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and str(bad) in error and message in error
    assert not (tmp_path / "o").exists()


def test_cli_reports_an_unwritable_output_folder(inputs, tmp_path, capsys):
    predictions, samples = inputs
    taken = tmp_path / "a_file"
    taken.write_text("")
    assert main(["--predictions", str(predictions), "--samples", str(samples), "--out", str(taken / "out")]) == 2
    assert f"--out {taken / 'out'}: cannot be created: {taken} is a file" in capsys.readouterr().err


def test_cli_as_a_module_exits_2_without_traceback(tmp_path):
    missing = tmp_path / "missing.json"
    argv = ["--predictions", str(missing), "--samples", str(missing), "--out", str(tmp_path / "o")]
    done = subprocess.run([sys.executable, "-m", "egoexor.evaluate", *argv], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip() == f"egoexor.evaluate: error: --predictions {missing}: no such file"


def test_cli_help_explains_every_flag(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--predictions", "--samples", "--protocol", "--out", "paper", "gt"):
        assert flag in text


@pytest.fixture
def sparse_result() -> dict:
    """holding in both surgery types, lyingon only in MISS, cutting only predicted, 19 predicates nowhere."""
    samples = [
        record("a", GT, "MISS"),
        record("b", "<SG> head surgeon,patient,holding </SG>", "Ultrasound"),
    ]
    predictions = {
        "a": "<SG> head surgeon,patient,cutting; patient,operating table,lyingon </SG>",
        "b": "<SG> head surgeon,patient,holding </SG>",
    }
    return evaluate(predictions, samples, "paper", bootstrap=0)


def test_f1_plot_marks_labels_without_support_instead_of_drawing_zero(sparse_result):
    axes = f1_figure(sparse_result).axes[0]
    labels = vocab.RELATION_LABELS
    groups = {"overall": sparse_result["overall"], **sparse_result["surgery_types"]}
    supported = {
        name: {label for label in labels if group["relation_report"][label]["support"]}
        for name, group in groups.items()
    }
    assert supported["Ultrasound"] == {"holding", "none"} and "lyingon" in supported["MISS"]
    assert [container.get_label() for container in axes.containers] == list(groups)
    for container in axes.containers:  # no lyingon bar for Ultrasound; none for cutting (only predicted) anywhere
        drawn = {labels[int(bar.get_y() + bar.get_height() / 2)] for bar in container}
        assert drawn == supported[container.get_label()]
    marked = {labels[round(text.get_position()[1])] for text in axes.texts if text.get_text() == "no support"}
    overall = sparse_result["overall"]["relation_report"]
    assert marked == {label for label in labels if not overall[label]["support"]} and len(marked) == 20
    greyed = {tick.get_text().split(" (")[0] for tick in axes.get_yticklabels() if tick.get_color() == "#888888"}
    assert greyed == marked
    colours = {container.get_label(): container[0].get_facecolor() for container in axes.containers}
    zeros = {
        (labels[round(text.get_position()[1] - 0.4)], name)
        for text in axes.texts
        if text.get_text() == "0"
        for name, colour in colours.items()
        if to_rgb(text.get_color()) == colour[:3]
    }
    assert zeros == {("holding", "MISS")}  # F1 0 (cutting predicted instead) is written, not left blank


def test_confusion_plot_keeps_only_the_labels_that_occur(sparse_result):
    axes = confusion_figure(sparse_result).axes[0]
    kept = [label for label in vocab.RELATION_LABELS if label in {"holding", "cutting", "lyingon", "none"}]
    assert [tick.get_text() for tick in axes.get_yticklabels()] == kept
    assert [tick.get_text() for tick in axes.get_xticklabels()] == kept
    full = np.array(sparse_result["overall"]["confusion_matrix"])
    index = [vocab.RELATION_LABELS.index(label) for label in kept]
    expected = {
        (column, row, str(full[index[row], index[column]]))
        for row in range(len(kept))
        for column in range(len(kept))
        if full[index[row], index[column]]
    }
    cells = {(*map(round, text.get_position()), text.get_text()) for text in axes.texts}
    assert cells == expected and len(expected) >= 3
    assert min(text.get_fontsize() for text in axes.texts) >= 12  # 4 labels: large numbers
