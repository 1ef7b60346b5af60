"""Metric collection for the decider, over plain data: what the ingress sees, turned into the
decider's inputs. The live loop and the simulator feed the same :class:`Collector` (through
:class:`scheduler.driver.ScalingDriver`), so both build the decider's inputs with the same code.

Like Knative's activator, the ingress sees every request: when it was accepted, its deadline, its
images and steps; and every reply: how long its call took, the replica's cold start and the batch
size the replica would take now. From the requests still outstanding (arrival order) and the running
capacity it infers which are running and which wait, and for each waiting one the *slack* (latest
start that still meets its deadline or the latency objective, given its own expected service time).
Service time is learned from the replies (seconds per image-step, scaled by pixels); the starting
replicas' readiness from when the collector itself asked for them.

With many checkpoints the load a call pays first dwarfs its pipeline (35 s from disk against a few
seconds of denoising), so where the dispatcher says so the collector counts each request's own load:
its owner tells it the tier a queued request's checkpoint is expected from (:meth:`Collector.expect`:
on a replica's device, in host memory, on disk) and when a request went to a replica and from which
tier (:meth:`Collector.started`); load seconds per tier are learned from the replies. A busy slot
then frees when its request's load and call are expected to end, not after half an average call.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection
from dataclasses import dataclass

from scheduler.autoscaling import AutoscalerConfig, AutoscalerInputs
from scheduler.deadline_scaling import Backlog
from scheduler.ewma import Ewma
from scheduler.keepalive import REGIME_WINDOW_S

#: The unit service time is counted in: one 512×512 image-step (SD 1.5's native size).
REFERENCE_PIXELS = 512 * 512


@dataclass(frozen=True)
class PendingJob:
    """A request the ingress accepted and has not answered yet."""

    accepted_at: float
    deadline: float
    images: int
    steps: int
    pixels: int = REFERENCE_PIXELS  # per image
    #: LoRA adapters it names, when its loads are counted by them (autoscaling.per_request_adapters;
    #: None: not counted)
    adapters: int | None = None


@dataclass(frozen=True)
class CallReport:
    """What the ingress learns from one reply of a successful request."""

    seconds: float  # the pipeline call's duration, without the load below
    images: int  # images in the call
    steps: int
    pixels: int  # per image
    cold_start_s: float | None = None  # the replica's own cold start, as it measured it
    capacity: int | None = None  # requests per call the replica would take now (adaptive)
    load_s: float = 0.0  # the checkpoint and LoRA loads the call paid first (many models)
    load_tier: str = ""  # where its checkpoint came from: none (resident), host, disk ("": not said)
    adapters: int = 0  # LoRA adapters the call's request named


#: Where a request's checkpoint comes from for its call (the dispatcher's and the replies' words).
TIERS = ("none", "host", "disk")
#: Requests naming more adapters than this share one mean load (per tier) with those naming this many.
MOST_ADAPTERS = 3


def tier_of(model: str, device: Collection[str], host: Collection[str]) -> str:
    """Where ``model`` comes from for a call, given the checkpoints on the device(s) and in host
    memory that could serve it: resident ("none"), host memory ("host"), else "disk"."""
    return "none" if model in device else "host" if model in host else "disk"


class ServiceRate:
    """Weighted seconds per image-step (at 512x512) over completed pipeline calls, and per call.

    A per-image rate is what lets one measurement predict a request of another size: on an A10,
    SD 1.5 costs 0.059 s per image-step alone and 0.050 in a batch of four (models/simulated.py)."""

    def __init__(self) -> None:
        self._per_image_step = Ewma()
        self._call = Ewma()  # mean call duration, for the cold-start-aware burst rule

    @classmethod
    def restored(cls, per_image_step_s: float | None, call_s: float | None) -> "ServiceRate":
        """A rate that starts from what an earlier one had learnt."""
        rate = cls()
        rate._per_image_step.value, rate._call.value = per_image_step_s, call_s
        return rate

    @property
    def per_image_step_s(self) -> float | None:
        return self._per_image_step.value

    @property
    def call_s(self) -> float | None:
        return self._call.value

    def observe(self, seconds: float, images: int, steps: int, pixels: int = REFERENCE_PIXELS) -> None:
        if seconds <= 0 or images <= 0 or steps <= 0:
            return
        self._per_image_step.add(seconds / (images * steps * pixels / REFERENCE_PIXELS))
        self._call.add(seconds)

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


class Collector:
    """Everything the decider's inputs are built from, fed request by request and reply by reply."""

    def __init__(self) -> None:
        self.jobs: dict[str, PendingJob] = {}  # outstanding, in arrival order
        self.rate = ServiceRate()
        self.starts = StartTracker()
        self.arrivals = ArrivalWindow()
        self.cold_start_s: float | None = None  # the last cold start a replica reported
        self.capacity: int | None = None  # requests per call the replicas last said they take
        #: Load seconds per call (checkpoints and LoRAs; 0 with one model): the slot they hold
        #: counts in every queued request's service, so a mix that loads often gets more replicas.
        self.load = Ewma()
        self.tier_load: dict[str, Ewma] = {tier: Ewma() for tier in TIERS}  # load seconds per call, by tier
        #: load seconds per call by tier and the adapters its request named: a request naming two
        #: adapters whose checkpoint is not resident loads both (4.4 s each in production), which
        #: the tier's mean over all calls, mostly without adapters, leaves out
        self.adapter_load: dict[tuple[str, int], Ewma] = {}
        self.expected: dict[str, str] = {}  # queued request → the tier its checkpoint is expected from
        self.sent: dict[str, tuple[float, str]] = {}  # request on a replica → (sent at, expected tier)

    def accepted(self, key: str, job: PendingJob) -> None:
        self.jobs[key] = job
        self.arrivals.arrived(job.accepted_at)

    def answered(self, key: str) -> None:
        self.jobs.pop(key, None)
        self.expected.pop(key, None)
        self.sent.pop(key, None)

    def expect(self, tiers: dict[str, str]) -> None:
        """Where queued requests' checkpoints are expected from now (the dispatcher's view)."""
        for key, tier in tiers.items():
            if key in self.jobs and key not in self.sent:
                self.expected[key] = tier

    def started(self, key: str, at: float, tier: str) -> None:
        """Request ``key`` went to a replica at ``at``, its checkpoint expected from ``tier``."""
        if key in self.jobs:
            self.sent[key] = (at, tier)
            self.expected.pop(key, None)

    def load_s(self, tier: str | None, adapters: int | None = None) -> float:
        """The load a call from ``tier`` is expected to pay: with ``adapters`` (the request's count),
        the mean over calls from that tier whose requests named as many, once measured; else that
        tier's mean once measured; else nothing for a resident checkpoint and the mean over all calls
        for any other."""
        if adapters is not None and tier in TIERS:
            counted = self.adapter_load.get((tier, min(adapters, MOST_ADAPTERS)))
            if counted is not None and counted.value is not None:
                return counted.value
        measured = self.tier_load[tier].value if tier in self.tier_load else None
        if measured is not None:
            return measured
        return 0.0 if tier == "none" else (self.load.value or 0.0)

    def replied(self, call: CallReport) -> None:
        self.rate.observe(call.seconds, call.images, call.steps, call.pixels)
        self.load.add(call.load_s)
        if call.load_tier in self.tier_load:
            self.tier_load[call.load_tier].add(call.load_s)
            self.adapter_load.setdefault((call.load_tier, min(call.adapters, MOST_ADAPTERS)), Ewma()).add(call.load_s)
        if call.cold_start_s:
            self.cold_start_s = call.cold_start_s
        if call.capacity:
            self.capacity = call.capacity

    def inputs(self, now: float, running: int, starting: int, config: AutoscalerConfig) -> AutoscalerInputs:
        """The decider's inputs: outstanding requests (arrival order) over ``running`` replicas of
        ``config.capacity_per_replica`` slots each, and ``starting`` replicas on their way."""
        capacity = config.capacity_per_replica
        items = list(self.jobs.items())
        jobs = [job for _, job in items]
        in_flight = min(len(jobs), running * capacity)
        load = self.load.value or 0.0
        base = self.rate.call_s or config.default_service_time_s
        slack, service = [], []
        objective = config.latency_objective_s
        for key, job in items[in_flight:]:
            own = (self.rate.estimate(job.images, job.steps, job.pixels) or base) + self.load_s(self.expected.get(key),
                                                                                              job.adapters)
            due = job.deadline if objective is None else min(job.deadline, job.accepted_at + objective)
            slack.append(due - now - own)
            service.append(own)
        self.starts.update(now, starting)
        cold = config.default_cold_start_s if self.cold_start_s is None else self.cold_start_s
        # a busy slot frees when its request's load and call are expected to end; without word of
        # it, after about half a call (the expected residual); an idle one now
        known = sorted(max(0.0, at + self.load_s(tier, job.adapters)
                           + (self.rate.estimate(job.images, job.steps, job.pixels) or base) - now)
                       for key, (at, tier) in self.sent.items() if (job := self.jobs.get(key)) is not None)
        busy = (known + [(base + load) / 2] * in_flight)[:in_flight]
        free = busy + [0.0] * (running * capacity - in_flight)
        free += [ready for ready in self.starts.ready_in(now, cold) for _ in range(capacity)]
        # which slot times count down with the clock: a known end or a start still under way (the
        # expected residual of a busy slot without word of its request stays as it is)
        counts_down = [i < len(known) and t > 0 for i, t in enumerate(busy)]
        counts_down += [False] * (running * capacity - in_flight) + [t > 0 for t in free[len(counts_down):]]
        return AutoscalerInputs(
            now=now, queued=len(jobs) - in_flight, in_flight=in_flight, running_replicas=running,
            starting_replicas=starting, service_time_s=self.rate.call_s, cold_start_s=self.cold_start_s,
            backlog=Backlog(tuple(slack), tuple(service)), slot_free_in_s=tuple(free),
            slot_counts_down=tuple(counts_down), recent_arrivals=self.arrivals.count(now),
        )
