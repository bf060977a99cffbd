"""FrozenLake as a text game: walk across the ice to the goal without falling into a hole.

Board (one row per line): ``P`` the player, ``_`` ice, ``O`` a hole, ``G`` the goal::

    P___
    _O_O
    ___O
    O__G

Actions: ``left``, ``down``, ``right``, ``up``, as ``<action>right</action>`` (the last tag counts)
or the bare word. Reaching the goal gives reward 1 and ends the episode; a hole ends it with 0;
walking off the edge leaves the player in place. A reply naming no action is invalid: the player
stays, the reward is ``invalid_penalty`` and ``info["invalid"]`` is set; after ``max_invalid``
invalid replies the episode ends. With ``slippery`` the player moves the chosen way with
probability 1/3 and slips to either perpendicular direction otherwise (gym's rule), drawn from a
generator seeded by the reset seed, so an episode is reproducible from its seed and actions.

Maps are generated from the seed like gym's ``generate_random_map`` (start top-left, goal
bottom-right, each other cell ice with probability ``frozen_prob``, redrawn until a path exists),
or taken from gym's classic 4×4 / 8×8 maps, or given as ``layout`` rows of S/F/H/G.
"""

from __future__ import annotations

import random
from typing import Literal

from pydantic import Field, model_validator

from roll.config.base import ConfigBase
from roll.envs.base import StepResult, parse_choice, register_env
from roll.envs.grid import MOVES, Cell, board_from_text, find_cells, shift, shortest_path

ACTIONS = ("left", "down", "right", "up")  # gym's order: a slip turns ±1 in it
CLASSIC_MAPS = {
    4: ["SFFF", "FHFH", "FFFH", "HFFG"],
    8: ["SFFFFFFF", "FFFFFFFF", "FFFHFFFF", "FFFFFHFF", "FFFHFFFF", "FHHFFFHF", "FHFFHFHF", "FFFHFFFG"],
}
_RENDER = {"S": "_", "F": "_", "H": "O", "G": "G"}
BOARD_CHARS = "P_OG"


class FrozenLakeParams(ConfigBase):
    """Parameters of ``frozen_lake``."""

    size: int = Field(4, ge=2, le=16, description="Side of a generated map; classic maps exist for 4 and 8.")
    map: Literal["generated", "classic"] = Field(
        "generated", description="generated: a new map per seed with a guaranteed path; classic: gym's map."
    )
    frozen_prob: float = Field(
        0.8, ge=0.5, le=1.0, description="Chance that a generated cell is ice rather than a hole."
    )
    layout: list[str] | None = Field(
        None,
        description="Your own map as rows of S (start), F (ice), H (hole), G (goal); overrides size and map.",
    )
    slippery: bool = Field(False, description="Slip to a perpendicular direction with probability 2/3.")
    invalid_penalty: float = Field(
        -0.1, description="Reward for a reply that names no action (the player does not move)."
    )
    max_invalid: int | None = Field(
        None, ge=1, description="End the episode after this many invalid replies; null: never."
    )
    render: Literal["text", "cells"] = Field(
        "text",
        description="text: instructions and feedback in English above the board; cells: the board "
        "alone, cells separated by spaces (one word each, for the tiny word-level tokenizer "
        "model.tiny.vocab: frozen_lake).",
    )

    @model_validator(mode="after")
    def _check_map(self) -> FrozenLakeParams:
        if self.layout is not None:
            rows = self.layout
            if len({len(row) for row in rows}) != 1 or any(set(row) - set("SFHG") for row in rows):
                raise ValueError("layout: rows must have equal lengths and use only S, F, H and G")
            if "".join(rows).count("S") != 1 or "".join(rows).count("G") < 1:
                raise ValueError("layout: needs exactly one S (start) and at least one G (goal)")
        elif self.map == "classic" and self.size not in CLASSIC_MAPS:
            raise ValueError(f"map: classic maps exist for size 4 and 8, not {self.size}; use map: generated")
        return self


def generate_map(size: int, frozen_prob: float, rng: random.Random) -> list[str]:
    """A random map with a path from the top-left start to the bottom-right goal."""
    while True:
        cells = [["F" if rng.random() < frozen_prob else "H" for _ in range(size)] for _ in range(size)]
        cells[0][0], cells[-1][-1] = "S", "G"
        rows = ["".join(row) for row in cells]
        if _path(rows, (0, 0), "G") is not None:
            return rows


def _path(rows: list[str], start: Cell, goal_char: str, hole_char: str = "H") -> list[str] | None:
    """Shortest move list from ``start`` to a ``goal_char`` cell, never entering a hole."""
    height, width = len(rows), len(rows[0])

    def successors(cell: Cell):
        for name, move in MOVES.items():
            r, c = shift(cell, move)
            if 0 <= r < height and 0 <= c < width and rows[r][c] != hole_char:
                yield name, (r, c)

    return shortest_path(start, lambda cell: rows[cell[0]][cell[1]] == goal_char, successors)


@register_env("frozen_lake", params=FrozenLakeParams)
class FrozenLake:
    """The FrozenLake text game (see the module docstring)."""

    def __init__(self, params: FrozenLakeParams | None = None, *, max_turns: int = 20) -> None:
        self.params = params or FrozenLakeParams()
        self.max_turns = max_turns
        self.rows: list[str] = []
        self.player: Cell = (0, 0)
        self.invalid = 0
        self._slips = random.Random(0)

    def reset(self, seed: int) -> str:
        p = self.params
        if p.layout is not None:
            self.rows = list(p.layout)
        elif p.map == "classic":
            self.rows = list(CLASSIC_MAPS[p.size])
        else:
            self.rows = generate_map(p.size, p.frozen_prob, random.Random(seed))
        self.player = find_cells(self.rows, "S")[0]
        self.invalid = 0
        self._slips = random.Random(f"frozen_lake/slips/{seed}")
        slip = " The ice is slippery: you may slide sideways instead." if p.slippery else ""
        if p.render == "cells":
            return self.render_cells()
        return (
            f"FrozenLake ({len(self.rows)}x{len(self.rows[0])}). You are P. Walk on the ice (_) to the "
            f"goal G without stepping into a hole O; walking off the edge leaves you in place.{slip}\n"
            "Each turn reply with one move: <action>left</action>, <action>down</action>, "
            f"<action>right</action> or <action>up</action>.\n\n{self.render()}"
        )

    def render(self) -> str:
        return "\n".join("".join(row) for row in self._board())

    def render_cells(self) -> str:
        """The board as words: ``P _ _ _`` per row, rows on separate lines."""
        return "\n".join(" ".join(row) for row in self._board())

    def _board(self) -> list[list[str]]:
        board = [[_RENDER[ch] for ch in row] for row in self.rows]
        board[self.player[0]][self.player[1]] = "P"
        return board

    def _observe(self, message: str) -> str:
        """The observation after a step: the message above the board, or the board alone (cells)."""
        return self.render_cells() if self.params.render == "cells" else f"{message}\n\n{self.render()}"

    def step(self, action_text: str) -> StepResult:
        p = self.params
        choice = parse_choice(action_text, ACTIONS)
        if choice is None:
            self.invalid += 1
            over = p.max_invalid is not None and self.invalid >= p.max_invalid
            info = {"invalid": True, **({"outcome": "invalid_limit"} if over else {})}
            text = "Invalid reply: answer with one of <action>left</action>, <action>down</action>, "
            text += "<action>right</action>, <action>up</action>. You did not move."
            return StepResult(self._observe(text), p.invalid_penalty, over, False, info)
        move = choice
        if p.slippery:
            turn = self._slips.choice((-1, 0, 1))
            move = ACTIONS[(ACTIONS.index(choice) + turn) % 4]
        r, c = shift(self.player, MOVES[move])
        inside = 0 <= r < len(self.rows) and 0 <= c < len(self.rows[0])
        if inside:
            self.player = (r, c)
        info = {"action": choice, "moved": move if inside else None}
        feedback = f"You moved {move}." if inside else f"You tried to move {move} but hit the edge."
        if move != choice:
            feedback = f"You chose {choice} but slipped: " + feedback[0].lower() + feedback[1:]
        cell = self.rows[self.player[0]][self.player[1]]
        if cell == "H":
            info["outcome"] = "hole"
            return StepResult(
                self._observe(f"{feedback} You fell into a hole. Game over."), 0.0, True, False, info
            )
        if cell == "G":
            info["outcome"] = "goal"
            return StepResult(self._observe(f"{feedback} You reached the goal!"), 1.0, True, False, info)
        return StepResult(self._observe(feedback), 0.0, False, False, info)

    def close(self) -> None:
        pass


class FrozenLakeAgent:
    """Scripted agent: reads the board from the observation and takes a shortest safe path (BFS)."""

    def reset(self, seed: int) -> None:
        pass

    def act(self, observation: str) -> str:
        # cells observations separate the cells with spaces
        board = board_from_text(observation.replace(" ", ""), BOARD_CHARS)
        plan = None
        if board is not None and find_cells(board, "P"):
            plan = _path(board, find_cells(board, "P")[0], "G", hole_char="O")
        return f"<action>{plan[0] if plan else 'down'}</action>"
