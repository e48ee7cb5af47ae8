"""``egoexor.ablate`` and ``egoexor.infer --drop_modalities``: outputs, the overwrite rule, bad inputs.

An untrained tiny checkpoint is enough here: these tests are about the command, not about what it measures
(``test_input_paths.py`` checks that each removed input reaches its branch; docs/modality_benchmark.md has
what a trained tiny model learns).
"""

import json

import pytest
from matplotlib.container import ErrorbarContainer
from test_infer import checkpoint, few_samples, infer_args  # noqa: F401  (fixtures)

from egoexor import ablate, infer, modalities, scene_graph
from egoexor.data.synthetic import PARTS


def ablate_args(checkpoint, merged_file, samples, out, *extra):
    return [
        "--checkpoint",
        str(checkpoint),
        "--hdf5",
        str(merged_file),
        "--samples",
        str(samples),
        "--out",
        str(out),
        "--max_new_tokens",
        "5",
        "--batch_size",
        "3",
        "--num_workers",
        "0",
        *extra,
    ]


@pytest.fixture(scope="module")
def ablation(checkpoint, merged_file, few_samples, tmp_path_factory):
    out = tmp_path_factory.mktemp("ablation") / "out"
    argv = ablate_args(checkpoint, merged_file, few_samples, out, "--modalities", "gaze,exo", "--groups", "parts")
    assert ablate.main(argv) == 0
    return out


def test_outputs_one_row_per_removed_input_and_a_column_per_group(ablation, few_samples, capsys):
    result = json.loads((ablation / "ablation.json").read_text())
    assert [row["removed"] for row in result["rows"]] == ["none", "gaze", "exo"]
    assert result["groups"] == {part.modality: list(part.predicates) for part in PARTS}
    for row in result["rows"]:
        assert set(row["groups"]) == {part.modality for part in PARTS}
        assert all(
            value is None or 0 <= value <= 1 for value in (row["macro_f1"], row["triplet_f1"], *row["groups"].values())
        )
    table = (ablation / "ablation.md").read_text().splitlines()
    header = next(line for line in table if line.startswith("| removed |"))
    assert header.split(" | ")[1:4] == ["macro F1", "triplet F1", "ego_frames"]
    assert sum(line.startswith(("| none ", "| gaze ", "| exo ")) for line in table) == 3
    assert (ablation / "ablation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ids = {record["id"] for record in json.loads(few_samples.read_text())}
    for removed in ("none", "gaze", "exo"):
        lines = (ablation / "predictions" / f"{removed}.jsonl").read_text().splitlines()
        assert {json.loads(line)["id"] for line in lines} == ids


def test_existing_output_is_refused_and_overwrite_replaces_it(
    ablation,
    checkpoint,
    merged_file,
    few_samples,
    capsys,
):
    before = (ablation / "ablation.json").read_text()
    assert ablate.main(ablate_args(checkpoint, merged_file, few_samples, ablation, "--modalities", "audio")) == 2
    assert "already exists (pass --overwrite" in capsys.readouterr().err
    assert (ablation / "ablation.json").read_text() == before
    argv = ablate_args(checkpoint, merged_file, few_samples, ablation, "--modalities", "audio")  # groups: the data's
    assert ablate.main([*argv, "--overwrite"]) == 0
    result = json.loads((ablation / "ablation.json").read_text())
    assert [row["removed"] for row in result["rows"]] == ["none", "audio"] and result["groups"] == {}
    assert not (ablation / "predictions" / "gaze.jsonl").exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--modalities": "gaze,eye_gaze"}, "argument --modalities: unknown eye_gaze; choose from ego_frames"),
        ({"--groups": "predicates"}, "argument --groups: invalid choice: 'predicates'"),
        ({"--checkpoint": "{tmp}/nowhere"}, "--checkpoint {tmp}/nowhere: no such folder"),
        ({"--samples": "{tmp}/nowhere.json"}, "--samples {tmp}/nowhere.json: no such file"),
        ({"--out": "{checkpoint}"}, "--out {checkpoint}: is also an input"),
        ({"--out": "{checkpoint}/.."}, "holds the input {checkpoint}"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    change,
    message,
    checkpoint,
    merged_file,
    few_samples,
    tmp_path,
    capsys,
):
    values = {"--checkpoint": str(checkpoint), "--out": str(tmp_path / "out"), "--samples": str(few_samples)}
    values.update({flag: value.format(tmp=tmp_path, checkpoint=checkpoint) for flag, value in change.items()})
    argv = ablate_args(values["--checkpoint"], merged_file, values["--samples"], values["--out"])
    argv += [token for flag in ("--modalities", "--groups") if flag in values for token in (flag, values[flag])]
    before = sorted(path.name for path in checkpoint.iterdir())
    assert ablate.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("egoexor.ablate: error: ")
    assert message.format(tmp=tmp_path, checkpoint=checkpoint) in err[0]
    assert not (tmp_path / "out").exists() and sorted(path.name for path in checkpoint.iterdir()) == before


def test_ctrl_c_is_one_line_exit_130_and_leaves_no_output(
    checkpoint,
    merged_file,
    few_samples,
    tmp_path,
    monkeypatch,
    capsys,
):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(infer, "generate_shard", interrupt)
    assert ablate.main(ablate_args(checkpoint, merged_file, few_samples, tmp_path / "out")) == 130
    assert capsys.readouterr().err.strip() == "egoexor.ablate: interrupted"
    assert list(tmp_path.iterdir()) == []


def test_infer_drop_modalities_is_checked_and_recorded_as_another_run(
    checkpoint,
    merged_file,
    few_samples,
    tmp_path,
    capsys,
):
    argv = infer_args(checkpoint, merged_file, few_samples, tmp_path / "out", "--num_workers", "0")
    assert infer.main([*argv, "--drop_modalities", "gaze,smell"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"egoexor.infer: error: argument --drop_modalities: unknown smell; choose from "
        f"{', '.join(modalities.droppable())} (see --help)"
    )
    assert infer.main([*argv, "--drop_modalities", "gaze,audio"]) == 0
    assert json.loads((tmp_path / "out" / infer.RUN_FILE).read_text())["drop_modalities"] == ["gaze", "audio"]
    assert infer.main([*argv, "--drop_modalities", "gaze,audio"]) == 0  # the same run: resumed, not refused
    capsys.readouterr()
    assert infer.main([*argv, "--drop_modalities", "hands"]) == 2  # another run
    assert "holds predictions of another run" in capsys.readouterr().err


def _row(removed, macro, interval, triplet=0.5, group=0.5):
    bounds = None if interval is None else {"low": interval[0], "high": interval[1]}
    return {
        "removed": removed,
        "macro_f1": macro,
        "macro_f1_interval": bounds,
        "triplet_f1": triplet,
        "groups": {"gaze": group},
    }


def test_plot_shows_the_change_against_the_full_model_with_intervals_where_there_are_some():
    rows = [
        _row("none", 0.8, (0.7, 0.9), triplet=0.6, group=0.9),
        _row("gaze", 0.5, (0.4, 0.65), triplet=0.6, group=0.3),
        _row("exo", 0.75, None, triplet=None, group=0.9),
    ]
    heat, bars = ablate.figure(rows).axes[:2]
    assert [tick.get_text() for tick in heat.get_yticklabels()] == ["gaze", "exo"]  # the full model is the reference
    cells = {(round(x), round(y)): text.get_text() for text in heat.texts for x, y in [text.get_position()]}
    assert cells == {(0, 0): "-0.30", (1, 0): "+0.00", (2, 0): "-0.60", (0, 1): "-0.05", (2, 1): "+0.00"}
    assert "macro F1 0.800" in heat.get_title() and "triplet F1 0.600" in heat.get_title()
    widths = [bar.get_width() for bar in bars.patches if bar.get_height() == pytest.approx(0.6)]
    assert widths == pytest.approx([-0.3, -0.05])
    (errorbar,) = [c for c in bars.containers if isinstance(c, ErrorbarContainer)]  # gaze has an interval, exo none
    segment = errorbar.lines[2][0].get_segments()[0]
    assert segment[:, 0] == pytest.approx([0.4 - 0.8, 0.65 - 0.8]) and segment[0, 1] == 0
    band = next(patch for patch in bars.patches if patch.get_label() == "full model")
    assert band.get_x() == pytest.approx(-0.1) and band.get_width() == pytest.approx(0.2)


@pytest.fixture(scope="module")
def parts_data(tmp_path_factory):
    """A small ``parts`` dataset (the modality benchmark's data), merged, with its test samples."""
    from egoexor.data.make_samples import write_samples
    from egoexor.data.merge_h5 import merge_files
    from egoexor.data.synthetic import generate

    folder = tmp_path_factory.mktemp("parts")
    dataset = generate(folder / "raw", "parts", seed=0, n_frames=12)
    merge_files(dataset.files, dataset.splits_file, folder / "parts.h5")
    summary = write_samples(folder / "parts.h5", "test", folder / "samples", tokenizer=None)
    return folder / "parts.h5", summary.samples_file


def test_choice_candidates_put_each_predicate_of_the_group_in_the_triplets_place(parts_data):
    from egoexor.data.samples import load_samples

    sample = load_samples(parts_data[1])[0]
    cases = ablate.choice_candidates(sample, ablate.GROUPS["parts"])
    assert len(cases) == len(scene_graph.parse(sample.answer, "robust")) == 6  # one part per triplet
    for group, truth, texts in cases:
        assert texts[truth] == sample.answer and len(set(texts)) == 3
        others = [t for i, t in enumerate(texts) if i != truth]
        assert all(len(set(scene_graph.parse(t)) ^ set(scene_graph.parse(sample.answer))) == 2 for t in others)
        assert {t.predicate for text in texts for t in scene_graph.parse(text)} >= set(ablate.GROUPS["parts"][group])


@pytest.mark.parametrize("truth_likeliest", [True, False])
def test_choice_counts_a_triplet_right_when_its_true_graph_is_likeliest(
    truth_likeliest, parts_data, checkpoint, monkeypatch, tmp_path
):
    from egoexor.data.samples import load_samples

    truths = {s.answer for s in load_samples(parts_data[1])}

    def losses(model, dataset, batch_size):
        return [float((s.answer in truths) != truth_likeliest) for s in dataset.samples]

    monkeypatch.setattr(ablate, "answer_losses", losses)
    hdf5, samples = parts_data
    argv = ablate_args(checkpoint, hdf5, samples, tmp_path / "out", "--metric", "choice", "--modalities", "gaze")
    rows = ablate.run(argv)
    assert [row["removed"] for row in rows] == ["none", "gaze"] and "macro_f1" not in rows[0]
    shares = [share for row in rows for share in row["choice"].values() if share is not None]
    assert len(shares) >= 10 and all(share["accuracy"] == float(truth_likeliest) for share in shares)
    assert "| none | " in (tmp_path / "out" / "ablation.md").read_text()


def test_choice_and_f1_side_by_side_on_the_benchmark_data(parts_data, checkpoint, tmp_path):
    hdf5, samples = parts_data
    argv = ablate_args(checkpoint, hdf5, samples, tmp_path / "out", "--metric", "f1,choice", "--modalities", "audio")
    rows = ablate.run(argv)  # groups follow the data: parts
    assert set(rows[0]["groups"]) == set(rows[0]["choice"]) == {part.modality for part in PARTS}
    counted = [share for share in rows[0]["choice"].values() if share is not None]
    assert all(0 <= share["accuracy"] <= 1 and share["n"] > 0 for share in counted)
    table = (tmp_path / "out" / "ablation.md").read_text()
    assert "Teacher-forced predicate choice" in table and "| audio |" in table and "macro F1" in table


def test_choice_on_data_without_groups_is_one_line(checkpoint, merged_file, few_samples, tmp_path, capsys):
    argv = ablate_args(checkpoint, merged_file, few_samples, tmp_path / "out", "--metric", "choice")
    assert ablate.main(argv) == 2
    assert "--metric choice needs predicate groups" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
