"""python -m egoexor.viz: pixels where they belong, the right panels, a video of the right length, a page that loads."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path

import av
import numpy as np
import pytest
from matplotlib.colors import to_rgb
from PIL import Image

from egoexor import cli, scene_graph, vocab
from egoexor.data.layout import TakeKey
from egoexor.data.reader import EgoExorReader
from egoexor.modalities.audio import FRAME_MARK_COLOUR, spectrogram
from egoexor.modalities.gaze import GAZE_COLOUR
from egoexor.modalities.hands import HAND_COLOURS
from egoexor.scene_graph import Triplet
from egoexor.viz import errors, graph
from egoexor.viz.__main__ import main
from egoexor.viz.timepoint import NOTE_COLOUR, TimepointFigure, render

TAKE, FRAME = TakeKey("MISS", 1, 1), 4  # every gaze row of this frame is valid; the anesthetist's has an offset


def _rgb(colour: str) -> np.ndarray:
    return np.round(np.array(to_rgb(colour)) * 255).astype(int)


def _mask(image: np.ndarray, colour: str, box=None, tolerance: int = 0) -> np.ndarray:
    """Pixels of exactly ``colour`` (within ``tolerance``), limited to a panel's box."""
    hit = (np.abs(image.astype(int) - _rgb(colour)) <= tolerance).all(axis=-1)
    if box is not None:
        left, top, right, bottom = box
        inside = np.zeros_like(hit)
        inside[top:bottom, left:right] = True
        hit &= inside
    return hit


@pytest.fixture(scope="module")
def point(tiny_dataset):
    with EgoExorReader(tiny_dataset.directory / "miss_1.h5") as reader:
        return reader.read(TAKE, FRAME)


@pytest.fixture(scope="module")
def picture(point):
    return render(point, dpi=60)


def test_one_panel_per_camera_ego_first_plus_three(point, picture):
    names = [p.name for p in picture.panels]
    assert names == [
        *vocab.EGO_SOURCES,
        "or_light",
        "microscope",
        "external_1",
        "external_2",
        "external_3",
        "simstation",
        "audio",
        "point cloud",
        "scene graph",
    ]
    assert [p.kind for p in picture.panels[:4]] == ["ego"] * 4 and picture.panels[4].kind == "exo"
    for panel in picture.panels[:10]:  # each camera panel shows that camera's pixels (channels swapped, as BGR)
        frame = point.image(panel.name)
        for x, y in ((0, 0), (frame.shape[1] - 1, frame.shape[0] - 1)):
            column, row = (round(v) for v in panel.to_picture(x, y))
            assert np.abs(picture.image[row, column].astype(int) - frame[y, x, ::-1]).max() <= 2, panel.name


def test_gaze_marker_sits_at_the_gaze_pixel(point, picture):
    panels = {p.name: p for p in picture.panels}
    gaze = {vocab.SOURCE_NAMES[int(row[0])]: row[1:3] for row in point.arrays.get("gaze")}
    offset = np.array([-9.0, -4.0])  # the reference's fixation offset for the anesthetist in MISS 1 take 1
    for source, xy in (("head_surgeon", gaze["head_surgeon"]), ("anesthetist", gaze["anesthetist"] + offset)):
        mask = _mask(picture.image, GAZE_COLOUR, panels[source].box)
        assert mask.sum() > 30, source
        rows, columns = np.nonzero(mask)
        expected = np.array(panels[source].to_picture(*xy))
        assert np.abs(np.array([columns.mean(), rows.mean()]) - expected).max() < 1.5, source
    for panel in picture.panels[4:]:  # no gaze or hands anywhere else
        assert not _mask(picture.image, GAZE_COLOUR, panel.box).any(), panel.name
        assert not _mask(picture.image, HAND_COLOURS[1], panel.box).any(), panel.name


def test_hand_keypoints_on_ego_views(point, picture):
    panel = next(p for p in picture.panels if p.name == "circulator")
    row = point.arrays.get("hands")[point.arrays.get("hands")[:, 0] == vocab.SOURCES["circulator"]][0]
    right_wrist = row[1:17].reshape(8, 2)[2]
    assert np.isfinite(right_wrist).all()
    column, row_px = (round(v) for v in panel.to_picture(*right_wrist))
    window = picture.image[row_px - 3 : row_px + 4, column - 3 : column + 4]
    assert _mask(window, HAND_COLOURS[1]).sum() >= 9


def test_hands_are_drawn_above_the_gaze_marker(point):
    row = point.arrays.get("hands")[point.arrays.get("hands")[:, 0] == vocab.SOURCES["circulator"]][0]
    right_wrist = row[1:17].reshape(8, 2)[2]
    gaze = point.arrays.get("gaze").copy()
    gaze[gaze[:, 0] == vocab.SOURCES["circulator"], 1:3] = right_wrist  # the gaze marker covers the wrist
    picture = render(replace(point, arrays={**point.arrays, "gaze": gaze}), dpi=60)
    panel = next(p for p in picture.panels if p.name == "circulator")
    column, row_px = (round(v) for v in panel.to_picture(*right_wrist))
    window = picture.image[row_px - 3 : row_px + 4, column - 3 : column + 4]
    assert _mask(window, HAND_COLOURS[1]).sum() >= 9
    assert _mask(picture.image, GAZE_COLOUR, (column - 12, row_px - 12, column + 13, row_px + 13)).sum() > 10


def _outside_panels(image: np.ndarray, panels) -> np.ndarray:
    outside = np.ones(image.shape[:2], dtype=bool)
    for panel in panels:
        left, top, right, bottom = panel.box
        outside[top - 2 : bottom + 2, left - 2 : right + 2] = False
    return outside


def test_legend_of_gaze_and_hands_only_where_there_are_ego_views(point, picture):
    outside = _outside_panels(picture.image, picture.panels)
    top_right = np.zeros_like(outside)
    top_right[: picture.panels[0].box[1], picture.image.shape[1] // 2 :] = True
    for colour in (GAZE_COLOUR, *HAND_COLOURS):
        legend = _mask(picture.image, colour) & outside
        assert legend.sum() > 10 and not (legend & ~top_right).any(), colour
    no_cameras = render(replace(point, rgb=None), dpi=60)
    for colour in (GAZE_COLOUR, *HAND_COLOURS):
        assert not _mask(no_cameras.image, colour).any(), colour


def test_spectrogram_peaks_at_the_tone():
    seconds = np.arange(48_000) / 48_000
    audio = np.stack([np.sin(2 * np.pi * 3000 * seconds)] * 2, axis=1)
    power = spectrogram(audio)
    bins = np.fft.rfftfreq(2 * (power.shape[0] - 1), 1 / 48_000)
    assert abs(bins[power.mean(axis=1).argmax()] - 3000) <= bins[1]
    assert power.shape[1] > 100  # about as many time steps as frequencies


def test_audio_panel_marks_the_frame_and_says_nothing_of_channels(point):
    seconds = np.arange(48_000) / 48_000
    audio = np.stack([np.sin(2 * np.pi * 440 * seconds)] * 2, axis=1).astype(np.float32)  # a 1-s snippet
    figure = TimepointFigure(replace(point, arrays={**point.arrays, "audio": audio}), dpi=60)
    picture = figure.draw(replace(point, arrays={**point.arrays, "audio": audio}))
    left, top, right, bottom = next(p for p in picture.panels if p.name == "audio").box
    mark = _mask(picture.image, FRAME_MARK_COLOUR, tolerance=10)
    columns = np.nonzero(mark.any(axis=0))[0]
    assert mark[top:bottom, left:right].sum() > 20 and mark.sum() == mark[top - 2 : bottom + 2, left:right].sum()
    assert columns.min() <= left + 2 and columns.max() <= left + (right - left) / 15 + 3  # the first 1/15 s
    assert "blue" not in figure.panels["audio"].axes.get_title()
    silent = TimepointFigure(replace(point, arrays={k: v for k, v in point.arrays.items() if k != "audio"}), dpi=60)
    picture = silent.draw(replace(point, arrays={k: v for k, v in point.arrays.items() if k != "audio"}))
    assert not _mask(picture.image, FRAME_MARK_COLOUR, tolerance=10).any()
    assert (
        silent.panels["audio"].axes.get_title() == "audio" and "legend" not in silent.panels["audio"].axes.get_title()
    )


def test_what_the_parser_dropped_is_written_under_the_scene_graph(point):
    note = "unparsable: no subject,object,predicate chunk in 'the surgeon is busy'"
    with_note, without = render(point, [], note=note, dpi=60), render(point, [], dpi=60)
    left, top, right, bottom = with_note.panels[-1].box
    changed = (with_note.image != without.image).any(axis=-1)
    assert changed.sum() > 100 and changed.sum() == changed[bottom:, left:right].sum()  # under the graph only
    assert _mask(with_note.image, NOTE_COLOUR, tolerance=30)[bottom:, left:right].sum() > 50
    assert not _mask(without.image, NOTE_COLOUR, tolerance=30)[bottom:, left:right].any()


def test_scene_graph_places_are_fixed_for_a_take(tiny_dataset):
    with EgoExorReader(tiny_dataset.directory / "miss_1.h5") as reader:
        points = [reader.read(TAKE, frame) for frame in range(reader.frame_count(TAKE))]
    names = [{n for t in p.annotations or () for n in (t.subject, t.object)} for p in points]
    entities = list(dict.fromkeys(n for p in points for t in p.annotations or () for n in (t.subject, t.object)))

    def place(frame: int, name: str, fixed: list[str] | None) -> tuple[float, float]:
        figure = TimepointFigure(points[frame], dpi=30, entities=fixed)
        figure.draw(points[frame])
        return next(text.get_position() for text in figure.scene.texts if text.get_text() == name.replace("_", " "))

    # two frames where placing each frame's own entities moves a shared one (what a video must not do)
    first, second, shared = next(
        (a, b, name)
        for a in range(len(points))
        for b in range(a)
        for name in sorted(names[a] & names[b])
        if names[a] != names[b] and place(a, name, None) != place(b, name, None)
    )
    assert place(first, shared, entities) == place(second, shared, entities)


def test_scene_graph_edges_are_coloured_by_status(point):
    truth = point.annotations
    spurious = truth[0]._replace(predicate="cutting" if truth[0].predicate != "cutting" else "holding")
    picture = render(point, [truth[0], spurious], dpi=60)
    box = picture.panels[-1].box
    statuses = dict.fromkeys(s for _, s in graph.compare(truth, [truth[0], spurious]))
    for status in ("correct", "missed", "spurious"):
        assert (status in statuses) == bool(_mask(picture.image, graph.STYLES[status][0], box).sum() > 20), status
    plain = render(point, dpi=60)
    assert not any(_mask(plain.image, graph.STYLES[s][0], box).any() for s in ("correct", "missed", "spurious"))


def test_frame_command_writes_the_png_and_refuses_bad_input(tiny_dataset, point, tmp_path, capsys):
    hdf5 = str(tiny_dataset.directory / "miss_1.h5")
    predictions = tmp_path / "predictions.json"
    t = point.annotations[0]
    predictions.write_text(json.dumps({f"MISS_1_1_{FRAME}_0": [[t.subject, t.predicate, t.object]]}))
    out = tmp_path / "frame.png"
    argv = ["frame", "--hdf5", hdf5, "--take", "MISS/1/1", "--frame", str(FRAME), "--dpi", "40", "--out", str(out)]
    assert main([*argv, "--predictions", str(predictions)]) == 0
    assert Image.open(out).size[0] == 640
    capsys.readouterr()
    assert main(argv) == cli.EXIT_ERROR  # exists
    assert "already exists" in capsys.readouterr().err
    for bad, message in ((["--take", "MISS/1/7"], "no take data/MISS/1/take/7"), (["--frame", "99"], "out of range")):
        assert main([*argv, *bad, "--overwrite"]) == cli.EXIT_ERROR
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err


def test_take_command_video_frames_and_duration(tiny_dataset, tmp_path, capsys):
    out = tmp_path / "take.mp4"
    argv = [
        "take",
        "--hdf5",
        str(tiny_dataset.directory / "miss_1.h5"),
        "--take",
        "MISS/1/1",
        "--dpi",
        "30",
        "--frames",
        "3:9",
        "--audio",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        assert sum(1 for _ in container.decode(stream)) == 6
        assert float(stream.duration * stream.time_base) == pytest.approx(6 / 15, abs=1e-3)
        sound = container.streams.audio[0]  # the synthetic recording is shorter: padded with silence
        assert sound.sample_rate == 48_000 and float(sound.duration * sound.time_base) == pytest.approx(0.4, abs=0.03)
    outputs = capsys.readouterr()
    assert "6 frames, 0.40 s" in outputs.out and "silence fills the rest" in outputs.err
    assert main([*argv[:-1], str(tmp_path / "x.mp4"), "--frames", "9:3"]) == cli.EXIT_ERROR
    assert not (tmp_path / "x.mp4").exists()


UNPARSABLE = "the head surgeon is busy with something"
UNKNOWN_NAME = "head surgeon,patient,juggling"


@dataclass
class Results:
    """An evaluation of the test split whose every kind of error is known in advance."""

    folder: Path
    worst: str  # much wronger than every other frame
    unparsable: str
    unknown: str
    confused: list[str]  # one annotated relation replaced by another predicate of the same pair
    swapped: list[str]  # one annotated relation replaced by a relation of another pair
    rows: dict[
        tuple[str, str, str, str], list[str]
    ]  # the recurring confusions' rows (as the page writes them) -> frames


def _recurring_triplets(samples: list[dict], skip: set[str]) -> list[tuple[Triplet, list[str]]]:
    """The two triplets that are the first of the answer of the most frames outside ``skip`` (3 frames at most)."""
    frames: dict[Triplet, list[str]] = {}
    for sample in samples:
        truth = scene_graph.parse(sample["conversations"][1]["value"])
        if sample["id"] not in skip and truth:
            frames.setdefault(truth[0], []).append(sample["id"])
    top = sorted(frames.items(), key=lambda item: -len(item[1]))[:2]
    assert len(top) == 2 and all(len(ids) >= 2 for _, ids in top)
    return [(triplet, ids[:3]) for triplet, ids in top]


@pytest.fixture(scope="module")
def results(sample_files, tmp_path_factory) -> Results:
    from egoexor.evaluate import main as evaluate

    samples = json.loads(sample_files["test"].read_text())
    ids = [sample["id"] for sample in samples]
    worst, unparsable, unknown = ids[len(ids) // 2], ids[1], ids[2]
    empty = set(ids[::3])
    (triplet, confused), (replaced, swapped) = _recurring_triplets(samples, {worst, unparsable, unknown, *empty})
    wrong = next(p for p in vocab.PREDICATES if p != triplet.predicate)
    swap = Triplet("head_surgeon", "ultrasound_machine", "anaesthetising")  # a pair none of these frames has
    predictions = {}
    for sample in samples:
        text, truth = sample["conversations"][1]["value"], scene_graph.parse(sample["conversations"][1]["value"])
        if sample["id"] == worst:
            text = "<SG> patient,scalpel,cutting; head surgeon,bin,dropping; assistant,cotton,holding </SG>"
        elif sample["id"] == unparsable:
            text = UNPARSABLE
        elif sample["id"] == unknown:
            text = text.replace("</SG>", f"; {UNKNOWN_NAME} </SG>")
        elif sample["id"] in confused:
            spurious = Triplet("head_surgeon", "bin", "dropping")  # wronger than the empty answers: 2 of 3 shown
            text = scene_graph.serialize([triplet._replace(predicate=wrong), *truth[1:], spurious])
        elif sample["id"] in swapped:
            assert all((t.subject, t.object) != (swap.subject, swap.object) for t in truth)
            text = scene_graph.serialize([swap, *truth[1:]])
        elif sample["id"] in empty:
            text = "<SG> </SG>"  # one or two missed
        predictions[sample["id"]] = text
    folder = tmp_path_factory.mktemp("results")
    (folder / "predictions.json").write_text(json.dumps(predictions))
    out = folder / "eval"
    argv = [
        "--predictions",
        str(folder / "predictions.json"),
        "--samples",
        str(sample_files["test"]),
        "--out",
        str(out),
    ]
    assert evaluate(argv) == 0
    shutil.copy(folder / "predictions.json", out / "predictions.json")
    rows = {
        (triplet.predicate, wrong, f"{triplet.subject} &rarr; {triplet.object}", "same"): confused,
        (
            replaced.predicate,
            swap.predicate,
            f"{replaced.subject} &rarr; {replaced.object}",
            "head_surgeon &rarr; ultrasound_machine",
        ): swapped,
    }
    return Results(out, worst, unparsable, unknown, confused, swapped, rows)


def _errors_page(results: Results, merged_file: Path, out: Path, *extra: str) -> str:
    argv = ["errors", "--results", str(results.folder), "--hdf5", str(merged_file), "--dpi", "30", "--out", str(out)]
    assert main([*argv, *extra]) == 0
    return out.read_text()


@pytest.fixture(scope="module")
def error_page(results, merged_file, tmp_path_factory) -> str:
    return _errors_page(results, merged_file, tmp_path_factory.mktemp("page") / "errors.html", "--limit", "3")


def _part(text: str, start: str, end: str) -> str:
    """From ``start`` to the first ``end`` after it."""
    first = text.index(start)
    return text[first : text.index(end, first)]


def _sample_ids(text: str) -> list[str]:
    return re.findall(r'<section class="frame" id="[^"]+" data-sample="([^"]+)"', text)


def test_errors_page_headline_is_the_evaluations(results, error_page):
    evaluation = json.loads((results.folder / "metrics.json").read_text())
    headline = _part(error_page, '<table id="headline">', "</table>")
    rows = dict(re.findall(r'<tr data-group="([^"]+)" data-macro-f1="([^"]*)">', headline))
    assert set(rows) == {*evaluation["surgery_types"], "overall"}
    for group, shown in rows.items():
        expected = evaluation["overall"] if group == "overall" else evaluation["surgery_types"][group]
        assert float(shown) == expected["macro"]["f1-score"], group
    report = (results.folder / "report.md").read_text()
    overall = next(line for line in report.splitlines() if line.startswith("| overall |"))
    cells = re.search(r'<tr data-group="overall"[^>]*>(.*?)</tr>', error_page).group(1)
    assert re.findall(r"<td[^>]*>([^<]*)</td>", cells) == [c.strip() for c in overall.strip("|").split("|")]
    plain_mean = evaluation["overall"]["relation_report"]["macro avg"]["f1-score"]  # over all 23 labels: not it
    assert f"{plain_mean:.4f}" not in error_page and f"{plain_mean:.3f}" not in error_page


def test_errors_page_lists_unreadable_answers_first_with_their_text(results, error_page):
    unreadable = _part(error_page, 'id="unreadable"', "<h2>Recurring confusions")
    wrongest = error_page[error_page.index('id="wrongest"') :]
    assert error_page.index('id="unreadable"') < error_page.index('id="wrongest"')
    assert set(_sample_ids(unreadable)) == {results.unparsable, results.unknown}
    assert not {results.unparsable, results.unknown} & set(_sample_ids(wrongest))
    assert f'<pre class="raw">{UNPARSABLE}</pre>' in unreadable
    assert "unparsable: no subject,object,predicate chunk" in unreadable
    assert f"dropped for an unknown name: {UNKNOWN_NAME}" in unreadable
    assert "dropped for an unknown name" not in wrongest and "unparsable:" not in wrongest


def test_errors_page_wrongest_frames_show_raw_parsed_and_truth(results, error_page):
    wrongest = error_page[error_page.index('id="wrongest"') :]
    wrongness = [int(w) for w in re.findall(r'data-wrongness="(\d+)"', wrongest)]
    assert len(wrongness) == 3 and wrongness == sorted(wrongness, reverse=True)
    assert _sample_ids(wrongest)[0] == results.worst
    section = _part(wrongest, f'data-sample="{results.worst}"', "</section>")
    assert "patient,scalpel,cutting; head surgeon,bin,dropping" in section  # the raw text
    parsed = _part(section, '<table class="parsed">', '<table class="truth">')
    assert '<tr class="spurious"><td>head_surgeon</td><td>dropping</td><td>bin</td>' in parsed
    truth = section[section.index('<table class="truth">') :]
    assert '<tr class="missed">' in truth and "spurious" not in truth and "dropping" not in truth


def test_errors_page_recurring_confusions_link_their_frames(results, error_page):
    table = _part(error_page, '<table id="confusions">', "</table>")
    rows = {
        row[:4]: row[4:]
        for row in re.findall(
            r"<tr><td>([^<]*)</td><td>([^<]*)</td><td>([^<]*)</td><td>([^<]*)</td>"
            r'<td class="number">(\d+)</td><td>(.*?)</td></tr>',
            table,
        )
    }
    assert all(int(count) >= 2 for count, _ in rows.values())  # only what recurs
    for key, frames in results.rows.items():  # the same pair with another predicate; another pair
        assert int(rows[key][0]) == len(frames) and all(frame in rows[key][1] for frame in frames), key
    row = rows[next(key for key, frames in results.rows.items() if frames == results.confused)]
    shown = set(_sample_ids(error_page))
    assert 0 < len(shown & set(results.confused)) < len(results.confused)  # both kinds of entry are checked
    for sample_id in results.confused:
        anchor = f'href="#{errors._anchor(sample_id)}"'
        assert (anchor in row[1]) == (sample_id in shown)
        if sample_id in shown:
            assert f'id="{errors._anchor(sample_id)}"' in error_page


def test_confusions_pair_the_same_entity_pair_first_then_the_rest_in_text_order():
    kept = Triplet("circulator", "patient", "holding")
    same = Triplet("head_surgeon", "patient", "cutting")
    other = Triplet("anesthetist", "scissors", "removing")
    swap = Triplet("head_surgeon", "ultrasound_machine", "anaesthetising")
    truth = [kept, same, other, Triplet("assistant", "gloves", "wearing")]  # the last one stays plainly missed
    predicted = [swap, same._replace(predicate="dropping"), kept]
    assert errors.confusions(truth, predicted) == [
        errors.Confusion(same, same._replace(predicate="dropping")),
        errors.Confusion(other, swap),
    ]
    assert errors.confusions(truth, [*truth, swap]) == []  # a hallucination alone replaces nothing


def test_errors_page_pictures_go_into_a_folder_past_the_size_limit(results, merged_file, error_page, tmp_path, capsys):
    assert "data:image/png;base64," in error_page  # the 3-frame page is under the default limit: inlined
    out = tmp_path / "errors.html"
    text = _errors_page(results, merged_file, out, "--limit", "1", "--inline_mb", "0")
    folder = tmp_path / "errors_files"
    sources = re.findall(r'<img src="([^"]+)"', text)
    assert "data:" not in text and len(sources) == 3  # the F1 plot, one unreadable frame, one wrong frame
    assert sorted(sources) == sorted(f"errors_files/{p.name}" for p in folder.glob("*.png"))
    assert all(Image.open(tmp_path / source).size[0] == 480 for source in sources[1:])
    capsys.readouterr()
    argv = ["errors", "--results", str(results.folder), "--hdf5", str(merged_file), "--out", str(out)]
    out.unlink()
    assert main(argv) == cli.EXIT_ERROR  # the page is gone, its pictures' folder is not: refused
    assert "errors_files: already exists" in capsys.readouterr().err and not out.exists()


def _sections(text: str) -> dict[str, str]:
    """Sample id -> the HTML of its frame section."""
    return {
        m.group(1): m.group(0)
        for m in re.finditer(r'<section class="frame"[^>]*data-sample="([^"]+)".*?</section>', text)
    }


def test_errors_page_filters_keep_only_the_chosen_frames(results, merged_file, error_page, tmp_path, capsys):
    predicate = next(iter(results.rows))[0]
    text = _errors_page(results, merged_file, tmp_path / "p.html", "--limit", "1", "--predicate", predicate)
    sections = _sections(text)
    assert sections and all(f"<td>{predicate}</td>" in section for section in sections.values())
    assert any(f"<td>{predicate}</td>" not in section for section in _sections(error_page).values())
    assert f'<p id="scope">Frames below: only predicate {predicate} (' in text
    assert 'id="scope"' not in error_page
    text = _errors_page(results, merged_file, tmp_path / "u.html", "--limit", "1", "--surgery_type", "Ultrasound")
    assert _sections(text) and all(sample.startswith("Ultrasound_") for sample in _sections(text))
    text = _errors_page(results, merged_file, tmp_path / "t.html", "--limit", "1", "--take", "MISS/1/1")
    assert _sections(text) and all(sample.startswith("MISS_1_1_") for sample in _sections(text))
    capsys.readouterr()
    argv = ["errors", "--results", str(results.folder), "--hdf5", str(merged_file), "--out", str(tmp_path / "x.html")]
    assert main([*argv, "--take", "MISS/9/9"]) == cli.EXIT_ERROR
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "MISS/9" in err and not (tmp_path / "x.html").exists()


def test_errors_page_compares_two_runs_both_ways(results, sample_files, merged_file, error_page, tmp_path):
    from egoexor.evaluate import main as evaluate

    mine = json.loads((results.folder / "predictions.json").read_text())
    samples = {sample["id"]: sample for sample in json.loads(sample_files["test"].read_text())}
    right = [i for i, text in mine.items() if text == samples[i]["conversations"][1]["value"]]
    broken = right[0]  # right in this run, empty in the other
    theirs = {**mine, results.worst: samples[results.worst]["conversations"][1]["value"], broken: "<SG> </SG>"}
    (tmp_path / "theirs.json").write_text(json.dumps(theirs))
    other = tmp_path / "other"
    argv = ["--predictions", str(tmp_path / "theirs.json"), "--samples", str(sample_files["test"]), "--out", str(other)]
    assert evaluate(argv) == 0
    shutil.copy(tmp_path / "theirs.json", other / "predictions.json")
    text = _errors_page(results, merged_file, tmp_path / "c.html", "--limit", "1", "--compare", str(other))
    ids = {
        kind: re.findall(r"<tr><td>(?:<a [^>]*>)?([^<]+)", _part(text, f'id="{kind}"', "</table>"))
        for kind in ("right-here", "right-there")
    }
    assert ids == {"right-here": [broken], "right-there": [results.worst]}
    assert f'<a href="#{errors._anchor(results.worst)}">' in _part(text, 'id="right-there"', "</table>")  # shown
    evaluation = json.loads((other / "metrics.json").read_text())
    headline = _part(text, '<table id="headline-other">', "</table>")
    shown = re.search(r'<tr data-group="overall" data-macro-f1="([^"]*)">', headline).group(1)
    assert float(shown) == evaluation["overall"]["macro"]["f1-score"]
    assert 'id="comparison"' in text and 'id="comparison"' not in error_page


def test_errors_page_shows_the_memory_of_a_run_with_memory(results, merged_file, tmp_path, capsys):
    worst = results.worst
    with_memory = tmp_path / "results"
    shutil.copytree(results.folder, with_memory)
    (with_memory / "memory.json").write_text(json.dumps({worst: "Long: Short: patient,bin,not holding<x>"}))
    out = tmp_path / "errors.html"
    argv = ["errors", "--results", str(with_memory), "--hdf5", str(merged_file), "--limit", "2", "--dpi", "30"]
    assert main([*argv, "--out", str(out)]) == 0
    sections = re.findall(r'<section class="frame".*?</section>', out.read_text())
    with_text = [section for section in sections if f'data-sample="{worst}"' in section]
    assert len(with_text) == 1 and len(sections) > 1
    assert '<p class="memory">memory: Long: Short: patient,bin,not holding&lt;x&gt;</p>' in with_text[0]
    assert all("memory:" not in section for section in sections if section not in with_text)  # none: no text
    (with_memory / "memory.json").write_text(json.dumps({worst: 3}))
    assert main([*argv, "--out", str(tmp_path / "again.html")]) == cli.EXIT_ERROR
    assert "memory.json: expected {sample id: memory text}" in capsys.readouterr().err


@pytest.mark.skipif(
    shutil.which("chromium") is None and not os.environ.get("CI"),
    reason="needs Debian's chromium (apt-get install chromium); CI installs it and never skips",
)
@pytest.mark.parametrize("inline_mb", ["2", "0"], ids=["inlined", "folder"])
def test_errors_page_loads_in_headless_chromium(results, merged_file, tmp_path, inline_mb):
    out = tmp_path / "errors.html"
    _errors_page(results, merged_file, out, "--limit", "1", "--inline_mb", inline_mb)
    run = subprocess.run(
        [
            "chromium",
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--enable-logging=stderr",
            "--v=0",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=5000",
            "--dump-dom",
            out.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HOME": str(tmp_path)},
    )
    assert run.returncode == 0, run.stderr[-2000:]
    console = [line for line in run.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert console == []
    assert 'data-decoded="3"' in run.stdout  # the F1 plot, the first unreadable and the wrongest frame decoded
    wrongest = run.stdout[run.stdout.index('id="wrongest"') :]
    assert _sample_ids(wrongest)[0] == results.worst
