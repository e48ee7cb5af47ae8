"""python -m egoexor.viz: pixels where they belong, the right panels, a video of the right length, a page that loads."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import av
import numpy as np
import pytest
from matplotlib.colors import to_rgb
from PIL import Image

from egoexor import cli, vocab
from egoexor.data.layout import TakeKey
from egoexor.data.reader import EgoExorReader
from egoexor.viz import graph
from egoexor.viz.__main__ import main
from egoexor.viz.timepoint import GAZE_COLOUR, HAND_COLOURS, render

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
        "point cloud",
        "audio",
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
    gaze = {vocab.SOURCE_NAMES[int(row[0])]: row[1:3] for row in point.gaze}
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
    row = point.hands[point.hands[:, 0] == vocab.SOURCES["circulator"]][0]
    right_wrist = row[1:17].reshape(8, 2)[2]
    assert np.isfinite(right_wrist).all()
    column, row_px = (round(v) for v in panel.to_picture(*right_wrist))
    window = picture.image[row_px - 3 : row_px + 4, column - 3 : column + 4]
    assert _mask(window, HAND_COLOURS[1]).sum() >= 9


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


@pytest.fixture(scope="module")
def results(tiny_dataset, sample_files, tmp_path_factory) -> tuple[Path, str]:
    """An evaluation of the test split where one frame is much wronger than all others (its id is returned)."""
    from egoexor.evaluate import main as evaluate

    samples = json.loads(sample_files["test"].read_text())
    worst = samples[len(samples) // 2]["id"]
    predictions = {}
    for index, sample in enumerate(samples):
        text = sample["conversations"][1]["value"]
        if sample["id"] == worst:
            text = "<SG> patient,scalpel,cutting; head surgeon,bin,dropping; assistant,cotton,holding </SG>"
        elif index % 3 == 0:
            text = "<SG> </SG>"  # one or two missed
        predictions[sample["id"]] = text
    folder = tmp_path_factory.mktemp("results")
    (folder / "predictions.json").write_text(json.dumps(predictions))
    out = folder / "eval"
    assert (
        evaluate(
            [
                "--predictions",
                str(folder / "predictions.json"),
                "--samples",
                str(sample_files["test"]),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    shutil.copy(folder / "predictions.json", out / "predictions.json")
    return out, worst


def test_errors_page_worst_first(results, merged_file, tmp_path):
    folder, worst = results
    out = tmp_path / "errors.html"
    argv = [
        "errors",
        "--results",
        str(folder),
        "--hdf5",
        str(merged_file),
        "--limit",
        "3",
        "--dpi",
        "30",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    text = out.read_text()
    wrongness = [int(w) for w in re.findall(r'data-wrongness="(\d+)"', text)]
    assert len(wrongness) == 3 and wrongness == sorted(wrongness, reverse=True)
    assert re.search(r'data-sample="([^"]+)"', text).group(1) == worst


def test_errors_page_shows_the_memory_of_a_run_with_memory(results, merged_file, tmp_path, capsys):
    folder, worst = results
    with_memory = tmp_path / "results"
    shutil.copytree(folder, with_memory)
    (with_memory / "memory.json").write_text(json.dumps({worst: "Long: Short: patient,bin,not holding<x>"}))
    out = tmp_path / "errors.html"
    argv = ["errors", "--results", str(with_memory), "--hdf5", str(merged_file), "--limit", "2", "--dpi", "30"]
    assert main([*argv, "--out", str(out)]) == 0
    sections = re.findall(r'<section class="frame".*?</section>', out.read_text())
    assert f'data-sample="{worst}"' in sections[0]
    assert '<p class="memory">memory: Long: Short: patient,bin,not holding&lt;x&gt;</p>' in sections[0]
    assert "memory:" not in sections[1]  # a frame without memory text shows none
    (with_memory / "memory.json").write_text(json.dumps({worst: 3}))
    assert main([*argv, "--out", str(tmp_path / "again.html")]) == cli.EXIT_ERROR
    assert "memory.json: expected {sample id: memory text}" in capsys.readouterr().err


@pytest.mark.skipif(
    shutil.which("chromium") is None and not os.environ.get("CI"),
    reason="needs Debian's chromium (apt-get install chromium); CI installs it and never skips",
)
def test_errors_page_loads_in_headless_chromium(results, merged_file, tmp_path):
    folder, worst = results
    out = tmp_path / "errors.html"
    assert (
        main(
            [
                "errors",
                "--results",
                str(folder),
                "--hdf5",
                str(merged_file),
                "--limit",
                "2",
                "--dpi",
                "30",
                "--out",
                str(out),
            ]
        )
        == 0
    )
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
    assert 'data-decoded="3"' in run.stdout  # the F1 plot and two frame pictures decoded
    assert re.search(r'<section class="frame" id="rank-1" data-sample="([^"]+)"', run.stdout).group(1) == worst
