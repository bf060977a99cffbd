"""Test rewards (imported by reward workers through ``imports``)."""

from roll.rewards import register_reward


@register_reward("sched_test_parity")
def parity(response: str, row: dict) -> float:
    """0 for prompts whose first operand is even (a zero-variance group, always); otherwise 1 when
    the response's first digit is odd (groups usually mixed)."""
    if int(row["prompt"].split()[0]) % 2 == 0:
        return 0.0
    digits = [c for c in response if c.isdigit()]
    return float(bool(digits) and int(digits[0]) % 2 == 1)
