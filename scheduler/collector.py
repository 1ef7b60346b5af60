"""Metric collection for the decider, over plain data: the ingress feeds it live, the simulator
feeds it simulated requests — the same code builds the decider's inputs on both sides.

Like Knative's activator, the ingress sees every request: when it was accepted, its deadline, its
images and steps. From the requests still outstanding (arrival order) and the running capacity it
infers which are running and which wait, and for each waiting one the *slack* (latest start that
still meets its deadline or the latency objective, given its own expected service time). Service
time is learned from the replies (seconds per image-step, scaled by pixels); the starting
replicas' readiness from when the collector itself asked for them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from scheduler.autoscaling import AutoscalerInputs
from scheduler.deadline_scaling import Backlog
from scheduler.keepalive import REGIME_WINDOW_S

REFERENCE_PIXELS = 512 * 512


@dataclass(frozen=True)
class PendingJob:
    """A request the ingress accepted and has not answered yet."""

    accepted_at: float
    deadline: float
    images: int
    steps: int
    pixels: int = REFERENCE_PIXELS  # per image


class ServiceRate:
    """Exponentially weighted seconds per image-step (at 512x512) over completed pipeline calls.

    A per-image rate is what lets one measurement predict a request of another size: on an A10,
    SD 1.5 costs 0.059 s per image-step alone and 0.050 in a batch of four (models/simulated.py)."""

    def __init__(self, alpha: float = 0.3) -> None:
        self.alpha = alpha
        self.per_image_step_s: float | None = None
        self.call_s: float | None = None  # mean call duration, for the cold-start-aware burst rule

    def observe(self, seconds: float, images: int, steps: int, pixels: int = REFERENCE_PIXELS) -> None:
        if seconds <= 0 or images <= 0 or steps <= 0:
            return
        rate = seconds / (images * steps * pixels / REFERENCE_PIXELS)
        a = self.alpha
        self.per_image_step_s = rate if self.per_image_step_s is None else a * rate + (1 - a) * self.per_image_step_s
        self.call_s = seconds if self.call_s is None else a * seconds + (1 - a) * self.call_s

    def estimate(self, images: int, steps: int, pixels: int = REFERENCE_PIXELS) -> float | None:
        if self.per_image_step_s is None:
            return None
        return self.per_image_step_s * images * steps * pixels / REFERENCE_PIXELS


class StartTracker:
    """When each replica now starting was asked for (oldest first), to tell how soon it is ready."""

    def __init__(self) -> None:
        self._asked: deque[float] = deque()

    def update(self, now: float, starting: int) -> None:
        while len(self._asked) > starting:  # the oldest became ready (or was stopped)
            self._asked.popleft()
        while len(self._asked) < starting:
            self._asked.append(now)

    def ready_in(self, now: float, cold_start_s: float) -> list[float]:
        return [max(0.0, cold_start_s - (now - asked)) for asked in self._asked]


class ArrivalWindow:
    """Requests accepted over the last ``window_s`` (the load regime the keep-alive conditions on)."""

    def __init__(self, window_s: float = REGIME_WINDOW_S) -> None:
        self.window_s = window_s
        self._times: deque[float] = deque()

    def arrived(self, at: float) -> None:
        self._times.append(at)

    def count(self, now: float) -> int:
        while self._times and self._times[0] <= now - self.window_s:
            self._times.popleft()
        return len(self._times)


def build_inputs(
    now: float, jobs: Sequence[PendingJob], running: int, starting: int, capacity: int,
    rate: ServiceRate, starts: StartTracker, cold_start_s: float | None, default_service_s: float,
    default_cold_start_s: float, latency_objective_s: float | None, recent_arrivals: int | None = None,
) -> AutoscalerInputs:
    """The decider's inputs from the outstanding requests (arrival order) and the fleet."""
    in_flight = min(len(jobs), running * capacity)
    waiting = jobs[in_flight:]
    mean_call = rate.call_s or default_service_s
    slack, service = [], []
    for job in waiting:
        own = rate.estimate(job.images, job.steps, job.pixels) or mean_call
        due = job.deadline if latency_objective_s is None else min(job.deadline, job.accepted_at + latency_objective_s)
        slack.append(due - now - own)
        service.append(own)
    starts.update(now, starting)
    cold = default_cold_start_s if cold_start_s is None else cold_start_s
    # a busy slot frees after about half a call (the expected residual); an idle one now
    free = [mean_call / 2] * in_flight + [0.0] * (running * capacity - in_flight)
    free += [ready for ready in starts.ready_in(now, cold) for _ in range(capacity)]
    return AutoscalerInputs(
        now=now, queued=len(waiting), in_flight=in_flight, running_replicas=running,
        starting_replicas=starting, service_time_s=rate.call_s, cold_start_s=cold_start_s,
        backlog=Backlog(tuple(slack), tuple(service)), slot_free_in_s=tuple(free),
        recent_arrivals=recent_arrivals,
    )
