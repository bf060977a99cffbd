"""EnvPool: many trajectories by id, idempotent resets and steps, lost ids, isolated failures."""

from __future__ import annotations

import faulty_env  # noqa: F401  (registers test_faulty)
import pytest

from roll.envs import EnvConfig, EnvPool, ResetRequest, StepRequest, scripted_agent

LAKE = EnvConfig(name="frozen_lake", max_turns=12)
FAULTY = EnvConfig(name="test_faulty", max_turns=5, params={"fail_in": "step", "fail_at": 1})


@pytest.fixture
def pool():
    pool = EnvPool(threads=4)
    yield pool
    pool.close()


def test_plays_many_trajectories_to_the_goal(pool: EnvPool) -> None:
    requests = [ResetRequest(f"t{i}", task_id=i // 2, seed=i // 2, cfg=LAKE) for i in range(8)]
    replies = pool.reset(requests)
    assert [r.status for r in replies] == ["ok"] * 8 and all(r.turns == 0 for r in replies)
    assert replies[0].result.observation == replies[1].result.observation  # same task, same level
    observations = {r.traj_id: r.result.observation for r in replies}
    agent, live, total = scripted_agent("frozen_lake"), set(observations), {}
    while live:
        step = pool.step(
            [StepRequest(t, len(total.get(t, [])), agent.act(observations[t])) for t in sorted(live)]
        )
        for reply in step:
            total.setdefault(reply.traj_id, []).append(reply.result.reward)
            observations[reply.traj_id] = reply.result.observation
            if reply.result.done:
                live.discard(reply.traj_id)
    assert all(sum(rewards) == 1.0 for rewards in total.values())
    assert pool.stats()["finished"] == 8 and pool.stats()["live"] == 0


def test_retried_resets_and_steps_replay_instead_of_playing_twice(pool: EnvPool) -> None:
    request = ResetRequest("a", task_id="task", seed=3, cfg=LAKE)
    first = pool.reset([request])[0]
    assert pool.reset([request])[0] == first.__class__(first.traj_id, 0, first.result, "replayed")
    step = StepRequest("a", 0, "<action>right</action>")
    played = pool.step([step])[0]
    retried = pool.step([step])[0]
    assert (played.status, retried.status) == ("ok", "replayed")
    assert retried.result == played.result and retried.turns == played.turns == 1
    assert pool.stats()["steps"] == 1 and pool.stats()["replayed"] == 2
    assert pool.step([StepRequest("a", 1, "down")])[0].status == "ok"  # the env was stepped once
    with pytest.raises(ValueError, match="turn 5 is out of order"):
        pool.step([StepRequest("a", 5, "down")])
    with pytest.raises(ValueError, match="started with seed 3"):
        pool.reset([ResetRequest("a", task_id="task", seed=4, cfg=LAKE)])
    with pytest.raises(ValueError, match=r"ids \['b'\] appear more than once"):
        pool.reset([ResetRequest("b", "t", 1, LAKE), ResetRequest("b", "t", 1, LAKE)])


def test_unknown_or_released_trajectories_are_lost(pool: EnvPool) -> None:
    pool.reset([ResetRequest("x", "t", 0, LAKE), ResetRequest("y", "t", 0, LAKE)])
    assert pool.release(["x", "never-started"]) == 1
    replies = pool.step([StepRequest("x", 0, "down"), StepRequest("y", 0, "down")])
    assert [r.status for r in replies] == ["lost", "ok"]
    assert replies[0].result.done and replies[0].result.info == {"outcome": "lost"}


def test_a_raising_env_ends_only_its_own_trajectory(pool: EnvPool) -> None:
    pool.reset([ResetRequest("bad", "t", 0, FAULTY), ResetRequest("good", "u", 0, LAKE)])
    for turn in range(2):
        bad, good = pool.step([StepRequest("bad", turn, "x"), StepRequest("good", turn, "left")])
    assert bad.result.done and bad.result.reward == 0.0
    assert bad.result.info["error"] == "ZeroDivisionError in step 1: env bug"
    assert good.status == "ok" and not good.result.done
    assert pool.stats()["errors"] == 1
    broken = EnvConfig(name="test_faulty", params={"fail_in": "reset"})
    reply = pool.reset([ResetRequest("broken", "v", 0, broken)])[0]
    assert reply.result.done and reply.result.info["error"].startswith("RuntimeError in reset")


def test_a_bad_request_fails_the_call_before_any_trajectory_moves(pool: EnvPool) -> None:
    pool.reset([ResetRequest("a", "t", 0, LAKE), ResetRequest("b", "t", 0, LAKE)])
    with pytest.raises(ValueError, match="trajectory 'b': turn 2 is out of order"):
        pool.step([StepRequest("a", 0, "down"), StepRequest("b", 2, "down")])
    assert pool.stats()["steps"] == 0
    assert [r.status for r in pool.step([StepRequest("a", 0, "down"), StepRequest("b", 0, "down")])] == [
        "ok"
    ] * 2
