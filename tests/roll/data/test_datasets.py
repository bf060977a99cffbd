"""Datasets: arithmetic rows, JSONL rows with clear errors, and the resumable sampler."""

from __future__ import annotations

from pathlib import Path

import pytest

from roll.data import ArithmeticConfig, DataConfig, PromptSampler, load_rows
from roll.data.datasets import arithmetic_rows
from roll.errors import DataError


def test_arithmetic_rows_cover_every_pair_with_exact_answers() -> None:
    rows = arithmetic_rows(ArithmeticConfig(max_operand=4, ops=["+", "-"]))
    plus = [r for r in rows if "+" in r["id"]]
    minus = [r for r in rows if "-" in r["id"]]
    assert len(plus) == 25 and len(minus) == 15  # negative differences are left out
    row = next(r for r in rows if r["id"] == "3+4")
    assert row["prompt"] == "3 + 4 =" and row["answer"] == "7"


def test_jsonl_bad_rows_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"id": "a", "prompt": "p", "answer": "1"}\n{"prompt": "q"}\n')
    with pytest.raises(DataError, match=r"d.jsonl:2: row lacks \['answer'\]"):
        load_rows(DataConfig(name="jsonl", path=str(path)))
    path.write_text('{"id": "a", "prompt": "p", "answer": "1"}\nnot json\n')
    with pytest.raises(DataError, match=r"d.jsonl:2: not valid JSON"):
        load_rows(DataConfig(name="jsonl", path=str(path)))
    path.write_text('{"id": "a", "prompt": "p", "answer": 1}\n{"id": "a", "prompt": "q", "answer": 2}\n')
    with pytest.raises(DataError, match="duplicate id 'a'"):
        load_rows(DataConfig(name="jsonl", path=str(path)))


def test_jsonl_rows_load(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "2+2?", "answer": 4, "tag": "math"}\n\n{"prompt": "hi", "answer": "x"}\n')
    rows = load_rows(DataConfig(name="jsonl", path=str(path)))
    assert [r["id"] for r in rows] == ["row1", "row3"]
    assert rows[0]["answer"] == "4" and rows[1]["tag"] == "default"


def test_sampler_is_seeded_covers_epochs_and_resumes() -> None:
    rows = [{"id": str(i)} for i in range(5)]
    a = PromptSampler(rows, seed=3)
    first = [r["id"] for r in a.next(5)]
    assert sorted(first) == ["0", "1", "2", "3", "4"]  # one epoch = every row once
    b = PromptSampler(rows, seed=3)
    b.next(3)
    state = b.state_dict()
    c = PromptSampler(rows, seed=3)
    c.load_state_dict(state)
    assert [r["id"] for r in c.next(6)] == [r["id"] for r in b.next(6)]
