"""Batch: construction checks, indexing, split/concat/pad round trips, union, pickling as numpy."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
import torch

from roll.controller import Batch


def make_batch(n: int = 7) -> Batch:
    """A batch with every dtype the platform moves around, plus python columns and meta."""
    x = torch.randn(n, 3, generator=torch.Generator().manual_seed(0))
    x[0, 0] = float("nan")  # bitwise comparison must still see it as equal to itself
    return Batch.from_dict(
        tensors={
            "x": x,
            "bf": (x * 3).to(torch.bfloat16),
            "ids": torch.arange(n, dtype=torch.int64) * 10,
            "mask": torch.arange(n) % 2 == 0,
        },
        non_tensors={"text": [f"row{i}" for i in range(n)], "info": [{"i": i} for i in range(n)]},
        meta={"step": 3},
    )


def test_from_dict_names_the_mismatched_column_and_both_lengths() -> None:
    with pytest.raises(ValueError, match=r"'text' has length 2 but column 'x' has length 3"):
        Batch.from_dict(tensors={"x": torch.zeros(3)}, non_tensors={"text": ["a", "b"]})
    with pytest.raises(ValueError, match=r"'y' has length 4 but column 'x' has length 3"):
        Batch.from_dict(tensors={"x": torch.zeros(3), "y": torch.zeros(4, 2)})
    with pytest.raises(ValueError, match="0-dim"):
        Batch.from_dict(tensors={"x": torch.tensor(1.0)})
    with pytest.raises(TypeError, match="not a torch.Tensor"):
        Batch.from_dict(tensors={"x": [1, 2]})


def test_len_keys_select_pop_to_dict() -> None:
    batch = make_batch()
    assert len(batch) == 7 and len(Batch()) == 0
    assert batch.keys() == ["x", "bf", "ids", "mask", "text", "info"]
    picked = batch.select("ids", "text")
    assert picked.keys() == ["ids", "text"] and picked.meta == {"step": 3}
    with pytest.raises(KeyError, match="nope"):
        batch.select("nope")
    assert Batch.from_dict(**batch.to_dict()).equal(batch)
    assert batch.pop("text") == [f"row{i}" for i in range(7)]
    assert "text" not in batch


@pytest.mark.parametrize(
    "idx, rows",
    [
        (2, [2]),
        (-1, [6]),
        (slice(1, 5, 2), [1, 3]),
        ([4, 0, 4], [4, 0, 4]),
        (torch.tensor([6, 1]), [6, 1]),
        (np.array([3]), [3]),
        (torch.arange(7) >= 5, [5, 6]),
        ([], []),
    ],
)
def test_getitem_selects_rows_in_every_column(idx: object, rows: list[int]) -> None:
    batch = make_batch()
    part = batch[idx]
    assert len(part) == len(rows)
    assert part.tensors["ids"].tolist() == [r * 10 for r in rows]
    assert part.non_tensors["text"] == [f"row{r}" for r in rows]
    expected_bits = batch.tensors["bf"][rows].view(torch.int16)  # bits: row 0 holds a NaN
    assert torch.equal(part.tensors["bf"].view(torch.int16), expected_bits)
    assert part.meta == batch.meta


def test_getitem_out_of_range() -> None:
    with pytest.raises(IndexError, match="row 7 is out of range for a Batch of 7 rows"):
        make_batch()[7]


@pytest.mark.parametrize("n", [1, 2, 4, 8])
def test_split_then_concat_is_bitwise_identical(n: int) -> None:
    batch = make_batch(8)
    parts = batch.split(n)
    assert [len(p) for p in parts] == [8 // n] * n
    assert parts[-1].non_tensors["text"][-1] == "row7"
    assert Batch.concat(parts).equal(batch)


def test_split_needs_a_multiple_and_suggests_padding() -> None:
    with pytest.raises(ValueError, match=r"7 rows into 3 .*pad_to_multiple\(3\)"):
        make_batch(7).split(3)


@pytest.mark.parametrize("length, n, fill", [(7, 3, [0, 1]), (2, 5, [0, 1, 0]), (6, 3, [])])
def test_pad_repeats_first_rows_cyclically_and_unpad_restores(length: int, n: int, fill: list[int]) -> None:
    batch = make_batch(length)
    padded, pad = batch.pad_to_multiple(n)
    assert pad == len(fill) and len(padded) % n == 0
    assert padded[length:].equal(batch[fill])
    assert padded.unpad(pad).equal(batch)
    assert Batch.concat(padded.split(n)).unpad(pad).equal(batch)


def test_concat_checks_keys_and_takes_meta_from_first() -> None:
    a, b = make_batch(2), make_batch(3)
    b.meta["step"] = 99
    assert Batch.concat([a, b]).meta == {"step": 3}
    with pytest.raises(ValueError, match="batch 1 has columns"):
        Batch.concat([a, b.select("x")])
    with pytest.raises(ValueError, match="at least one"):
        Batch.concat([])


def test_union_merges_and_rejects_clashes() -> None:
    batch = make_batch(4)
    extra = Batch.from_dict(
        tensors={"x": batch.tensors["x"].clone(), "y": torch.ones(4)},
        non_tensors={"z": list("abcd")},
        meta={"temperature": 0.7},
    )
    merged = batch.union(extra)
    assert merged.keys() == ["x", "bf", "ids", "mask", "y", "text", "info", "z"]
    assert merged.meta == {"step": 3, "temperature": 0.7}
    assert "y" not in batch  # union returns a new batch

    clash = Batch.from_dict(tensors={"x": torch.zeros(4, 3)})
    with pytest.raises(ValueError, match="tensors key 'x' is in both batches with different"):
        batch.union(clash)
    with pytest.raises(ValueError, match="union a Batch of 4 rows with one of 2"):
        batch.union(make_batch(2))


def test_equal_is_bitwise_and_dtype_aware() -> None:
    batch = make_batch()
    assert batch.equal(copy.deepcopy(batch))  # NaN equals itself bitwise
    other = copy.deepcopy(batch)
    other.tensors["ids"] = other.tensors["ids"].to(torch.int32)
    assert not batch.equal(other)
    other = copy.deepcopy(batch)
    other.tensors["x"][1, 1] = -other.tensors["x"][1, 1]
    assert not batch.equal(other)


def test_pickle_moves_tensors_as_numpy_and_restores_dtypes() -> None:
    batch = make_batch()
    _, (state,) = batch.__reduce__()
    for key, (array, dtype_name) in state["tensors"].items():
        assert isinstance(array, np.ndarray), key
        assert getattr(torch, dtype_name) == batch.tensors[key].dtype
    assert state["tensors"]["bf"][0].dtype == np.int16  # bf16 bits travel as int16

    data = pickle.dumps(batch, protocol=5)
    assert b"_rebuild_tensor" not in data and b"torch.storage" not in data
    restored = pickle.loads(data)
    assert restored.equal(batch)
    assert {k: v.dtype for k, v in restored.tensors.items()} == {
        "x": torch.float32,
        "bf": torch.bfloat16,
        "ids": torch.int64,
        "mask": torch.bool,
    }


def test_unpickled_tensors_are_writable_even_from_read_only_buffers() -> None:
    # Ray hands back numpy arrays that alias read-only shared memory; they must be copied.
    batch = make_batch(3)
    rebuild, (state,) = batch.__reduce__()
    state["tensors"] = {k: (np.array(a, copy=True), name) for k, (a, name) in state["tensors"].items()}
    for array, _ in state["tensors"].values():
        array.flags.writeable = False
    restored = rebuild(state)
    restored.tensors["ids"] += 1
    restored.tensors["bf"].mul_(2)
    assert restored.tensors["ids"].tolist() == [1, 11, 21]


def test_pickle_keeps_only_the_rows_of_a_sliced_batch() -> None:
    big = Batch.from_dict(tensors={"x": torch.zeros(10_000, 64)})
    small = big[:2]
    assert len(pickle.dumps(small, protocol=5)) < 4096  # not the whole 2.5 MB storage
