"""The one outcome vocabulary: every request ends in exactly one of these.

The server counts them (``sdserve_requests_total{outcome}``) and logs them, the benchmark classifies
the answers it gets into them, and the simulator records them — so a table from any of the three
reads the same. The HTTP status of each outcome is defined here too, next to the reverse mapping
a client uses.
"""

from __future__ import annotations

OK = "ok"
DEADLINE = "deadline_exceeded"  # 504: the deadline passed (queued or running; the phase says which)
SHED = "shed"  # 504 at once: could not finish in its time left, never run
OVERLOADED = "overloaded"  # 503 + Retry-After: the queue is full
RATE_LIMITED = "rate_limited"  # 429 + Retry-After: this client's share of the queue is full
OUT_OF_MEMORY = "out_of_memory"  # 507: ran out of memory alone
INVALID = "invalid"  # 4xx before queueing: bad input, no/invalid key, body too large or too slow
CANCELLED = "cancelled"  # 499: the client went away first
ERROR = "error"  # 500: a failure of ours (worker exception, replica lost, deployment unavailable)

OUTCOMES = (OK, DEADLINE, SHED, OVERLOADED, RATE_LIMITED, OUT_OF_MEMORY, INVALID, CANCELLED, ERROR)

#: The HTTP status the server answers each outcome with (``invalid`` covers several 4xx).
STATUS = {OK: 200, DEADLINE: 504, SHED: 504, OVERLOADED: 503, RATE_LIMITED: 429, OUT_OF_MEMORY: 507,
          INVALID: 422, CANCELLED: 499, ERROR: 500}


def classify(status: int, code: str) -> str:
    """A client's view: HTTP status and error code → the outcome the server counted."""
    if status == 200:
        return OK
    if status == 504:
        return SHED if code == SHED else DEADLINE
    if status == 408:  # ours: the body did not arrive in time; Ray's proxy: its request timeout
        return INVALID if code == "request_timeout" else DEADLINE
    by_status = {503: OVERLOADED, 429: RATE_LIMITED, 507: OUT_OF_MEMORY, 499: CANCELLED}
    if status in by_status:
        return by_status[status]
    return INVALID if 400 <= status < 500 else ERROR
