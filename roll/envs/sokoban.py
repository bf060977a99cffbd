"""Sokoban as a text game: push every box onto a target.

Board (one row per line): ``#`` wall, ``_`` floor, ``T`` target, ``B`` box, ``X`` box on a target,
``P`` the player, ``S`` the player on a target::

    ######
    #_P__#
    #_B__#
    #__T_#
    #____#
    ######

Actions: ``up``, ``down``, ``left``, ``right``, as ``<action>up</action>`` (the last tag counts) or
the bare word. Walking into a box pushes it one cell if the cell behind it is free; a move into a
wall, or a push against a wall or another box, leaves everything in place. Each valid move earns
``step_penalty`` (0 by default); the move that puts the last box on a target earns 1 and ends the
episode. A reply naming no action is invalid (nothing moves, reward ``invalid_penalty``,
``info["invalid"]``); after ``max_invalid`` invalid replies the episode ends.

Levels are generated from the seed by playing backwards from a solved room: boxes start on their
targets and the player walks randomly, pulling a box behind it now and then. Every pull is a push
played in reverse, so the level the walk ends in is solvable by construction. Of ``candidates``
walks, the level whose shortest solution (BFS) is longest is kept. The default 6×6 room with one
box needs 3–11 moves; raise ``max_turns`` with the room size and box count.
"""

from __future__ import annotations

import random

from pydantic import Field, model_validator

from roll.config.base import ConfigBase
from roll.envs.base import StepResult, parse_choice, register_env
from roll.envs.grid import MOVES, Cell, board_from_text, find_cells, shift, shortest_path

ACTIONS = ("up", "down", "left", "right")
BOARD_CHARS = "#_TBXPS"
_PULL_PROB = 0.8  # how often the reverse walk pulls a box it could pull


class SokobanParams(ConfigBase):
    """Parameters of ``sokoban``."""

    width: int = Field(6, ge=4, le=12, description="Room width including the outer walls.")
    height: int = Field(6, ge=4, le=12, description="Room height including the outer walls.")
    boxes: int = Field(1, ge=1, le=4, description="Number of boxes (and targets).")
    inner_walls: int = Field(
        0, ge=0, le=20, description="Wall cells placed inside the room; the floor stays connected."
    )
    reverse_steps: int = Field(
        40, ge=1, le=2000, description="Length of the backwards walk that makes a level; longer is harder."
    )
    candidates: int = Field(
        4, ge=1, le=32, description="Backward walks tried per level; the one needing the most moves is kept."
    )
    layout: list[str] | None = Field(
        None,
        description="Your own level as rows of # _ T B X P S (see the module docstring); overrides "
        "the generator.",
    )
    step_penalty: float = Field(0.0, description="Reward of every valid move that does not solve the level.")
    invalid_penalty: float = Field(
        -0.1, description="Reward for a reply that names no action (nothing moves)."
    )
    max_invalid: int | None = Field(
        None, ge=1, description="End the episode after this many invalid replies; null: never."
    )

    @model_validator(mode="after")
    def _check(self) -> SokobanParams:
        if self.layout is not None:
            if len({len(row) for row in self.layout}) != 1 or any(
                set(r) - set(BOARD_CHARS) for r in self.layout
            ):
                raise ValueError(f"layout: rows must have equal lengths and use only {BOARD_CHARS}")
            text = "".join(self.layout)
            if text.count("P") + text.count("S") != 1:
                raise ValueError("layout: needs exactly one player (P, or S on a target)")
            if text.count("B") != text.count("T") + text.count("S"):  # X is one box and one target
                raise ValueError("layout: needs as many boxes (B, X) as targets (T, S, X)")
            if text.count("B") + text.count("X") == 0:
                raise ValueError("layout: needs at least one box")
        elif (self.width - 2) * (self.height - 2) - self.inner_walls < 2 * self.boxes + 2:
            raise ValueError("the room is too small for its boxes: raise width/height or lower inner_walls")
        return self


class Level:
    """A Sokoban position: walls and targets are fixed, boxes and the player move."""

    def __init__(
        self, walls: frozenset[Cell], targets: frozenset[Cell], boxes: frozenset[Cell], player: Cell
    ):
        self.walls, self.targets, self.boxes, self.player = walls, targets, boxes, player

    @classmethod
    def parse(cls, rows: list[str]) -> Level:
        return cls(
            walls=frozenset(find_cells(rows, "#")),
            targets=frozenset(find_cells(rows, "TXS")),
            boxes=frozenset(find_cells(rows, "BX")),
            player=find_cells(rows, "PS")[0],
        )

    @property
    def solved(self) -> bool:
        return self.boxes == self.targets

    def render(self, height: int, width: int) -> str:
        rows = []
        for r in range(height):
            row = []
            for c in range(width):
                cell = (r, c)
                if cell in self.walls:
                    row.append("#")
                elif cell == self.player:
                    row.append("S" if cell in self.targets else "P")
                elif cell in self.boxes:
                    row.append("X" if cell in self.targets else "B")
                else:
                    row.append("T" if cell in self.targets else "_")
            rows.append("".join(row))
        return "\n".join(rows)


def push(
    walls: frozenset[Cell], boxes: frozenset[Cell], player: Cell, move: Cell
) -> tuple[frozenset[Cell], Cell]:
    """The boxes and player after one move; unchanged when blocked by a wall or a second box."""
    nxt = shift(player, move)
    if nxt in walls:
        return boxes, player
    if nxt in boxes:
        beyond = shift(nxt, move)
        if beyond in walls or beyond in boxes:
            return boxes, player
        return (boxes - {nxt}) | {beyond}, nxt
    return boxes, nxt


def solve(level: Level) -> list[str] | None:
    """A shortest move list that solves ``level`` (BFS over player and box positions)."""

    def successors(state: tuple[Cell, frozenset[Cell]]):
        player, boxes = state
        for name in ACTIONS:
            new_boxes, new_player = push(level.walls, boxes, player, MOVES[name])
            if new_player != player:
                yield name, (new_player, new_boxes)

    return shortest_path((level.player, level.boxes), lambda s: s[1] == level.targets, successors)


def _connected(floor: set[Cell]) -> bool:
    start = next(iter(sorted(floor)))
    seen, stack = {start}, [start]
    while stack:
        cell = stack.pop()
        for move in MOVES.values():
            nxt = shift(cell, move)
            if nxt in floor and nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return len(seen) == len(floor)


def generate_level(p: SokobanParams, rng: random.Random) -> Level:
    """A solvable level with at least one box off its target (see the module docstring).

    ``p.candidates`` backward walks are played; the level whose shortest solution is longest wins.
    """
    cells = {(r, c) for r in range(p.height) for c in range(p.width)}
    interior = {(r, c) for r in range(1, p.height - 1) for c in range(1, p.width - 1)}
    found: list[tuple[int, Level]] = []
    for _ in range(100 * p.candidates):
        floor = set(interior)
        for _ in range(p.inner_walls):
            cell = rng.choice(sorted(floor))
            if _connected(floor - {cell}):
                floor.discard(cell)
        level = _reverse_walk(frozenset(cells - floor), sorted(floor), p, rng)
        if level is not None:
            found.append((len(solve(level) or ()), level))
            if len(found) == p.candidates:
                return max(found, key=lambda item: item[0])[1]
    raise RuntimeError(f"could not generate a Sokoban level for {p}; raise reverse_steps")


def _reverse_walk(
    walls: frozenset[Cell], floor: list[Cell], p: SokobanParams, rng: random.Random
) -> Level | None:
    """Walk backwards from a solved room; the end position, or ``None`` if every box is still home."""
    targets = frozenset(rng.sample(floor, p.boxes))
    boxes = set(targets)
    player = rng.choice([cell for cell in floor if cell not in targets])
    for _ in range(p.reverse_steps):
        move = MOVES[rng.choice(ACTIONS)]
        nxt = shift(player, move)
        if nxt in walls or nxt in boxes:
            continue
        behind = (player[0] - move[0], player[1] - move[1])
        if behind in boxes and rng.random() < _PULL_PROB:  # the reverse of pushing it from nxt
            boxes.remove(behind)
            boxes.add(player)
        player = nxt
    return None if boxes == targets else Level(walls, targets, frozenset(boxes), player)


@register_env("sokoban", params=SokobanParams)
class Sokoban:
    """The Sokoban text game (see the module docstring)."""

    def __init__(self, params: SokobanParams | None = None, *, max_turns: int = 20) -> None:
        self.params = params or SokobanParams()
        self.max_turns = max_turns
        self.level = Level(frozenset(), frozenset(), frozenset(), (0, 0))
        self.shape = (0, 0)
        self.invalid = 0

    def reset(self, seed: int) -> str:
        p = self.params
        if p.layout is not None:
            self.level = Level.parse(p.layout)
            self.shape = (len(p.layout), len(p.layout[0]))
        else:
            self.level = generate_level(p, random.Random(seed))
            self.shape = (p.height, p.width)
        self.invalid = 0
        return (
            "Sokoban. Push every box onto a target. Legend: # wall, _ floor, T target, B box, "
            "X box on a target, P you, S you on a target. Walking into a box pushes it if the cell "
            "behind it is free; boxes cannot be pulled.\n"
            "Each turn reply with one move: <action>up</action>, <action>down</action>, "
            f"<action>left</action> or <action>right</action>.\n\n{self.render()}"
        )

    def render(self) -> str:
        return self.level.render(*self.shape)

    def step(self, action_text: str) -> StepResult:
        p, level = self.params, self.level
        choice = parse_choice(action_text, ACTIONS)
        if choice is None:
            self.invalid += 1
            over = p.max_invalid is not None and self.invalid >= p.max_invalid
            info = {"invalid": True, **({"outcome": "invalid_limit"} if over else {})}
            text = "Invalid reply: answer with one of <action>up</action>, <action>down</action>, "
            text += "<action>left</action>, <action>right</action>. Nothing moved."
            return StepResult(f"{text}\n\n{self.render()}", p.invalid_penalty, over, False, info)
        boxes, player = push(level.walls, level.boxes, level.player, MOVES[choice])
        pushed = boxes != level.boxes
        self.level = Level(level.walls, level.targets, boxes, player)
        info = {"action": choice, "moved": player != level.player, "pushed": pushed}
        if player == level.player:
            feedback = f"You could not move {choice}: the way is blocked."
        else:
            feedback = f"You moved {choice}" + (" and pushed a box." if pushed else ".")
        if self.level.solved:
            info["outcome"] = "solved"
            return StepResult(
                f"{feedback} Every box is on a target: solved!\n\n{self.render()}", 1.0, True, False, info
            )
        return StepResult(f"{feedback}\n\n{self.render()}", p.step_penalty, False, False, info)

    def close(self) -> None:
        pass


class SokobanAgent:
    """Scripted agent: reads the board from the observation and plays a shortest solution (BFS)."""

    def reset(self, seed: int) -> None:
        pass

    def act(self, observation: str) -> str:
        board = board_from_text(observation, BOARD_CHARS)
        plan = solve(Level.parse(board)) if board is not None and find_cells(board, "PS") else None
        return f"<action>{plan[0] if plan else 'up'}</action>"
