"""SFT / RFT data (rl/sft_data.py): trajectory files round-trip (parquet and Arrow IPC), bad rows are
reported by file, row and column, the RFT filter follows SEEDS 3.3 (checklist item 27) and 6.1, and
the batch iterator resumes exactly."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rl.sft_data import (RFT_PRESETS, SFTBatches, read_trajectories, rft_filter, rft_select,
                         write_trajectories)
from rollout.trajectory import TrajectoryRecord, build_batch, with_columns


def trajectories(n=6, seed=0, unique_uids=False) -> pa.RecordBatch:
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        r = int(rng.integers(3, 9))
        records.append(TrajectoryRecord(
            uid=f"t{i}" if unique_uids else f"q{i // 2}", group=i // 2, sample=i % 2,
            prompt_ids=rng.integers(0, 500, 4).tolist(), response_ids=rng.integers(0, 500, r).tolist(),
            loss_mask=[1, 0] * (r // 2) + [1] * (r % 2), rollout_logprobs=[-1.0] * r, num_turns=3,
            num_tool_calls=7, finish="answer"))
    batch = build_batch(records)
    return with_columns(batch, {"reward": np.linspace(0, 1, n).astype(np.float32),
                                "reward_answer": np.ones(n, np.float32),
                                "reward_format": np.ones(n, np.float32)})


# --- files ------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".parquet", ".arrow"])
def test_write_then_read_round_trips(tmp_path, suffix):
    batch = trajectories()
    path = write_trajectories(tmp_path / f"step_000001{suffix}", batch)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left
    assert read_trajectories(path).equals(batch)


def test_read_several_files_and_folders_with_different_extra_columns(tmp_path):
    a = trajectories(4, seed=1)
    b = trajectories(2, seed=2).drop_columns(["reward_format"])
    write_trajectories(tmp_path / "run" / "step_1.parquet", a)
    write_trajectories(tmp_path / "run" / "step_2.arrow", b)
    got = read_trajectories(tmp_path / "run")
    assert got.num_rows == 6
    assert got.column("uid").to_pylist() == a.column("uid").to_pylist() + b.column("uid").to_pylist()
    assert got.column("reward_format").to_pylist() == [1.0] * 4 + [None] * 2
    assert read_trajectories([tmp_path / "run" / "step_2.arrow"]).num_rows == 2


def test_bad_rows_are_named_by_file_row_and_column(tmp_path):
    good = trajectories(4)
    # a ragged mismatch in row 2: response_ids has one token more than loss_mask
    cols = {name: good.column(name).to_pylist() for name in good.schema.names}
    cols["response_ids"][2] = cols["response_ids"][2] + [7]
    bad = pa.RecordBatch.from_pydict(cols, schema=good.schema)
    pq.write_table(pa.Table.from_batches([bad]), tmp_path / "ragged.parquet")
    with pytest.raises(ValueError,
                       match=r"ragged\.parquet: trajectory row 2 \(uid='q1'\): response_ids has \d+ tokens but loss_mask"):
        read_trajectories(tmp_path / "ragged.parquet")

    cols = {name: good.column(name).to_pylist() for name in good.schema.names}
    cols["loss_mask"][3] = [2] * len(cols["loss_mask"][3])
    pq.write_table(pa.Table.from_pydict(cols, schema=good.schema), tmp_path / "mask.parquet")
    with pytest.raises(ValueError, match=r"mask\.parquet: trajectory row 3 \(uid='q1'\): loss_mask holds 2"):
        read_trajectories(tmp_path / "mask.parquet")

    loose = pa.schema([f.with_nullable(True) for f in good.schema])
    cols = {name: good.column(name).to_pylist() for name in good.schema.names}
    cols["finish"][1] = None
    pq.write_table(pa.Table.from_pydict(cols, schema=loose), tmp_path / "null.parquet")
    with pytest.raises(ValueError, match=r"null\.parquet: trajectory row 1 \(uid='q0'\): column 'finish' is null"):
        read_trajectories(tmp_path / "null.parquet")

    pq.write_table(pa.Table.from_batches([good.drop_columns(["loss_mask"])]), tmp_path / "short.parquet")
    with pytest.raises(ValueError, match=r"short\.parquet: missing trajectory column\(s\) \['loss_mask'\]"):
        read_trajectories(tmp_path / "short.parquet")

    pq.write_table(pa.Table.from_batches([good]).append_column("colour", pa.array(["red"] * 4)),
                   tmp_path / "extra.parquet")
    with pytest.raises(KeyError, match=r"extra\.parquet: .*unknown trajectory column 'colour'"):
        read_trajectories(tmp_path / "extra.parquet")

    with pytest.raises(ValueError, match=r"trajectories\.csv: trajectory files end in"):
        write_trajectories(tmp_path / "trajectories.csv", good)
    with pytest.raises(ValueError, match="row 2"):
        write_trajectories(tmp_path / "never.parquet", bad)  # validated before writing
    assert not (tmp_path / "never.parquet").exists()
    with pytest.raises(FileNotFoundError, match="nowhere"):
        read_trajectories(tmp_path / "nowhere")


# --- the RFT filter ---------------------------------------------------------------------------


def rft_case() -> pa.RecordBatch:
    """Row: 0 kept; 1 correct, 6 calls, 40k tokens; 2 correct, 3 calls; 3 wrong answer; 4 reward 1
    but no final answer (max_turns); 5 correct, exactly 5 calls; 6 the answer part is NaN."""
    lengths = [1_000, 40_000, 1_000, 1_000, 1_000, 1_000, 1_000]
    records = [TrajectoryRecord(uid=f"q{i}", group=i, sample=0, prompt_ids=[1, 2, 3], response_ids=[5 + i] * (n - 3),
                                loss_mask=[1] * (n - 3), rollout_logprobs=[0.0] * (n - 3), num_tool_calls=calls,
                                finish=finish)
               for i, (n, calls, finish) in enumerate(zip(lengths, [6, 6, 3, 8, 9, 5, 7],
                                                          ["answer"] * 4 + ["max_turns"] + ["answer"] * 2))]
    return with_columns(build_batch(records), {"reward_answer": np.array([1, 1, 1, 0, 1, 1, np.nan], np.float32),
                                               "reward_format": np.array([1, 1, 1, 1, 1, 1, 1], np.float32)})


def test_rft_filter_websailor_rule():
    """SEEDS 3.3 / checklist 27: correct, at most 32k tokens, more than 5 tool calls."""
    batch = rft_case()
    rows, stats = rft_select(batch, **RFT_PRESETS["websailor"])
    assert rows.tolist() == [0]
    assert stats == {"rft/input": 7, "rft/correct": 4, "rft/length": 3, "rft/tool_calls": 1, "rft/kept": 1}
    kept, _ = rft_filter(batch, **RFT_PRESETS["websailor"])
    assert kept.column("uid").to_pylist() == ["q0"]
    # a `correct` flag, where given, decides instead of the reward parts
    rows, _ = rft_select(batch, **RFT_PRESETS["websailor"], correct=np.array([0, 1, 1, 1, 1, 1, 1], bool))
    assert rows.tolist() == [3, 6]
    with pytest.raises(KeyError, match=r"no column\(s\) \['reward_judge'\].*reward columns here: \['reward_answer'"):
        rft_select(batch, correct_parts=("judge",))


def test_rft_filter_evolvesearch_rule_deduplicates():
    """SEEDS 6.1: format and answer both correct, exact duplicates (e.g. DUPO copies) once."""
    batch = rft_case()
    twice = pa.Table.from_batches([batch, batch]).combine_chunks().to_batches()[0]
    twice = with_columns(twice, {"reward_format": np.array([1, 1, 0, 1, 1, 1, 1] * 2, np.float32)})
    rows, stats = rft_select(twice, **RFT_PRESETS["evolvesearch"])
    assert rows.tolist() == [0, 1, 5]  # row 2 fails the format, 3 the answer, 4 has no answer, 6 is NaN
    assert stats["rft/correct"] == 6 and stats["rft/dedup"] == 3


# --- batches ----------------------------------------------------------------------------------


def uids(batches) -> list[list[str]]:
    return [b.column("uid").to_pylist() for b in batches]


def test_sft_batches_fixed_size_shuffled_epochs():
    data = trajectories(10, unique_uids=True)
    batches = SFTBatches(data, 3, seed=7, epochs=3, columns=("uid", "prompt_ids", "response_ids", "loss_mask"))
    assert len(batches) == 9
    got = uids(batches)
    assert len(got) == 9 and all(len(b) == 3 for b in got)
    epochs = [[u for b in got[3 * e:3 * e + 3] for u in b] for e in range(3)]
    for epoch in epochs:  # no row twice in an epoch; one row (10 % 3) sits each epoch out
        assert len(set(epoch)) == 9
    assert len({tuple(e) for e in epochs}) == 3  # a fresh permutation per epoch
    again = SFTBatches(data, 3, seed=7, epochs=3, columns=("uid", "prompt_ids", "response_ids", "loss_mask"))
    assert uids(again) == got  # same seed, same order
    other = SFTBatches(data, 3, seed=8, epochs=3, columns=("uid", "prompt_ids", "response_ids", "loss_mask"))
    assert uids(other) != got
    first = next(iter(SFTBatches(data, 4)))
    assert first.schema.names == ["prompt_ids", "response_ids", "loss_mask"]  # what an SFT step reads


@pytest.mark.parametrize("stop_after", [1, 3, 4, 7])
def test_sft_batches_resume_exactly(stop_after):
    data = trajectories(11, seed=3)
    cols = ("prompt_ids", "response_ids", "loss_mask")
    straight = [b.to_pydict() for b in SFTBatches(data, 4, seed=1, epochs=4, columns=cols)]

    first = SFTBatches(data, 4, seed=1, epochs=4, columns=cols)
    it = iter(first)
    seen = [next(it).to_pydict() for _ in range(stop_after)]
    state = first.state_dict()  # e.g. saved in a checkpoint, then the process dies

    resumed = SFTBatches(data, 4, seed=1, epochs=4, columns=cols)
    resumed.load_state_dict(state)
    assert len(resumed) == len(straight) - stop_after
    assert seen + [b.to_pydict() for b in resumed] == straight


def test_sft_batches_refuse_a_different_data_set():
    state = SFTBatches(trajectories(8), 2).state_dict()
    other = SFTBatches(trajectories(8, seed=5), 2)
    with pytest.raises(ValueError, match="fingerprint"):
        other.load_state_dict(state)
    with pytest.raises(ValueError, match="cannot fill one batch of 9"):
        SFTBatches(trajectories(8), 9)
