import json
import random
from collections import Counter

import h5py
import pytest

from egoexor import memory
from egoexor.data import layout
from egoexor.data.layout import TakeKey
from egoexor.data.make_samples import main, make_samples, samples_file_name, token_freqs_file_name, write_samples
from egoexor.data.samples import SampleError, load_samples, sample_from_record
from egoexor.prompt import HUMAN_TURN, SCENE_GRAPH_PROMPT
from egoexor.scene_graph import parse, serialize, split_fields

REFERENCE_RECORD = {
    "id": "MISS_1_1_12_0",
    "timepoint": 12,
    "hdf5_indices": {
        "surgery_type": "MISS",
        "procedure_id": 1,
        "take_id": 1,
        "frame_idx": 12,
        "available_modalities": ["point_cloud", "eye_gaze", "ego_frames", "exo_frames", "audio"],
    },
    "conversations": [
        {"from": "human", "value": "<image>\n" + SCENE_GRAPH_PROMPT},
        {"from": "gpt", "value": "<SG> patient,operating table,lyingon; head surgeon,dressing material,holding </SG>"},
    ],
}


def test_file_names_follow_the_reference():
    assert samples_file_name("train", 1, 0.0) == "train_1perm_Falsetemp_Falsetempaug_EgoExOR_drophistory0.5.json"
    assert samples_file_name("test", 4, 0.5).endswith("_drophistory0.5_modalitydrop0.5.json")
    assert token_freqs_file_name("train", 4) == "train_token_freqs_7b_4perm_EgoExOR.json"


def test_temporal_file_names_follow_the_reference_where_it_has_them():
    assert samples_file_name("train", 4, 0.0, "longshort") == "train_4perm_Truetemp_Falsetempaug_EgoExOR.json"
    assert (
        samples_file_name("train", 4, 0.0, "aug", 0.5) == "train_4perm_Truetemp_Truetempaug_EgoExOR_drophistory0.5.json"
    )
    assert samples_file_name("test", 1, 0.5, "short", 0.5) == (
        "test_1perm_Truetemp_Falsetempaug_EgoExOR_short_drophistory0.5_modalitydrop0.5.json"
    )


def test_prompt_is_the_reference_text():
    assert HUMAN_TURN.startswith("<image>\nEntities: [assistant, anaesthetist, circulator, head surgeon,")
    assert SCENE_GRAPH_PROMPT.endswith('"entity1,entity2,predicate;". Do not provide a narrative or descriptive text.')
    assert "close to" in SCENE_GRAPH_PROMPT and "syringe" not in SCENE_GRAPH_PROMPT


def test_records_have_the_reference_schema(sample_files):
    records = json.loads(sample_files["train"].read_text())
    record = records[0]
    assert set(record) == {"id", "timepoint", "hdf5_indices", "conversations"}
    assert set(record["hdf5_indices"]) == {
        "surgery_type",
        "procedure_id",
        "take_id",
        "frame_idx",
        "available_modalities",
    }
    assert [turn["from"] for turn in record["conversations"]] == ["human", "gpt"]
    assert record["conversations"][0]["value"] == HUMAN_TURN
    st, pid, tid, frame, perm = record["id"].rsplit("_", 4)
    assert (st, int(pid), int(tid), int(frame)) == (
        record["hdf5_indices"]["surgery_type"],
        record["hdf5_indices"]["procedure_id"],
        record["hdf5_indices"]["take_id"],
        record["timepoint"],
    )
    assert perm in {"0", "1"}


def test_answers_are_the_frames_scene_graphs(tiny_dataset, sample_files):
    for sample in load_samples(sample_files["train"]):
        template = tiny_dataset.templates[tiny_dataset.frame_templates[sample.take][sample.frame]]
        triplets = parse(sample.answer)
        assert sorted(triplets) == sorted(template)
        assert sample.answer == serialize(triplets)


def test_every_annotated_split_frame_once_per_permutation(tiny_dataset, merged_file, sample_files):
    with h5py.File(merged_file, "r") as h5:
        rows = layout.read_split(h5, "train")
    unannotated = {(t.key, f) for t in tiny_dataset.profile.takes for f in t.unannotated}
    expected = Counter()
    for r in rows:
        key = TakeKey(r["surgery_type"], int(r["procedure_id"]), int(r["take_id"]))
        if (key, int(r["frame_id"])) not in unannotated:
            expected[(key, int(r["frame_id"]))] = 2
    got = Counter((s.take, s.frame) for s in load_samples(sample_files["train"]))
    assert got == expected
    ids = [s.id for s in load_samples(sample_files["train"])]
    assert len(ids) == len(set(ids))


def test_available_modalities_per_take(sample_files):
    by_take = {}
    for s in load_samples(sample_files["train"]):
        by_take.setdefault(s.take, s.modalities)
    assert by_take[TakeKey("MISS", 1, 1)] == {
        "ego_frames",
        "eye_gaze",
        "eye_gaze_depth",
        "hand_tracking",
        "audio",
        "exo_frames",
        "point_cloud",
    }
    # no ego source: no ego modalities, and audio is gated on ego even though the group exists
    assert by_take[TakeKey("MISS", 1, 2)] == {"exo_frames", "point_cloud"}
    assert by_take[TakeKey("Ultrasound", 1, 1)] == {
        "ego_frames",
        "eye_gaze",
        "eye_gaze_depth",
        "hand_tracking",
        "exo_frames",
        "ultrasound",
        "point_cloud",
    }


def test_modality_dropout_and_seed(merged_file):
    with h5py.File(merged_file, "r") as h5:
        dropped, _ = make_samples(h5, "train", random.Random(42), modality_dropout_prob=1.0)
        assert all(s.modalities <= {"ego_frames", "exo_frames"} for s in dropped)
        a, _ = make_samples(h5, "train", random.Random(1), n_permutations=3)
        b, _ = make_samples(h5, "train", random.Random(1), n_permutations=3)
        c, _ = make_samples(h5, "train", random.Random(2), n_permutations=3)
    assert a == b and [s.answer for s in a] != [s.answer for s in c]


def test_validation_frames_are_permuted_like_the_reference(tiny_dataset, merged_file):
    with h5py.File(merged_file, "r") as h5:
        rows = layout.read_split(h5, "validation")
        samples, skipped = make_samples(h5, "validation", random.Random(42))
    frames = [
        (TakeKey(str(r["surgery_type"]), int(r["procedure_id"]), int(r["take_id"])), int(r["frame_id"])) for r in rows
    ]
    unannotated = {(t.key, f) for t in tiny_dataset.profile.takes for f in t.unannotated}
    order = [f for f in random.Random(42).sample(frames, len(frames)) if f not in unannotated]
    assert [(s.take, s.frame) for s in samples] == order
    assert len(skipped) == len(frames) - len(order)


def test_token_frequencies_count_answer_pieces(sample_files, tokenizer):
    freqs = json.loads((sample_files["train"].parent / token_freqs_file_name("train", 2)).read_text())
    expected = Counter()
    for s in load_samples(sample_files["train"]):
        expected.update(tokenizer.tokenize(s.answer))
    assert freqs == dict(expected)
    assert (sample_files["train"].parent / token_freqs_file_name("test", 1)).is_file()  # named after the split


def test_reference_record_loads():
    sample = sample_from_record(REFERENCE_RECORD)
    assert sample.take == TakeKey("MISS", 1, 1) and sample.frame == 12
    assert sample.modalities == {"point_cloud", "eye_gaze", "ego_frames", "exo_frames", "audio"}
    assert sample.to_record()["conversations"] == REFERENCE_RECORD["conversations"]


def _memory_of(question: str) -> list[tuple[str, list[str]]]:
    assert question.startswith("<image>\n<memory_start>: ") and question.endswith(
        "<memory_end>.\n" + SCENE_GRAPH_PROMPT
    )
    return memory.parse_sections(question.removeprefix("<image>\n<memory_start>: ").split("<memory_end>")[0])


@pytest.mark.parametrize("temporal", ["longshort", "short", "long"])
def test_temporal_samples_are_the_plain_ones_with_their_takes_earlier_changes(merged_file, tmp_path, temporal):
    plain = write_samples(merged_file, out=tmp_path, n_permutations=2, tokenizer=None).samples
    with_memory = write_samples(merged_file, out=tmp_path, n_permutations=2, tokenizer=None, temporal=temporal)
    assert with_memory.samples_file.name == samples_file_name("train", 2, 0.0, temporal)
    assert [(s.id, s.answer) for s in with_memory.samples] == [(s.id, s.answer) for s in plain]
    assert load_samples(with_memory.samples_file) == with_memory.samples
    graphs: dict = {}  # take -> frame -> its (subject, object, predicate) fields
    for s in plain:
        graphs.setdefault(s.take, {})[s.frame] = set(split_fields(s.answer))
    headers = {"longshort": ["Long", "Short"], "short": ["Short"], "long": ["Long"]}[temporal]
    n_entries = Counter()
    for s in with_memory.samples:
        sections = _memory_of(s.question)
        assert [h for h, _ in sections] == headers
        earlier = [graphs[s.take][f] for f in sorted(graphs[s.take]) if f < s.frame]
        seen = set().union(*earlier)
        for header, entries in sections:
            for entry in entries:
                subject, obj, predicate = entry.split(",")
                assert (subject, obj, predicate.removeprefix("not ")) in seen, (s.id, entry)
                assert predicate != "closeto"
                assert header == "Short" or not predicate.startswith("not ")
            if header == "Short":
                assert len(entries) <= memory.SHORT_LENGTH
        n_entries[bool(earlier)] += sum(len(e) for _, e in sections)
    assert n_entries[False] == 0 and n_entries[True] > 0  # a take's first frame has no memory, others do


def test_augmented_memory_mixes_styles_and_drops_history(merged_file, tmp_path):
    summary = write_samples(
        merged_file, out=tmp_path, n_permutations=6, tokenizer=None, temporal="aug", drop_history=0.5
    )
    assert summary.samples_file.name == "train_6perm_Truetemp_Truetempaug_EgoExOR_drophistory0.5.json"
    styles = Counter(
        "none" if s.question == HUMAN_TURN else "".join(h[0] for h, _ in _memory_of(s.question))
        for s in summary.samples
    )
    n = len(summary.samples)
    assert set(styles) == {"none", "S", "L", "LS"} and n > 200
    assert abs(styles["none"] / n - 0.5) < 0.1
    # the change logs come before any per-sample draw: a dropped memory is part of the full one
    full = write_samples(merged_file, out=tmp_path, n_permutations=6, tokenizer=None, temporal="short").samples
    pairs = [
        (_memory_of(s.question)[0][1], _memory_of(f.question)[0][1])
        for s, f in zip(summary.samples, full, strict=True)
        if s.question != HUMAN_TURN and [h for h, _ in _memory_of(s.question)] == ["Short"]
    ]
    assert pairs and all(set(kept) <= set(everything) for kept, everything in pairs)
    kept, everything = (sum(len(pair[i]) for pair in pairs) for i in (0, 1))
    assert 0.3 * everything < kept < 0.7 * everything  # each entry is dropped with probability 0.5


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not a readable JSON file"),
        ('{"a": 1}', "expected a JSON list"),
        ('[{"id": "x"}]', "record 0 .id 'x'.: hdf5_indices: Field required"),
    ],
)
def test_malformed_sample_files(tmp_path, content, message):
    path = tmp_path / "s.json"
    path.write_text(content)
    with pytest.raises(SampleError, match=message):
        load_samples(path)
    with pytest.raises(SampleError, match="no such file"):
        load_samples(tmp_path / "missing.json")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--split", "val"], "argument --split: invalid choice: 'val'"),
        (["--hdf5", "missing.h5"], "no such file"),
        (["--modality-dropout-prob", "2"], "must be >= 0.0 and <= 1.0, got 2.0"),
        (["--drop-history", "0.5"], "--drop-history 0.5: there is no memory to drop from without --temporal"),
        (["--temporal", "all"], "argument --temporal: invalid choice: 'all'"),
    ],
)
def test_cli_errors(merged_file, tmp_path, capsys, args, message):
    argv = ["--hdf5", str(merged_file), "--out", str(tmp_path), "--no-token-freqs", *args]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_cli_error_on_file_without_splits(tiny_dataset, tmp_path, capsys):
    assert main(["--hdf5", str(tiny_dataset.files[0]), "--out", str(tmp_path), "--no-token-freqs"]) == 2
    assert "missing 'splits/train'" in capsys.readouterr().err


def test_cli_error_on_unloadable_tokenizer(merged_file, tmp_path, capsys):
    assert main(["--hdf5", str(merged_file), "--out", str(tmp_path), "--tokenizer", str(tmp_path / "nope")]) == 2
    assert "--no-token-freqs" in capsys.readouterr().err


def test_a_merge_of_some_procedures_warns_in_both_commands_and_the_python_api(tiny_dataset, tmp_path, capsys):
    """splits.h5 names every take; a merge of some procedures keeps those rows with a warning, and make_samples
    leaves them out with a warning too (it used to stop with a LayoutError traceback from Python): the command
    and the Python API agree, the summary lists what the command prints."""
    from egoexor.data.merge_h5 import merge_files

    kept = [path for path in tiny_dataset.files if path.name != "miss_2.h5"]
    merged = merge_files(kept, tiny_dataset.splits_file, tmp_path / "some.h5")
    assert any("point at a take or frame not in the merged data" in w for w in merged.warnings())
    summary = write_samples(tmp_path / "some.h5", "train", tmp_path / "api", tokenizer=None)
    assert list(summary.rows_without_take) == ["data/MISS/2/take/1"]
    assert summary.warnings() == [
        f"split rows name take(s) not in the file, left out: data/MISS/2/take/1 "
        f"({summary.rows_without_take['data/MISS/2/take/1']})"
    ]
    assert summary.samples and all(s.take != TakeKey("MISS", 2, 1) for s in summary.samples)
    with h5py.File(tiny_dataset.splits_file, "r") as splits:
        named = sum(tuple(r)[:3] == (b"MISS", 2, 1) for r in splits["splits/train"][()])
    assert summary.rows_without_take["data/MISS/2/take/1"] == named > 0

    argv = ["--hdf5", str(tmp_path / "some.h5"), "--split", "train", "--out", str(tmp_path / "cli"), "--no-token-freqs"]
    assert main(argv) == 0
    assert capsys.readouterr().err.strip() == f"egoexor.data.make_samples: warning: {summary.warnings()[0]}"
    assert (tmp_path / "cli" / summary.samples_file.name).read_bytes() == summary.samples_file.read_bytes()


def test_layout_errors_are_command_errors(tmp_path):
    """The Python API raises what the commands print as one line: a wrong layout is a CommandError."""
    from egoexor import cli

    path = tmp_path / "empty.h5"
    h5py.File(path, "w").close()
    with pytest.raises(cli.CommandError, match="empty.h5"):
        write_samples(path, "train", tmp_path / "out", tokenizer=None)
