"""Where a request's deadline comes from: the body, the header, or the config (admission at the
replica, whether it is still worth running, is :mod:`scheduler.admission`).

Pure functions over numbers, so every rule is a row in a test table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


class TimeoutError422(ValueError):
    """The requested timeout is not acceptable; ``param`` names where it came from."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class DeadlinePolicy:
    default_timeout_s: float = 120.0  # when the request names none
    max_timeout_s: float = 600.0  # a larger request is refused (422)
    proxy_guard_s: float = 0.5  # header timeouts end this much early, so our 504 beats Ray's 408


def resolve_timeout(
    body_timeout_s: float | None, header_value: str | None, policy: DeadlinePolicy
) -> tuple[float, str]:
    """The request's timeout and its source: the body's ``timeout_s``, else the
    ``X-Request-Timeout-Seconds`` header, else the default. Raises :class:`TimeoutError422`."""
    if body_timeout_s is not None:
        value, source = body_timeout_s, "timeout_s"
    elif header_value is not None:
        try:
            value, source = float(header_value), "X-Request-Timeout-Seconds"
        except ValueError:
            raise TimeoutError422(
                "X-Request-Timeout-Seconds", f"header is not a number: {header_value!r}"
            ) from None
    else:
        return policy.default_timeout_s, "default"
    if not math.isfinite(value) or value <= 0:
        raise TimeoutError422(source, f"{source} must be a positive number of seconds, got {value}")
    if value > policy.max_timeout_s:
        raise TimeoutError422(source, f"{source} {value:g}s exceeds the maximum {policy.max_timeout_s:g}s")
    return value, source


def absolute_deadline(accepted_at: float, timeout_s: float, source: str, policy: DeadlinePolicy) -> float:
    """Ray's proxy starts its own clock on the header's value a moment before we do; ending a
    header deadline ``proxy_guard_s`` early keeps the client-visible code a 504, never a 408."""
    guard = policy.proxy_guard_s if source == "X-Request-Timeout-Seconds" else 0.0
    return accepted_at + max(0.0, timeout_s - guard)
