"""The one outcome vocabulary: every request ends in exactly one :class:`Outcome`.

The server counts them (``sdserve_requests_total{outcome}``) and logs them, the benchmark classifies
the answers it gets into them, and the simulator records them — so a table from any of the three
reads the same. Each outcome's HTTP status is defined here, next to :func:`classify`, the reverse
mapping a client uses. They are ``str`` enums: they compare equal to, and serialise as, their words.
"""

from __future__ import annotations

from enum import StrEnum


class Outcome(StrEnum):
    OK = "ok"
    DEADLINE = "deadline_exceeded"  # 504: the deadline passed (queued or running; the phase says which)
    SHED = "shed"  # 504 at once: could not finish in its time left, never run
    OVERLOADED = "overloaded"  # 503 + Retry-After: the queue is full
    RATE_LIMITED = "rate_limited"  # 429 + Retry-After: this client's share of the queue is full
    OUT_OF_MEMORY = "out_of_memory"  # 507: ran out of memory alone
    INVALID = "invalid"  # 4xx before queueing: bad input, no/invalid key, body too large or too slow
    CANCELLED = "cancelled"  # 499: the client went away first
    ERROR = "error"  # 500: a failure of ours (worker exception, replica lost, deployment unavailable)


class Phase(StrEnum):
    """Where a request was when it failed: still waiting for a pipeline call, or in one."""

    NONE = ""
    QUEUED = "queued"
    RUNNING = "running"


#: The HTTP status the server answers each outcome with (``invalid`` covers several 4xx: its
#: status here is the one a worker's refusal gets, 422).
STATUS: dict[Outcome, int] = {
    Outcome.OK: 200, Outcome.DEADLINE: 504, Outcome.SHED: 504, Outcome.OVERLOADED: 503,
    Outcome.RATE_LIMITED: 429, Outcome.OUT_OF_MEMORY: 507, Outcome.INVALID: 422, Outcome.CANCELLED: 499,
    Outcome.ERROR: 500,
}

#: Outcome of an answer given before any worker saw the request, by status (other 4xx: invalid).
_REFUSED = {503: Outcome.OVERLOADED, 429: Outcome.RATE_LIMITED}


def refused(status: int) -> Outcome:
    """The outcome of a request the ingress refused itself (admission, validation, queue full)."""
    return _REFUSED.get(status, Outcome.INVALID)


def classify(status: int, code: str) -> Outcome:
    """A client's view: HTTP status and error code → the outcome the server counted."""
    if status == 200:
        return Outcome.OK
    if status == 504:
        return Outcome.SHED if code == Outcome.SHED else Outcome.DEADLINE
    if status == 408:  # ours: the body did not arrive in time; Ray's proxy: its request timeout
        return Outcome.INVALID if code == "request_timeout" else Outcome.DEADLINE
    by_status = {503: Outcome.OVERLOADED, 429: Outcome.RATE_LIMITED, 507: Outcome.OUT_OF_MEMORY,
                 499: Outcome.CANCELLED}
    if status in by_status:
        return by_status[status]
    return Outcome.INVALID if 400 <= status < 500 else Outcome.ERROR
