"""Helpers shared by the grid games (FrozenLake, Sokoban): moves, board parsing, breadth-first search."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable, Iterable
from typing import TypeVar

Cell = tuple[int, int]
State = TypeVar("State", bound=Hashable)

#: Row/column offset of each move word.
MOVES: dict[str, Cell] = {"left": (0, -1), "down": (1, 0), "right": (0, 1), "up": (-1, 0)}


def shift(cell: Cell, move: Cell) -> Cell:
    return cell[0] + move[0], cell[1] + move[1]


def board_from_text(text: str, alphabet: str) -> list[str] | None:
    """The last block of consecutive lines made only of ``alphabet`` characters (a rendered board).

    Lines shorter than 2 characters never count, so instruction text is not mistaken for a board.
    """
    blocks: list[list[str]] = [[]]
    for line in text.splitlines():
        line = line.strip()
        if len(line) >= 2 and all(ch in alphabet for ch in line):
            blocks[-1].append(line)
        elif blocks[-1]:
            blocks.append([])
    found = [block for block in blocks if block]
    return found[-1] if found else None


def find_cells(board: list[str], chars: str) -> list[Cell]:
    return [(r, c) for r, row in enumerate(board) for c, ch in enumerate(row) if ch in chars]


def shortest_path(
    start: State,
    is_goal: Callable[[State], bool],
    successors: Callable[[State], Iterable[tuple[str, State]]],
    max_states: int = 200_000,
) -> list[str] | None:
    """Breadth-first search: the shortest list of move labels from ``start`` to a goal state.

    Returns ``None`` when no goal is reachable within ``max_states`` visited states.
    """
    parents: dict[State, tuple[State, str] | None] = {start: None}
    queue = deque([start])
    while queue:
        state = queue.popleft()
        if is_goal(state):
            path: list[str] = []
            step = parents[state]
            while step is not None:
                state, label = step
                path.append(label)
                step = parents[state]
            return path[::-1]
        for label, nxt in successors(state):
            if nxt not in parents:
                if len(parents) >= max_states:
                    return None
                parents[nxt] = (state, label)
                queue.append(nxt)
    return None
