"""``Batch``: the unit of data that moves between the driver and worker groups.

A batch holds three kinds of data:

* ``tensors``: ``dict[str, torch.Tensor]``, every tensor shaped ``[B, ...]`` (one shared leading
  batch dimension ``B``);
* ``non_tensors``: ``dict[str, list]``, python lists of length ``B`` holding any picklable objects
  (prompt strings, sample ids, environment dicts);
* ``meta``: ``dict[str, Any]`` that belongs to the batch as a whole (global step, temperature); it is
  never split: every part of a split gets a shallow copy.

Batches are split by data-parallel rank (:meth:`Batch.split`, :meth:`Batch.pad_to_multiple`) and put
back together (:meth:`Batch.concat`, :meth:`Batch.unpad`). When a batch is pickled (``ray.put``,
actor call arguments and results) its tensors travel as numpy arrays: Ray moves numpy through its
object store without copying, while torch tensors go through the slow generic pickle path.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

Index = int | slice | list[int] | torch.Tensor | np.ndarray

# Same-width integer dtypes used to carry tensors whose dtype numpy lacks (bfloat16, float8 ...).
_INT_OF_WIDTH = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


@dataclass
class Batch:
    """Tensors, non-tensor columns and meta sharing one leading batch dimension.

    Build one with :meth:`Batch.from_dict`, which checks that every column has the same length.
    Methods that return a batch never modify ``self``; only :meth:`pop` does.
    """

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    non_tensors: dict[str, list] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._check_columns()

    # ------------------------------------------------------------------ construction / checks
    @classmethod
    def from_dict(
        cls,
        tensors: dict[str, torch.Tensor] | None = None,
        non_tensors: dict[str, Iterable] | None = None,
        meta: dict[str, Any] | None = None,
    ) -> Batch:
        """Build a batch; non-tensor columns may be any sequence and are stored as lists.

        Raises:
            ValueError: a column's length differs from the others (the message names the column
                and both lengths), a tensor has no batch dimension, or a key is both a tensor and a
                non-tensor column.
            TypeError: a tensor column is not a ``torch.Tensor``.
        """
        return cls(
            tensors=dict(tensors or {}),
            non_tensors={key: list(values) for key, values in (non_tensors or {}).items()},
            meta=dict(meta or {}),
        )

    def _check_columns(self) -> None:
        """Validate types and lengths; ``B`` is fixed by the first column."""
        for key, tensor in self.tensors.items():
            if not isinstance(tensor, torch.Tensor):
                raise TypeError(
                    f"Batch tensor '{key}' is a {type(tensor).__name__}, not a torch.Tensor; "
                    "put python objects under non_tensors"
                )
            if tensor.dim() == 0:
                raise ValueError(
                    f"Batch tensor '{key}' is a 0-dim scalar; tensors need a leading batch "
                    "dimension (use tensor.unsqueeze(0) or put the scalar in meta)"
                )
        columns = [(k, v.shape[0]) for k, v in self.tensors.items()]
        for key, values in self.non_tensors.items():
            if not isinstance(values, list):
                raise TypeError(
                    f"Batch non-tensor column '{key}' is a {type(values).__name__}, not a list; "
                    "Batch.from_dict converts sequences for you"
                )
            columns.append((key, len(values)))
        clash = self.tensors.keys() & self.non_tensors.keys()
        if clash:
            raise ValueError(f"Batch keys {sorted(clash)} are both tensor and non-tensor columns")
        first_key: str | None = None
        length = 0
        for key, column_length in columns:
            if first_key is None:
                first_key, length = key, column_length
            elif column_length != length:
                raise ValueError(
                    f"Batch column '{key}' has length {column_length} but column '{first_key}' "
                    f"has length {length}; every column needs the same leading batch size"
                )

    # ------------------------------------------------------------------ basic access
    def __len__(self) -> int:
        for tensor in self.tensors.values():
            return int(tensor.shape[0])
        for values in self.non_tensors.values():
            return len(values)
        return 0

    def keys(self) -> list[str]:
        """Tensor keys then non-tensor keys (meta keys are not columns)."""
        return [*self.tensors, *self.non_tensors]

    def __contains__(self, key: object) -> bool:
        return key in self.tensors or key in self.non_tensors

    def __getitem__(self, idx: Index) -> Batch:
        """Rows ``idx`` as a new batch; an int keeps the batch dimension (a batch of one row).

        ``idx`` may be an int, a slice, a list of ints, a 1-D integer or boolean tensor/array.
        """
        if isinstance(idx, int):
            n = len(self)
            if not -n <= idx < n:
                raise IndexError(f"row {idx} is out of range for a Batch of {n} rows")
            idx = slice(idx % n, idx % n + 1)
        if isinstance(idx, slice):
            return Batch(
                tensors={k: v[idx] for k, v in self.tensors.items()},
                non_tensors={k: v[idx] for k, v in self.non_tensors.items()},
                meta=dict(self.meta),
            )
        if isinstance(idx, (list, tuple)):
            rows = torch.tensor(list(idx), dtype=torch.long)
        else:
            rows = torch.as_tensor(idx)
        if rows.dtype == torch.bool:
            rows = rows.nonzero().flatten()
        if rows.dim() != 1 or rows.is_floating_point():
            raise TypeError(f"Batch rows must be an int, slice or 1-D integer index, got {idx!r}")
        rows = rows.long()
        positions = rows.tolist()
        return Batch(
            tensors={k: v[rows.to(v.device)] for k, v in self.tensors.items()},
            non_tensors={k: [v[i] for i in positions] for k, v in self.non_tensors.items()},
            meta=dict(self.meta),
        )

    def select(self, *keys: str) -> Batch:
        """A batch with only the named columns (meta is kept)."""
        missing = [key for key in keys if key not in self]
        if missing:
            raise KeyError(f"Batch has no column {missing}; columns are {self.keys()}")
        return Batch(
            tensors={k: v for k, v in self.tensors.items() if k in keys},
            non_tensors={k: v for k, v in self.non_tensors.items() if k in keys},
            meta=dict(self.meta),
        )

    def pop(self, key: str) -> torch.Tensor | list:
        """Remove a column from this batch and return it."""
        if key in self.tensors:
            return self.tensors.pop(key)
        if key in self.non_tensors:
            return self.non_tensors.pop(key)
        raise KeyError(f"Batch has no column '{key}'; columns are {self.keys()}")

    def to_dict(self) -> dict[str, dict]:
        """``{"tensors": ..., "non_tensors": ..., "meta": ...}``: the inverse of ``from_dict(**d)``."""
        return {
            "tensors": dict(self.tensors),
            "non_tensors": {k: list(v) for k, v in self.non_tensors.items()},
            "meta": dict(self.meta),
        }

    # ------------------------------------------------------------------ combining
    def union(self, other: Batch) -> Batch:
        """Columns and meta of both batches; shared keys must hold equal values.

        Raises:
            ValueError: lengths differ, or a key appears in both with different values.
        """
        if len(self) != len(other):
            raise ValueError(f"cannot union a Batch of {len(self)} rows with one of {len(other)}")
        merged = Batch(dict(self.tensors), dict(self.non_tensors), dict(self.meta))
        for part, theirs in (
            ("tensors", other.tensors),
            ("non_tensors", other.non_tensors),
            ("meta", other.meta),
        ):
            ours = getattr(merged, part)
            for key, value in theirs.items():
                if key in ours and not _values_equal(ours[key], value):
                    raise ValueError(
                        f"Batch.union: {part} key '{key}' is in both batches with different "
                        "values; rename or pop one of them first"
                    )
                ours[key] = value
        merged._check_columns()
        return merged

    @staticmethod
    def concat(batches: list[Batch]) -> Batch:
        """Rows of all batches in order; meta comes from the first batch.

        Raises:
            ValueError: the list is empty, the batches have different keys, or a tensor's trailing
                shape or dtype differs between batches.
        """
        if not batches:
            raise ValueError("Batch.concat needs at least one batch")
        first = batches[0]
        for i, batch in enumerate(batches[1:], start=1):
            if set(batch.tensors) != set(first.tensors) or set(batch.non_tensors) != set(first.non_tensors):
                raise ValueError(
                    f"Batch.concat: batch {i} has columns {sorted(batch.keys())} but batch 0 has "
                    f"{sorted(first.keys())}"
                )
        tensors = {}
        for key in first.tensors:
            parts = [batch.tensors[key] for batch in batches]
            shapes = {(tuple(t.shape[1:]), t.dtype) for t in parts}
            if len(shapes) > 1:
                raise ValueError(
                    f"Batch.concat: tensor '{key}' has differing trailing shapes/dtypes "
                    f"{sorted(map(str, shapes))}; pad them to one length first"
                )
            tensors[key] = torch.cat(parts, dim=0)
        non_tensors = {
            key: [item for batch in batches for item in batch.non_tensors[key]] for key in first.non_tensors
        }
        return Batch(tensors=tensors, non_tensors=non_tensors, meta=dict(first.meta))

    # ------------------------------------------------------------------ data-parallel helpers
    def split(self, n: int) -> list[Batch]:
        """``n`` contiguous parts of ``len(self) // n`` rows each.

        Raises:
            ValueError: ``len(self)`` is not a multiple of ``n`` (call :meth:`pad_to_multiple`).
        """
        if n <= 0:
            raise ValueError(f"Batch.split needs a positive number of parts, got {n}")
        if len(self) % n:
            raise ValueError(
                f"cannot split a Batch of {len(self)} rows into {n} equal parts; "
                f"call batch.pad_to_multiple({n}) first and unpad the result"
            )
        size = len(self) // n
        return [self[i * size : (i + 1) * size] for i in range(n)]

    def pad_to_multiple(self, n: int) -> tuple[Batch, int]:
        """Append copies of the first rows (cyclically) until ``len % n == 0``.

        Returns:
            ``(padded, pad)``: the padded batch and the number of rows added (``0 <= pad < n``);
            ``padded.unpad(pad)`` restores the original rows.
        """
        if n <= 0:
            raise ValueError(f"Batch.pad_to_multiple needs a positive multiple, got {n}")
        length = len(self)
        pad = (-length) % n
        if pad == 0:
            return self[:], 0
        if length == 0:
            raise ValueError("cannot pad an empty Batch: there is no row to repeat")
        filler = self[[i % length for i in range(pad)]]
        return Batch.concat([self, filler]), pad

    def unpad(self, count: int) -> Batch:
        """This batch without its last ``count`` rows."""
        if not 0 <= count <= len(self):
            raise ValueError(f"cannot unpad {count} rows from a Batch of {len(self)} rows")
        return self[: len(self) - count]

    # ------------------------------------------------------------------ comparison
    def equal(self, other: Batch) -> bool:
        """True when keys, dtypes, shapes and values match bitwise, and meta compares equal."""
        if not isinstance(other, Batch):
            return False
        if self.tensors.keys() != other.tensors.keys():
            return False
        if self.non_tensors.keys() != other.non_tensors.keys():
            return False
        for key, values in self.non_tensors.items():
            theirs = other.non_tensors[key]
            if len(values) != len(theirs) or not all(map(_values_equal, values, theirs)):
                return False
        if not all(_tensors_bitwise_equal(v, other.tensors[k]) for k, v in self.tensors.items()):
            return False
        return self.meta.keys() == other.meta.keys() and all(
            _values_equal(v, other.meta[k]) for k, v in self.meta.items()
        )

    def __repr__(self) -> str:
        tensors = ", ".join(f"{k}: {tuple(v.shape)} {v.dtype}" for k, v in self.tensors.items())
        return (
            f"Batch(len={len(self)}, tensors={{{tensors}}}, "
            f"non_tensors={list(self.non_tensors)}, meta={list(self.meta)})"
        )

    # ------------------------------------------------------------------ pickling as numpy
    def __reduce__(self) -> tuple:
        """Pickle tensors as ``(numpy array, torch dtype name)`` pairs (see module docstring)."""
        state = {
            "tensors": {key: _tensor_to_numpy(t) for key, t in self.tensors.items()},
            "non_tensors": self.non_tensors,
            "meta": self.meta,
        }
        return (_batch_from_state, (state,))

    def __deepcopy__(self, memo: dict) -> Batch:
        return Batch(
            tensors={k: v.clone() for k, v in self.tensors.items()},
            non_tensors=copy.deepcopy(self.non_tensors, memo),
            meta=copy.deepcopy(self.meta, memo),
        )


def _tensor_to_numpy(tensor: torch.Tensor) -> tuple[np.ndarray, str]:
    """A numpy array holding the tensor's bits, plus the torch dtype name to restore it."""
    tensor = tensor.detach().cpu().resolve_conj().resolve_neg()
    dtype_name = str(tensor.dtype).removeprefix("torch.")
    try:
        return tensor.numpy(), dtype_name
    except TypeError:  # bfloat16, float8 ...: numpy has no such dtype, carry the raw bits
        return tensor.view(_INT_OF_WIDTH[tensor.element_size()]).numpy(), dtype_name


def _numpy_to_tensor(array: np.ndarray, dtype_name: str) -> torch.Tensor:
    # Arrays that Ray hands back from its object store are read-only shared memory; writing through
    # a tensor that aliases them would crash the worker, so those are copied (≈28 GB/s here).
    if not array.flags.writeable:
        array = array.copy()
    tensor = torch.from_numpy(array)
    dtype = getattr(torch, dtype_name)
    return tensor if tensor.dtype == dtype else tensor.view(dtype)


def _batch_from_state(state: dict) -> Batch:
    """Unpickle target of :meth:`Batch.__reduce__`."""
    return Batch(
        tensors={k: _numpy_to_tensor(arr, name) for k, (arr, name) in state["tensors"].items()},
        non_tensors=state["non_tensors"],
        meta=state["meta"],
    )


def _tensors_bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.is_complex():
        a, b = torch.view_as_real(a), torch.view_as_real(b)
    width = _INT_OF_WIDTH.get(a.element_size())
    if a.dtype != torch.bool and width is not None:
        # Compare bits, so NaNs and -0.0 count as equal only to themselves.
        a, b = a.contiguous().view(width), b.contiguous().view(width)
    return torch.equal(a.cpu(), b.cpu())


def _values_equal(a: Any, b: Any) -> bool:
    """Equality that also works for tensors and arrays (whose ``==`` is elementwise)."""
    if a is b:
        return True
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and _tensors_bitwise_equal(a, b)
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return bool(np.array_equal(a, b))
    try:
        return bool(a == b)
    except (TypeError, ValueError):  # objects whose == is ambiguous (e.g. lists of tensors)
        return False
