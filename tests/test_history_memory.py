"""Memory helps where history matters: the tiny model on the ``history`` synthetic profile.

The profile's held scalpel shows only in the frame it is picked up and the frame it is put down; in every
other frame whether it is held follows from earlier frames alone (``synthetic.history_dependent``).
``egoexor.memory_benchmark`` trains the tiny model on samples with memory (MM-OR's mix, half of them
without), then generates the held-out test split without memory, with the ground truth's (``infer
--temporal oracle``) and with its own (``online``), and scores only those relations. The test compares the
first two; ``online`` is printed, not asserted.
"""

import pytest

from egoexor import memory_benchmark

#: How much higher the held scalpel's accuracy must be with oracle memory than without (measured, seed 0: 0.28;
#: seed 1, not tested: 0.39).
MARGIN = 0.2
#: How far below the memory's bound the oracle run may be (measured, seed 0: 0; seed 1: 0.11).
BELOW_BOUND = 0.15


@pytest.mark.slow
def test_oracle_memory_beats_no_memory_on_the_history_dependent_relations(tmp_path):
    result = memory_benchmark.run(tmp_path / "benchmark")
    print(memory_benchmark.table(result))
    none, oracle = result["none"]["held_accuracy"], result["oracle"]["held_accuracy"]
    assert oracle >= none + MARGIN
    assert oracle >= result["memory_bound"] - BELOW_BOUND  # it reads the memory nearly as well as the memory allows


def test_the_benchmark_refuses_a_folder_of_other_files_in_one_line(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert memory_benchmark.main(["--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"{memory_benchmark.COMMAND}: error: ")
    assert (tmp_path / "notes.txt").read_text() == "mine"
