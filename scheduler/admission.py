"""A replica's rules for the jobs it is handed: which may run, which are refused, how many share a call.

One implementation, called by the worker (``serve/execution.py``) on its pipeline thread and by the
fleet simulator for each simulated replica, so what the simulator shows about shedding and batch
sizes is what the worker does. Pure: jobs are plain data, time is passed in, and the replica's one
:class:`~scheduler.call_time.CallTimeModel` learns from what the caller reports of each call — the
simulator's replicas learn from the calls they simulated, as a live replica does; nobody is handed
the true service time.

Just before the GPU would start, a job is refused when

- it can never fit the replica's memory budget (``TOO_BIG``: a 4xx, before the pipeline);
- its deadline passed while it waited (``EXPIRED``: a 504, never run);
- it cannot finish in its time left by this replica's own call-time model (``HOPELESS``: shed,
  504 at once; it would only burn GPU time nobody receives). Measured on the call it would run in:
  its whole group in the plain settings, alone in the adaptive one (times ``margin``).

The adaptive setting then picks each call's size (:mod:`scheduler.adaptive_batching`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from scheduler.adaptive_batching import AdaptiveBatcher, AdaptiveConfig, Waiting
from scheduler.call_time import CallTimeModel
from scheduler.memory import MemoryModel


class Admission(StrEnum):
    RUN = "run"
    TOO_BIG = "too_big"  # can never fit the memory budget
    EXPIRED = "expired"  # the deadline passed while it waited
    HOPELESS = "hopeless"  # cannot finish in the time left: shed, do not burn GPU time on it


@dataclass(frozen=True)
class JobView:
    """What the rules know of one job."""

    deadline: float | None  # on the caller's clock; None: none
    images: int
    pixels: int  # per image (width × height)
    steps: int
    load_s: float = 0.0  # expected seconds loading its checkpoint and adapters before the call starts (0: loaded)

    @property
    def call_pixels(self) -> int:
        """Pixels of a call that runs this job alone."""
        return self.images * self.pixels


@dataclass(frozen=True)
class Verdict:
    admission: Admission
    predicted_s: float | None = None  # HOPELESS: the call time that rules it out


RUN = Verdict(Admission.RUN)


def admit(now: float, deadline: float | None, predicted_s: float | None, margin: float = 1.0) -> Admission:
    """The deadline part of admission: expired, hopeless (``margin`` × predicted exceeds the time
    left), or run. No prediction, no shedding."""
    if deadline is None:
        return Admission.RUN
    if now >= deadline:
        return Admission.EXPIRED
    if predicted_s is not None and deadline - now < margin * predicted_s:
        return Admission.HOPELESS
    return Admission.RUN


def earliest_deadline_first(jobs: Sequence[JobView]) -> list[int]:
    """Indices of ``jobs`` by deadline (none last), ties in arrival order."""
    return sorted(range(len(jobs)), key=lambda i: math.inf if jobs[i].deadline is None else jobs[i].deadline)


class ReplicaRules:
    def __init__(self, shed_hopeless: bool = True, memory: MemoryModel | None = None,
                 adaptive: AdaptiveConfig | None = None, window: int = 64) -> None:
        self.shed_hopeless = shed_hopeless
        self.memory = memory
        self._adaptive, self._window = adaptive, window
        self.forget()

    def forget(self) -> None:
        """Drop what was learnt of the replica's speed (its device changed: a new simulated profile)."""
        self.times = CallTimeModel(self._window)
        #: The adaptive setting's batch-size rule (None: calls as collected, split to fit memory).
        self.batcher = AdaptiveBatcher(self._adaptive, self.times) if self._adaptive is not None else None

    @property
    def margin(self) -> float:
        return self.batcher.config.margin if self.batcher is not None else 1.0

    def admit(self, job: JobView, now: float, call_pixels: int | None = None) -> Verdict:
        """Whether ``job`` may run now, in a call of ``call_pixels`` (default: alone)."""
        if self.memory is not None and not self.memory.fits_pixels(job.pixels, job.images):
            return Verdict(Admission.TOO_BIG)
        predicted = None
        if self.shed_hopeless and job.deadline is not None and now < job.deadline:
            predicted = self.times.predict(call_pixels or job.call_pixels, job.steps)
            predicted = predicted + job.load_s if predicted is not None else None
        admission = admit(now, job.deadline, predicted, self.margin)
        return RUN if admission is Admission.RUN else Verdict(admission, predicted)

    def batch_size(self, waiting: Sequence[JobView], now: float) -> int:
        """Adaptive: how many of ``waiting`` (one size and step count, earliest deadline first, all
        admitted) the next call takes — as many as meet every member's deadline and fit memory."""
        assert self.batcher is not None, "batch_size is the adaptive setting's rule"
        head = waiting[0]
        max_images = self.memory.max_images_pixels(head.pixels) if self.memory is not None else None
        return self.batcher.choose([Waiting(j.deadline, j.images) for j in waiting], now, head.pixels, head.steps,
                                   max_images)

    def predicted_s(self, images: int, pixels: int, steps: int) -> float | None:
        """Adaptive: what the batch-size rule expects a call to take (for the accuracy metric)."""
        return self.batcher.predict(images, pixels, steps) if self.batcher is not None else None

    def after_call(self, call_pixels: int, steps_done: int, seconds: float, all_in_time: bool) -> None:
        """A call ended after ``steps_done`` steps (fewer when it was stopped): learn from it once."""
        self.times.observe(call_pixels, steps_done, seconds)
        if self.batcher is not None:
            self.batcher.after_call(all_in_time)

    def effective_capacity(self, pixels: int, steps: int, time_budgets_s: Sequence[float]) -> int | None:
        """Adaptive: requests per call this replica would take now for work like this, due within
        the median of ``time_budgets_s`` — what the autoscaler counts a replica as."""
        if self.batcher is None:
            return None
        budget = statistics.median(time_budgets_s) if time_budgets_s else math.inf
        return self.batcher.effective_capacity(pixels, steps, budget)
