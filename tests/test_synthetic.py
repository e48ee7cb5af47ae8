"""The synthetic generator writes the released layout, its quirks, and a learnable signal (``templates``: every
modality shows the frame's scene graph; ``parts``: each modality shows its own part of it; ``history``: a held
scalpel that only earlier frames reveal)."""

import random
import warnings

import h5py
import numpy as np
import pytest

from egoexor import memory, vocab
from egoexor.data import layout, synthetic
from egoexor.data.layout import TakeKey
from egoexor.data.make_samples import make_samples
from egoexor.data.merge_h5 import merge_files
from egoexor.data.synthetic import PARTS, VISIBLE, generate, main
from egoexor.scene_graph import Triplet, parse, triplets_from_annotation

MISS_FULL = TakeKey("MISS", 1, 1)
EXO_ONLY = TakeKey("MISS", 1, 2)
MORE_GAZE_ROWS = TakeKey("MISS", 2, 1)
ULTRASOUND = TakeKey("Ultrasound", 1, 1)


def open_take(dataset, key):
    name = f"{key.surgery_type.lower()}_{key.procedure_id}.h5"
    h5 = h5py.File(dataset.directory / name, "r")
    return h5, h5[key.path]


def test_files_and_metadata(tiny_dataset):
    assert sorted(p.name for p in tiny_dataset.files) == ["miss_1.h5", "miss_2.h5", "ultrasound_1.h5"]
    with h5py.File(tiny_dataset.files[0], "r") as h5:
        assert layout.check_layout(h5) == 2
        entity = h5[layout.ENTITY_VOCAB][()]
        assert entity.dtype.names == ("name", "id") and len(entity) == 37
        assert [layout.decode(n) for n in entity["name"]] == list(vocab.RAW_ENTITY_VOCAB)
        assert len(h5[layout.RELATION_VOCAB]) == 23
        sources = {layout.decode(n): int(i) for n, i in h5[layout.SOURCE_TABLE][()]}
        assert sources == vocab.SOURCES
        assert set(h5[layout.DATASET_INFO].attrs) == {"version", "creation_date", "title"}


def test_datasets_have_released_dtypes_compression_and_per_frame_chunks(tiny_dataset):
    h5, take = open_take(tiny_dataset, MISS_FULL)
    with h5:
        expected = {
            layout.RGB: np.uint8,
            layout.GAZE: np.float32,
            layout.GAZE_DEPTH: np.float32,
            layout.HANDS: np.float32,
            layout.AUDIO_SNIPPETS: np.float32,
            layout.POINT_COORDINATES: np.float32,
            layout.POINT_COLORS: np.float32,
        }
        for path, dtype in expected.items():
            dataset = take[path]
            assert dataset.dtype == dtype, path
            assert dataset.compression == "gzip", path
            assert dataset.chunks == (1, *dataset.shape[1:]), path
        assert take[layout.RGB].shape == (48, 10, 24, 32, 3)
        assert take[layout.GAZE].shape == (48, 4, 3) and take[layout.HANDS].shape == (48, 4, 17)
        assert take[layout.AUDIO_WAVEFORM].ndim == 2 and take[layout.AUDIO_WAVEFORM].shape[1] == 2
        rel = take["annotations/frame_0/rel_annotations"]
        assert rel.dtype == object and rel.shape[1] == 3 and isinstance(rel[0, 0], bytes)
        assert take["annotations/frame_0/scene_graph"].dtype == np.float32


def test_source_attributes_as_bytes_and_str(tiny_dataset):
    h5, take = open_take(tiny_dataset, MISS_FULL)
    with h5:
        assert isinstance(take["sources"].attrs["source_0"], bytes)
        assert layout.take_sources(take)[:4] == ["head_surgeon", "assistant", "circulator", "anesthetist"]
    h5, take = open_take(tiny_dataset, ULTRASOUND)
    with h5:
        assert isinstance(take["sources"].attrs["source_0"], str)
        # the ultrasound screen sits in the middle of the camera axis
        assert layout.take_sources(take) == ["head_surgeon", "assistant", "external_1", "ultrasound", "external_2"]


def test_quirks(tiny_dataset):
    h5, take = open_take(tiny_dataset, MISS_FULL)
    with h5:
        assert "frame_2" not in take["annotations"] and "frame_29" not in take["annotations"]
        assert "frame_3" in take["annotations"]
        rgb = take[layout.RGB]
        assert not rgb[1, 1].any()  # assistant black in frame 1
        assert not rgb[2, 7].any()  # external_2 black in frame 2
        assert rgb[1, 0].any() and rgb[2, 6].any()
        gaze = take[layout.GAZE][()]
        ids = gaze[0, :, 0].astype(int).tolist()
        assert ids == [4, 1, 3, 2]  # rows in shuffled source-id order
        assert (gaze[0, 1, 1:] == -1).all()  # invalid gaze
        assert np.isnan(gaze[1, 0, 1])
        depth = take[layout.GAZE_DEPTH][()]
        assert np.isnan(depth[0, 0]) and np.isposinf(depth[0, 1]) and depth[0, 2] == pytest.approx(1.7)
        hands = take[layout.HANDS][()]
        assert np.isnan(hands[0, 0, 1:9]).all() and not np.isnan(hands[0, 0, 9:]).any()  # partly NaN
        assert np.isnan(hands[1, 3, 1:]).all()
        assert (hands[:, :, 0] == gaze[:, :, 0]).all()
    h5, take = open_take(tiny_dataset, EXO_ONLY)
    with h5:
        assert layout.take_sources(take) == ["or_light", "external_1", "blank"]
        assert not any(g in take for g in ("eye_gaze", "eye_gaze_depth", "hand_tracking"))
        assert not take[layout.RGB][:, 2].any()  # the blank camera
    h5, take = open_take(tiny_dataset, MORE_GAZE_ROWS)
    with h5:
        ego_cameras = [s for s in layout.take_sources(take) if s in vocab.EGO_SOURCES]
        assert len(ego_cameras) == 3 and take[layout.GAZE].shape[1] == 4
        assert take[layout.RGB].shape[2:4] == (32, 24)  # taller than wide
    h5, take = open_take(tiny_dataset, ULTRASOUND)
    with h5:
        assert "audio" not in take
        assert not take[layout.RGB][3].any()  # every camera black in frame 3


def test_annotations_use_raw_spellings_consistent_with_ids_and_templates(tiny_dataset):
    raw_spellings = set()
    for key, frame_templates in tiny_dataset.frame_templates.items():
        h5, take = open_take(tiny_dataset, key)
        with h5:
            for name, group in take["annotations"].items():
                frame = int(name.removeprefix("frame_"))
                rows = group["rel_annotations"][()]
                ids = group["scene_graph"][()].astype(int)
                for (s, p, o), (si, pi, oi) in zip(rows, ids, strict=True):
                    assert vocab.RAW_ENTITY_VOCAB[si] == s.decode() and vocab.RAW_ENTITY_VOCAB[oi] == o.decode()
                    assert vocab.RAW_RELATION_VOCAB[pi] == p.decode()
                    raw_spellings.update((s.decode(), p.decode(), o.decode()))
                expected = tiny_dataset.templates[frame_templates[frame]]
                assert triplets_from_annotation(rows) == expected
    assert raw_spellings & {
        "closeTo",
        "lyingOn",
        "anaesthetist",
        "operation_table",
        "checking",
        "anesthasing",
        "microcope",
    }


def test_splits_cover_every_frame_once(tiny_dataset):
    with h5py.File(tiny_dataset.splits_file, "r") as h5:
        assert set(h5["splits"]) == set(layout.SPLIT_NAMES)
        rows = {name: layout.read_split(h5, name) for name in layout.SPLIT_NAMES}
        assert h5["splits/train"].dtype == layout.SPLIT_DTYPE
    seen = [
        (r["surgery_type"], int(r["procedure_id"]), int(r["take_id"]), int(r["frame_id"]))
        for split in rows.values()
        for r in split
    ]
    total = sum(t.n_frames for t in tiny_dataset.profile.takes)
    assert len(seen) == len(set(seen)) == total
    assert all(len(split) > 0 for split in rows.values())


def test_same_seed_same_data(tmp_path):
    a = generate(tmp_path / "a", "tiny", seed=3, n_frames=6)
    b = generate(tmp_path / "b", "tiny", seed=3, n_frames=6)
    c = generate(tmp_path / "c", "tiny", seed=4, n_frames=6)
    with h5py.File(a.files[0], "r") as fa, h5py.File(b.files[0], "r") as fb, h5py.File(c.files[0], "r") as fc:
        path = MISS_FULL.path + "/" + layout.RGB
        assert np.array_equal(fa[path][()], fb[path][()])
        assert not np.array_equal(fa[path][()], fc[path][()])


def test_the_scene_graph_is_learnable_from_the_images(tiny_dataset):
    """A nearest-centroid classifier on mean camera colour recovers the template on held-out frames."""
    features, labels = [], []
    for key, frame_templates in tiny_dataset.frame_templates.items():
        h5, take = open_take(tiny_dataset, key)
        with h5:
            rgb = take[layout.RGB][()].astype(np.float32)
        for frame, template in enumerate(frame_templates):
            visible = [cam for cam in rgb[frame] if cam.any()]
            if visible:
                features.append(np.mean([cam.mean(axis=(0, 1)) for cam in visible], axis=0))
                labels.append(template)
    features, labels = np.array(features), np.array(labels)
    train = np.arange(len(labels)) % 2 == 0
    centroids = np.array([features[train & (labels == k)].mean(axis=0) for k in range(len(tiny_dataset.templates))])
    predicted = np.argmin(((features[~train, None] - centroids) ** 2).sum(-1), axis=1)
    assert (predicted == labels[~train]).mean() > 0.95


def test_gaze_and_hands_point_at_the_template_spot(tiny_dataset):
    h5, take = open_take(tiny_dataset, MISS_FULL)
    with h5:
        gaze = take[layout.GAZE][()]
        hands = take[layout.HANDS][()]
    templates = tiny_dataset.frame_templates[MISS_FULL]
    spot = tiny_dataset.hotspots[templates] * np.array([32, 24])
    valid = gaze[:, :, 1] >= 0
    distance = np.linalg.norm(gaze[:, :, 1:] - spot[:, None], axis=-1)
    assert np.nanmax(distance[valid]) < 4
    points = hands[:, :, 1:].reshape(48, 4, 8, 2)
    tracked = ~np.isnan(points).all(axis=(2, 3))
    hand_centre = np.nanmean(points[tracked], axis=1)
    spots = np.broadcast_to(spot[:, None], (48, 4, 2))[tracked]
    assert np.linalg.norm(hand_centre - spots, axis=-1).max() < 8


def test_realistic_profile_sizes_and_gzip_ratio(tmp_path):
    dataset = generate(tmp_path, "realistic", seed=0, n_frames=3)
    with h5py.File(tmp_path / "miss_1.h5", "r") as h5:
        take = h5[MISS_FULL.path]
        rgb = take[layout.RGB]
        assert rgb.shape == (3, 10, 336, 336, 3)
        ratio = rgb.size / rgb.id.get_storage_size()
        assert 1.5 <= ratio <= 3.0, ratio  # camera-like, not the 100x of flat colours
        assert take[layout.AUDIO_SNIPPETS].shape == (3, 48_000, 2)
        assert take[layout.POINT_COORDINATES].shape == (3, 8192, 3)
    cams = {t.key: len(t.sources) for t in dataset.profile.takes}
    assert cams[MISS_FULL] == 10


def test_cli(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--profile", "tiny", "--seed", "1", "--frames", "4"]) == 0
    assert (tmp_path / "splits.h5").is_file() and (tmp_path / "miss_1.h5").is_file()
    capsys.readouterr()
    assert main(["--out", str(tmp_path), "--frames", "1"]) == 2
    assert "argument --frames: must be >= 3 and <= 108000, got 1" in capsys.readouterr().err
    before = (tmp_path / "miss_1.h5").read_bytes()
    assert main(["--out", str(tmp_path), "--seed", "2"]) == 2  # a download folder's files are not replaced
    assert "miss_1.h5: already exists (pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "miss_1.h5").read_bytes() == before
    assert main(["--out", str(tmp_path), "--seed", "2", "--frames", "4", "--overwrite"]) == 0
    assert (tmp_path / "miss_1.h5").read_bytes() != before
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.fixture(scope="module")
def parts_dataset(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("parts"), "parts", seed=0, n_frames=90)


#: The sample modality (``make_samples``) that carries each part.
PART_SAMPLE_MODALITY = {
    "ego_frames": "ego_frames",
    "gaze": "eye_gaze",
    "hands": "hand_tracking",
    "exo_frames": "exo_frames",
    "ultrasound": "ultrasound",
    "audio": "audio",
    "point_cloud": "point_cloud",
}


def test_parts_are_disjoint_predicate_groups_one_per_modality():
    assert [p.modality for p in PARTS] == [
        "ego_frames",
        "gaze",
        "hands",
        "exo_frames",
        "ultrasound",
        "audio",
        "point_cloud",
    ]
    predicates = [name for part in PARTS for name in part.predicates]
    assert len(predicates) == len(set(predicates)) == 21 and set(predicates) <= set(vocab.PREDICATES)
    assert len({(p.subject, p.object) for p in PARTS}) == len(PARTS)
    assert {p.subject for p in PARTS} | {p.object for p in PARTS} <= set(vocab.ENTITIES)


def test_parts_annotations_follow_the_levels(parts_dataset):
    expected_parts = {
        "MISS": set(PART_SAMPLE_MODALITY) - {"ultrasound"},
        "Ultrasound": set(PART_SAMPLE_MODALITY) - {"audio"},
    }
    for key, levels in parts_dataset.part_levels.items():
        h5, take = open_take(parts_dataset, key)
        with h5:
            for name, group in take["annotations"].items():
                frame = int(name.removeprefix("frame_"))
                triplets = triplets_from_annotation(group["rel_annotations"][()])
                expected = [
                    Triplet(p.subject, p.object, p.predicates[levels[frame, i]])
                    for i, p in enumerate(PARTS)
                    if p.modality in expected_parts[key.surgery_type]
                ]
                assert triplets == expected
    stacked = np.concatenate(list(parts_dataset.part_levels.values()))
    correlation = np.corrcoef(stacked.T) - np.eye(len(PARTS))
    assert np.abs(correlation).max() < 0.2  # independent draws per part


def _modality_features(dataset, key) -> dict[str, np.ndarray]:
    """One simple feature per modality and frame (nan where the take lacks the modality)."""
    h5, take = open_take(dataset, key)
    with h5:
        sources = layout.take_sources(take)
        rgb = take[layout.RGB][()].astype(np.float32).mean(axis=(2, 3))  # [F, C, 3] mean colour per camera
        cams = {
            kind: [i for i, s in enumerate(sources) if test(s)]
            for kind, test in (
                ("ego_frames", lambda s: s in vocab.EGO_SOURCES),
                ("ultrasound", lambda s: s == vocab.ULTRASOUND_SOURCE),
                ("exo_frames", lambda s: s in vocab.EXO_SOURCES and s != vocab.ULTRASOUND_SOURCE),
            )
        }
        features = {kind: rgb[:, ids].mean(axis=1) for kind, ids in cams.items() if ids}
        gaze = take[layout.GAZE][()][:, :, 1:]
        with np.errstate(invalid="ignore"), warnings.catch_warnings(action="ignore", category=RuntimeWarning):
            features["gaze"] = np.nanmedian(np.where(gaze >= 0, gaze, np.nan), axis=1)  # invalid rows are (-1, -1)
        features["hands"] = np.nanmean(take[layout.HANDS][()][:, :, 1:].reshape(len(gaze), -1, 2), axis=1)
        if layout.AUDIO_SNIPPETS in take:
            spectrum = np.abs(np.fft.rfft(take[layout.AUDIO_SNIPPETS][()][:, :, 0], axis=1))
            features["audio"] = spectrum.argmax(axis=1)[:, None].astype(np.float32)
        if layout.POINT_COORDINATES in take:
            features["point_cloud"] = np.median(take[layout.POINT_COORDINATES][()], axis=1)
    return {kind: np.nan_to_num(feature) for kind, feature in features.items()}  # a frame without valid rows: 0


def test_each_modality_shows_its_own_part_and_nothing_of_the_others(parts_dataset):
    """Nearest-centroid classifiers: a modality's feature recovers its own part's level on held-out frames,
    and no other part's level better than chance (1/3)."""
    for m, modality in enumerate(p.modality for p in PARTS):
        features, levels = [], []
        for key, take_levels in parts_dataset.part_levels.items():
            feature = _modality_features(parts_dataset, key).get(modality)
            if feature is not None:
                features.append(feature)
                levels.append(take_levels)
        features, levels = np.concatenate(features), np.concatenate(levels)
        train = np.arange(len(features)) % 2 == 0
        for p in range(len(PARTS)):
            centroids = np.array([features[train & (levels[:, p] == k)].mean(axis=0) for k in range(3)])
            guess = np.argmin(((features[~train, None] - centroids) ** 2).sum(-1), axis=1)
            accuracy = (guess == levels[~train, p]).mean()
            if p == m:
                assert accuracy > 0.95, (modality, accuracy)
            else:
                assert accuracy < 0.5, (modality, PARTS[p].modality, accuracy)


def test_parts_samples_see_exactly_the_modalities_of_their_parts(parts_dataset, tmp_path):
    merged = tmp_path / "egoexor.h5"
    merge_files(parts_dataset.files, parts_dataset.splits_file, merged)
    with h5py.File(merged, "r") as h5:
        samples, _ = make_samples(h5, "train", random.Random(0))
    by_pair = {(p.subject, p.object): p.modality for p in PARTS}
    for sample in samples:
        shown = {PART_SAMPLE_MODALITY[by_pair[t.subject, t.object]] for t in parse(sample.answer, "robust")}
        assert shown == sample.modalities - {"eye_gaze_depth"}, sample.id


@pytest.fixture(scope="module")
def history_dataset(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("history"), "history", seed=0)


def test_history_annotations_hold_the_scalpel_from_pick_up_to_put_down(history_dataset):
    for key, states in history_dataset.held_states.items():
        levels = history_dataset.visible_levels[key]
        h5, take = open_take(history_dataset, key)
        with h5:
            for frame, state in enumerate(states):
                triplets = triplets_from_annotation(take[f"annotations/frame_{frame}/rel_annotations"][()])
                visible = Triplet(VISIBLE.subject, VISIBLE.object, VISIBLE.predicates[levels[frame]])
                held = state in synthetic.HOLDING
                assert triplets == ([visible, synthetic.HELD] if held else [visible])
        spells = np.flatnonzero(np.isin(states, (synthetic.PICKED_UP, synthetic.PUT_DOWN)))
        assert len(spells) >= 2 and states[spells[0]] == synthetic.PICKED_UP
        lengths = np.diff(spells)
        assert lengths.min() >= synthetic.EPISODE_FRAMES[0] and lengths.max() <= synthetic.EPISODE_FRAMES[1]


def test_history_images_show_the_scalpel_only_when_it_is_picked_up_or_put_down(history_dataset):
    """Frames between the cues look alike whether the scalpel is held or not: only history tells them apart."""
    for key, states in history_dataset.held_states.items():
        levels = history_dataset.visible_levels[key]
        h5, take = open_take(history_dataset, key)
        with h5:
            rgb = take[layout.RGB][()].astype(np.float32)  # [F, C, H, W, 3]
        spot = rgb[:, :, 4:10, 5:11].mean(axis=(1, 2, 3, 4))  # the pick-up square (0.25, 0.3) of 32x24 frames
        assert spot[states == synthetic.PICKED_UP].min() > 240
        assert spot[states != synthetic.PICKED_UP].max() < 200
        for level in range(len(VISIBLE.predicates)):
            held = rgb[(states == synthetic.HELD_OUT_OF_VIEW) & (levels == level)].mean(axis=0)
            free = rgb[(states == synthetic.NOT_HELD) & (levels == level)].mean(axis=0)
            assert np.abs(held - free).mean() < 1.0  # noise only (sigma 4, averaged over a dozen frames or more)


def test_history_memory_tells_whether_the_scalpel_is_held(history_dataset):
    """In the ground truth's change log the last change of the held pair before a frame is the state of the frame
    before: memory knows what the frame's own inputs do not."""
    held_entry = ",".join(vocab.answer_form(name) for name in synthetic.HELD[:2]) + ",holding"
    for key, states in history_dataset.held_states.items():
        h5, take = open_take(history_dataset, key)
        with h5:
            graphs = [
                (frame, triplets_from_annotation(take[f"annotations/frame_{frame}/rel_annotations"][()]))
                for frame in range(len(states))
            ]
        log = memory.change_log(
            [(frame, [tuple(vocab.answer_form(name) for name in t) for t in graph]) for frame, graph in graphs],
            random.Random(0),
        )
        assert len(log) == 1 + np.isin(states, (synthetic.PICKED_UP, synthetic.PUT_DOWN)).sum()  # visible pair once
        for frame in range(1, len(states)):
            entries = [entry for _, section in memory.memory_sections(log, frame, "short") for entry in section]
            last = next((entry for entry in reversed(entries) if entry.endswith("holding")), None)
            assert (last == held_entry) == (states[frame - 1] in synthetic.HOLDING)
