"""After a pipeline call fails: out of memory is that call's problem, anything else may be the device's.

Out of memory (``torch.OutOfMemoryError`` = ``torch.cuda.OutOfMemoryError``, or the CPU allocator's
"can't allocate memory"): what the call held is released — after the caller has left its ``except``
block, whose exception and traceback keep the failed call's frames and tensors alive (PyTorch FAQ:
"my out of memory exception handler can't allocate memory") — and the caller bisects a batch so the
requests that fit succeed; the one that fails alone gets 507. A device error other than OOM, or
``max_strikes`` OOMs in a row on requests the memory estimate said fit, marks the replica
unhealthy: its ``check_health`` fails and Ray replaces it.
"""

from __future__ import annotations

import logging

from models.oom import is_device_fatal, is_out_of_memory, release_memory
from serve.protocol import WorkerJob

log = logging.getLogger("ray.serve")


class OomGuard:
    def __init__(self, device: str, max_strikes: int = 3) -> None:
        self.device = device
        self.max_strikes = max_strikes
        self.count = 0  # OOMs so far (bisection retries included)
        self._strikes = 0  # consecutive OOMs on requests the estimate said fit
        #: Set when the device should not serve again; ``check_health`` fails on it.
        self.unhealthy_reason: str | None = None

    def classify(self, exc: Exception, group: list[WorkerJob]) -> tuple[bool, str]:
        """(out of memory?, message) of a failed call, logged while its exception is at hand; only
        text is kept, so the exception (and the call's tensors) can go."""
        if is_out_of_memory(exc):
            return True, str(exc)
        if is_device_fatal(exc):
            self.unhealthy_reason = f"device error, replica must be replaced: {exc}"
            log.error("%s", self.unhealthy_reason)
        else:
            log.exception("pipeline call failed for %s", [job.request_id for job in group])
        return False, str(exc)

    def ran_out(self, group: list[WorkerJob], message: str, fit_alone: bool) -> None:
        """A call of ``group`` ran out of memory: free what it held and count it. ``fit_alone``: a
        single request the estimate said fits (a strike against the device)."""
        release_memory(self.device)
        self.count += 1
        shapes = [(j.request.width, j.request.height, j.request.n) for j in group]
        log.warning("out of memory in a call of %d request(s) %s: %s", len(group), shapes, message)
        if len(group) == 1 and fit_alone:
            self._strikes += 1
            if self._strikes >= self.max_strikes:
                self.unhealthy_reason = (
                    f"{self._strikes} consecutive out-of-memory errors on requests the estimate said fit: "
                    "device memory is not what it was; replacing the replica")
                log.error("%s", self.unhealthy_reason)

    def succeeded(self) -> None:
        self._strikes = 0
