"""The one driver of the decider: collector state → the decider's inputs → a decision → the target.

The live scaling loop (``serve/control.py``) and the simulator's sdserve policy
(``scheduler/simulation/policies.py``) both run this class; they differ only in where the events
come from and who applies the target. So the simulator runs exactly the code that runs live: the
same inputs (the replicas' reported batch capacity, the last reported cold start, the fleet as last
polled), the same decision, the same bookkeeping of what was asked for.

Protocol, per step: ``fleet_due(now)`` → the caller reads the fleet and says what it saw
(``fleet_seen``) → ``step(now)`` → the caller applies a changed target and says so (``applied``),
which makes the next step read the fleet again. Between steps the caller reports every request
accepted and answered and every reply (``collector``).
"""

from __future__ import annotations

import dataclasses
import math

from scheduler.autoscaling import AutoscalerConfig, AutoscalerInputs, AutoscalerState, Decision, decide
from scheduler.collector import Collector

# Poll times are sums of floats (a read's time plus whole poll periods) and a step's time lands on
# them only up to rounding; a step within this of a read's time counts as at it.
POLL_SLACK_S = 1e-6


class ScalingDriver:
    def __init__(self, config: AutoscalerConfig, fleet_poll_s: float = 0.5) -> None:
        self.config = config
        self.fleet_poll_s = fleet_poll_s
        self.collector = Collector()
        self.state = AutoscalerState()
        self.target = -1  # what was last asked for; -1: nothing yet, take over the fleet as found
        self.last_inputs: AutoscalerInputs | None = None
        self._fleet = (0, 0)  # (running, starting) as last read
        self._seen_at = -math.inf

    def reconfigure(self, config: AutoscalerConfig, fleet_poll_s: float) -> None:
        """New knobs: what was learnt stays; a keep-alive chosen under the old knobs is chosen again."""
        self.config, self.fleet_poll_s = config, fleet_poll_s
        self.state = dataclasses.replace(self.state, idle_plan=None)

    def fleet_due(self, now: float) -> bool:
        """Whether the fleet should be read before this step (every ``fleet_poll_s``, and right
        after a change of target)."""
        return self.last_poll_at(now) is not None

    def last_poll_at(self, now: float) -> float | None:
        """The latest time up to ``now`` at which a loop stepping every instant would have read the
        fleet since the last read (None: no read due). Live, that is ``now``; the simulator, which
        steps only where a decision may change, reads the fleet as it was then."""
        if self._seen_at == -math.inf:
            return now
        polls = math.floor((now - self._seen_at + POLL_SLACK_S) / self.fleet_poll_s)
        return self._seen_at + polls * self.fleet_poll_s if polls >= 1 else None

    def next_poll_from(self, t: float) -> float:
        """The first read of the fleet at or after ``t``: when a change at ``t`` becomes visible (the
        earliest instant :meth:`last_poll_at` counts that read as due)."""
        if self._seen_at == -math.inf:
            return t
        polls = math.ceil((t - self._seen_at - POLL_SLACK_S) / self.fleet_poll_s)
        return self._seen_at + max(1, polls) * self.fleet_poll_s - POLL_SLACK_S

    def fleet_seen(self, now: float, running: int, starting: int, target: int | None = None) -> None:
        """What the fleet read at ``now`` showed; ``target``: the replica count Serve holds as the
        goal, adopted as what was asked for (another writer, or a redeploy, may have changed it)."""
        self._fleet, self._seen_at = (running, starting), now
        if target is not None and self.target >= 0:
            self.target = target

    def step(self, now: float, max_replicas: int | None = None) -> Decision:
        """Decide from what was collected; ``max_replicas`` caps the fleet (the cluster's GPUs)."""
        running, starting = self._fleet
        if self.target < 0:  # first step: take over the fleet as deployed
            self.target = running + starting
            self.state = dataclasses.replace(self.state, target=self.target)
        starting = max(starting, self.target - running)  # asked for, maybe not yet in Serve's view
        config = self._config(max_replicas)
        inputs = self.collector.inputs(now, running, starting, config)
        decision = decide(inputs, self.state, config)
        self.state, self.last_inputs = decision.state, inputs
        return decision

    def applied(self, target: int) -> None:
        """The caller set the fleet's target to ``target``: read the fleet again next step."""
        if target != self.target:
            self.target = target
            self._seen_at = -math.inf

    def _config(self, max_replicas: int | None) -> AutoscalerConfig:
        """The configured knobs with what replicas report (their batch capacity) and the cap."""
        config = self.config
        capacity = self.collector.capacity
        if capacity is not None and capacity < config.capacity_per_replica:
            config = dataclasses.replace(config, capacity_per_replica=capacity)
        if max_replicas:
            config = dataclasses.replace(
                config, max_replicas=max(config.min_replicas, min(config.max_replicas, max_replicas)))
        return config
