"""Schedulers: which sample goes where and when (rollout scheduling, lifecycle, routing)."""
