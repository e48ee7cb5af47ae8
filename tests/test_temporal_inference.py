"""Inference with memory: takes walked in time order side by side, batch-size and restart invariant."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
from test_infer import ROOT, checkpoint, infer_args  # noqa: F401  (fixtures)

from egoexor import infer, memory
from egoexor.data.layout import TakeKey
from egoexor.data.samples import Sample, load_samples
from egoexor.prompt import HUMAN_TURN
from egoexor.scene_graph import split_fields
from egoexor.temporal_inference import TakeWalk

ENTITIES = ("head surgeon", "patient", "scalpel", "bin")


def _samples() -> list[Sample]:
    """Three takes of 7, 3 and 5 frames (with gaps), listed in a scrambled order."""
    rng = random.Random(1)
    samples = []
    for take, frames in ((TakeKey("MISS", 1, 1), 7), (TakeKey("MISS", 2, 1), 3), (TakeKey("Ultrasound", 1, 1), 5)):
        for frame in range(0, 2 * frames, 2):
            pairs = rng.sample([(s, o) for s in ENTITIES for o in ENTITIES if s != o], 3)
            answer = "<SG> " + "; ".join(f"{s},{o},{rng.choice(['holding', 'cutting'])}" for s, o in pairs) + " </SG>"
            samples.append(Sample(f"{take.name}_{frame}_0", take, frame, frozenset(), HUMAN_TURN, answer))
    rng.shuffle(samples)
    return samples


def _model(question: str) -> str:
    """A stand-in model whose answer depends on its whole prompt (so on the memory in it)."""
    rng = random.Random(zlib.crc32(question.encode()))
    return f"<SG> {rng.choice(ENTITIES)},{rng.choice(ENTITIES)},holding </SG>"


def _walk(mode: str, lanes: int, done: dict[str, str] | None = None, stop_after: int | None = None):
    """Run a walk with the stand-in model: the prompts by id, the texts by id and the batches."""
    samples, done = _samples(), dict(done or {})
    walk = TakeWalk(samples, mode, "longshort", lanes, done)
    prompts, batches = {}, []
    while (stop_after is None or len(batches) < stop_after) and (batch := walk.next_batch()):
        batches.append([sample for _, sample, _ in batch])
        for index, sample, text in batch:
            assert sample.question == memory.insert_memory(HUMAN_TURN, text)
            prompts[sample.id] = sample.question
            done[sample.id] = _model(sample.question)
            walk.record(index, done[sample.id])
    return prompts, done, batches


@pytest.mark.parametrize("mode", ["oracle", "online"])
def test_the_walk_is_each_take_in_frame_order_side_by_side(mode):
    prompts, _, batches = _walk(mode, lanes=2)
    assert sorted(prompts) == sorted(s.id for s in _samples())  # every sample once
    for batch in batches:
        assert 1 <= len(batch) <= 2 and len({s.take for s in batch}) == len(batch)  # one sample of a take per step
    for take in {s.take for s in _samples()}:
        frames = [s.frame for batch in batches for s in batch if s.take == take]
        assert frames == sorted(frames)
    assert [len(b) for b in batches] == [2] * 7 + [1]  # a lane that finishes a take takes the next one


def test_oracle_memory_is_the_ground_truth_of_the_takes_earlier_frames():
    prompts, _, _ = _walk("oracle", lanes=3)
    for take in {s.take for s in _samples()}:
        own = sorted((s for s in _samples() if s.take == take), key=lambda s: s.frame)
        log = memory.change_log(
            [(s.frame, split_fields(s.answer)) for s in own], random.Random(zlib.crc32(take.name.encode()))
        )
        for sample in own:
            expected = memory.insert_memory(HUMAN_TURN, memory.memory_text(log, sample.frame, "longshort"))
            assert prompts[sample.id] == expected
    assert prompts[own[0].id] == memory.insert_memory(HUMAN_TURN, "Long: Short")  # nothing before the first frame


@pytest.mark.parametrize("mode", ["oracle", "online"])
def test_prompts_and_answers_do_not_depend_on_the_batch_size(mode):
    one = _walk(mode, lanes=1)[:2]
    assert _walk(mode, lanes=8)[:2] == one and _walk(mode, lanes=2)[:2] == one


def test_online_memory_comes_from_the_models_own_answers():
    oracle, online = _walk("oracle", lanes=2)[0], _walk("online", lanes=2)[0]
    later = [i for i in oracle if not oracle[i].endswith("<memory_start>: Long: Short<memory_end>.\n" + HUMAN_TURN[8:])]
    assert later and all(oracle[i] != online[i] for i in later[:5])
    for text in online.values():  # every entry names what the stand-in model can say
        for _, entries in memory.parse_sections(text.split("<memory_start>: ")[1].split("<memory_end>")[0]):
            assert all(entry.split(",")[0] in ENTITIES and entry.endswith("holding") for entry in entries)


def test_online_memory_holds_only_names_the_vocabulary_knows():
    samples = _samples()
    walk = TakeWalk(samples, "online", "short", 1, {})
    garbled = "<SG> head  surgeon,patient,holding; Long: x,bin,cutting; patient,bin,holding; scalpel,bin,flying </SG>"
    [(index, first, _)] = walk.next_batch()
    walk.record(index, garbled)
    [(_, second, text)] = walk.next_batch()
    assert second.take == first.take and text == "Short: patient,bin,holding"


def test_a_resumed_walk_replays_the_logged_answers_into_the_memory():
    full_prompts, full_texts, _ = _walk("online", lanes=3)
    _, interrupted, _ = _walk("online", lanes=3, stop_after=2)
    assert 0 < len(interrupted) < len(full_texts)
    resumed_prompts, resumed_texts, _ = _walk("online", lanes=3, done=interrupted)
    assert set(resumed_prompts) == set(full_texts) - set(interrupted)  # only the rest is generated
    assert all(resumed_prompts[i] == full_prompts[i] for i in resumed_prompts)
    assert resumed_texts == full_texts


# --- the command, with the tiny model ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def take_samples(sample_files, tmp_path_factory):
    """Four frames of each take of the test split (16 samples)."""
    samples = load_samples(sample_files["test"])
    chosen = [
        s
        for take in sorted({s.take for s in samples}, key=lambda t: t.name)
        for s in [x for x in samples if x.take == take][:4]
    ]
    path = tmp_path_factory.mktemp("takes") / "test.json"
    path.write_text(json.dumps([s.to_record() for s in chosen]))
    return path


_SLOW_INFER = """
import sys, time
from egoexor import infer
from egoexor.model.egoexor_llava import EgoExorLlava
generate = EgoExorLlava.generate
EgoExorLlava.generate = lambda *args, **kwargs: (time.sleep(0.5), generate(*args, **kwargs))[1]
sys.exit(infer.main(sys.argv[1:]))
"""


def _kill_after(argv: list[str], log: Path, lines: int) -> None:
    """Run the command in a process (each batch slowed down) and ``kill -9`` it once ``log`` has ``lines``."""
    process = subprocess.Popen([sys.executable, "-c", _SLOW_INFER, *argv], cwd=ROOT, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        if log.is_file() and len(log.read_text().splitlines()) >= lines:
            break
        time.sleep(0.05)
    process.kill()
    process.wait()
    assert process.returncode == -signal.SIGKILL


@pytest.mark.slow
def test_inference_with_memory_at_batch_8_equals_batch_1_and_resumes_after_kill_9_to_the_same(
    checkpoint, merged_file, take_samples, tmp_path, monkeypatch
):
    def argv(out, mode, batch_size):
        args = infer_args(checkpoint, merged_file, take_samples, out, "--temporal", mode)
        args[args.index("--batch_size") + 1] = str(batch_size)
        return args

    def run(out, mode, batch_size):
        assert infer.main(argv(out, mode, batch_size)) == 0
        return json.loads((out / "raw_predictions.json").read_text())

    one = {mode: run(tmp_path / f"{mode}1", mode, 1) for mode in ("oracle", "online")}
    memories = json.loads((tmp_path / "oracle1" / "memory.json").read_text())  # the memory of each prompt
    samples = load_samples(take_samples)
    assert memories.keys() == one["oracle"].keys() == {s.id for s in samples}
    firsts = {
        min((s for s in samples if s.take == take), key=lambda s: s.frame).id for take in {s.take for s in samples}
    }
    assert all((memories[i] == "Long: Short") == (i in firsts) for i in memories)
    for mode in ("oracle", "online"):
        assert len(one[mode]) == 16 and run(tmp_path / f"{mode}8", mode, 8) == one[mode], mode
    assert infer.main(argv(tmp_path / "oracle1", "online", 1)) == 2  # the mode is part of the run's identity
    assert infer.main([*argv(tmp_path / "oracle1", "oracle", 1), "--memory_style", "short"]) == 2
    # the untrained model's answers parse to no triplet, so its online memory stays empty: map each answer to
    # a scene graph that depends on it, and the memory on the model's own earlier answers
    generate_batch, prompts = infer._generate_batch, []

    def answers_as_scene_graphs(model, batch, ids, tokenizer, *args):
        prompts.extend(tokenizer.batch_decode(batch["input_ids"].clamp(min=0)))
        return [_model(text) for text in generate_batch(model, batch, ids, tokenizer, *args)]

    monkeypatch.setattr(infer, "_generate_batch", answers_as_scene_graphs)
    fed_back = run(tmp_path / "fed1", "online", 1)
    assert any(",holding" in prompt.split("<memory_end>")[0] for prompt in prompts)  # non-empty memories
    assert run(tmp_path / "fed8", "online", 8) == fed_back
    monkeypatch.setattr(infer, "_generate_batch", generate_batch)
    killed = tmp_path / "killed"
    log = killed / "raw_predictions.rank0.jsonl"
    _kill_after(argv(killed, "online", 8), log, lines=4)
    assert 4 <= len(log.read_text().splitlines()) < 16
    assert run(killed, "online", 8) == one["online"]  # resumed: the logged answers replayed into the memory
    lines = log.read_text().splitlines()
    log.write_text("\n".join(lines[:6]) + "\n" + lines[6][:10])  # as if killed while writing the 7th answer
    (killed / "raw_predictions.json").unlink()
    assert run(killed, "online", 8) == one["online"]


def test_samples_with_memory_already_are_refused_before_the_model_loads(
    checkpoint, merged_file, take_samples, tmp_path, capsys
):
    records = json.loads(take_samples.read_text())
    for record in records:
        record["conversations"][0]["value"] = memory.insert_memory(record["conversations"][0]["value"], "Short")
    samples = tmp_path / "with_memory.json"
    samples.write_text(json.dumps(records))
    out = tmp_path / "out"
    assert infer.main(infer_args(checkpoint, merged_file, samples, out, "--temporal", "oracle")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has memory in its prompt already" in err[0] and err[0].startswith("egoexor.infer: error:")
    assert not out.exists()
