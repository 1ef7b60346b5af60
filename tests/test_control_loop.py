"""The live scaling loop against a fake Serve controller: it adopts the target Serve holds, survives a
hung controller call, starts again from what it had learnt, and says a Serve shutdown in one line."""

from __future__ import annotations

import asyncio

import pytest

from scheduler.autoscaling import DecisionKind
from scheduler.collector import CallReport, PendingJob
from serve.control import ScalingLoop
from serve.fleet import ControllerGone, FleetStatus, ReplicaCounts, ServeFleet, unplaced_stopping
from serve.settings import ControlLoopSettings

SETTINGS = ControlLoopSettings(enabled=True, fleet_poll_s=0.5, policy={
    "max_replicas": 4, "default_cold_start_s": 10.0, "default_service_time_s": 5.0, "stable_window_s": 5.0,
    "scale_down_interval_s": 1.0, "scale_to_zero_after_s": 30.0, "keep_alive": "histogram",
    "keep_alive_min_samples": 1, "cold_start_penalty_s": 0.0})


class FakeFleet:
    """Serve's view: the target it holds, replicas that run as soon as asked for; a hang on demand."""

    def __init__(self, running: int = 1) -> None:
        self.target = self.running = running
        self.hang = False
        self.fail = False  # the controller broken: every read raises
        self.gone = False  # Serve shut down: every read raises ControllerGone
        self.reads = 0
        self.writes: list[int] = []
        self.unplaced: tuple[str, ...] = ()  # replicas Serve is stopping that no node ran
        self.cancelled: list[tuple[str, ...]] = []

    async def status(self) -> FleetStatus:
        self.reads += 1
        if self.fail:
            raise RuntimeError("the controller is broken")
        if self.gone:
            raise ControllerGone("the Serve controller is gone (its actor died)")
        if self.hang:
            await asyncio.sleep(3600)
        return FleetStatus(ReplicaCounts(self.running, 0), 0, self.target, self.unplaced)

    async def cancel(self, actor_names: tuple[str, ...]) -> int:
        self.cancelled.append(actor_names)
        ended, self.unplaced = len(self.unplaced), ()
        return ended

    async def scale(self, target: int) -> None:
        if self.hang:
            await asyncio.sleep(3600)
        self.writes.append(target)
        self.target = self.running = target


def run(coroutine: object) -> object:
    return asyncio.run(coroutine)  # type: ignore[arg-type]


def queued(loop: ScalingLoop, count: int, at: float) -> None:
    for i in range(count):
        loop.driver.collector.accepted(f"{at}-{i}", PendingJob(at, at + 600, 1, 25))


def _for_a_second(fleet: FakeFleet) -> None:
    async def loop_for_a_second() -> None:
        loop = ScalingLoop(SETTINGS, fleet, "app/w")
        loop.start()
        await asyncio.sleep(1.0)
        loop._task.cancel()

    run(loop_for_a_second())


def test_a_target_reset_underneath_is_adopted_at_the_next_read() -> None:
    fleet, loop = FakeFleet(running=1), ScalingLoop(SETTINGS, FakeFleet(), "app/w")
    loop.fleet = fleet

    async def scenario() -> None:
        queued(loop, 8, 0.0)
        await loop.tick(0.0)
        await loop.tick(0.1)  # read again after a change of target
        assert fleet.writes == [4]  # the burst asked for four
        fleet.target = fleet.running = 1  # a redeploy resets it to num_replicas
        await loop.tick(0.2)  # no read due: the loop still believes four
        assert fleet.target == 1
        await loop.tick(0.6)  # the next read finds one, and the loop asks for four again
        assert fleet.writes == [4, 4] and loop.driver.target == 4

    run(scenario())


def test_a_hung_controller_call_costs_a_tick_not_the_loop() -> None:
    fleet = FakeFleet(running=1)
    loop = ScalingLoop(SETTINGS, fleet, "app/w", call_timeout_s=0.05)

    async def scenario() -> None:
        await loop.tick(0.0)
        fleet.hang = True
        with pytest.raises(TimeoutError, match="did not answer a fleet read"):
            await loop.tick(1.0)
        fleet.hang = False
        queued(loop, 8, 1.1)
        decision = await loop.tick(1.2)
        assert decision.kind == DecisionKind.BURST and fleet.target == 4

    run(scenario())


def test_a_new_loop_starts_from_what_the_old_one_learnt() -> None:
    fleet = FakeFleet(running=1)
    old = ScalingLoop(SETTINGS, fleet, "app/w")

    async def learn() -> None:
        t = 0.0
        for _ in range(4):  # four busy periods, each followed by 2 s of idleness
            old.driver.collector.accepted(f"j{t}", PendingJob(t, t + 60, 1, 25))
            await old.tick(t)
            old.driver.collector.replied(CallReport(4.0, 1, 25, 512 * 512, cold_start_s=9.0, load_s=30.0, load_tier="disk"))
            old.driver.collector.answered(f"j{t}")
            t += 1.0
            await old.tick(t)
            t += 2.0

    run(learn())
    saved = old.snapshot()
    assert sum(sum(h) for h in saved["idle_histograms"]) == 3 and saved["cold_start_s"] == 9.0
    assert saved["call_s"] == pytest.approx(4.0) and saved["load_s"] == {"disk": pytest.approx(30.0)}
    new = ScalingLoop(SETTINGS, FakeFleet(running=1), "app/w")
    new.restore(saved)
    assert new.snapshot() == saved
    # the gaps learnt, not the 30 s fallback, choose the keep-alive (a cold start costs 9 s: keeping a
    # replica through a 2 s gap pays)
    decision = run(new.tick(100.0))
    assert decision.state.idle_plan is not None and decision.state.idle_plan[2] == "cost"
    assert decision.state.idle_plan[0] < 30.0
    fresh = run(ScalingLoop(SETTINGS, FakeFleet(running=1), "app/w").tick(100.0))
    assert fresh.state.idle_plan is not None and fresh.state.idle_plan[2] == "fixed"  # nothing learnt: the fallback


def test_the_scaler_ends_only_after_its_application_is_missing_a_while_without_a_break() -> None:
    from serve.scaler import OrphanClock

    clock = OrphanClock(30.0)
    seen = [(0.0, True), (10.0, False), (35.0, True), (40.0, False), (69.0, False), (70.0, False)]
    assert [clock.gone(t, here) for t, here in seen] == [False, False, False, False, False, True]


def test_a_failing_loop_backs_off_instead_of_asking_ten_times_a_second() -> None:
    fleet = FakeFleet()
    fleet.fail = True
    _for_a_second(fleet)
    # at 0.1 s between ticks it would have asked ~10 times; backing off (0.2, 0.4, 0.8 s): 3
    assert 2 <= fleet.reads <= 4


@pytest.mark.parametrize(("failure", "level", "traceback"), [("gone", "WARNING", False), ("fail", "ERROR", True)])
def test_serve_shut_down_is_said_in_one_line_an_unknown_failure_with_its_traceback(
        failure: str, level: str, traceback: bool, caplog: pytest.LogCaptureFixture) -> None:
    fleet = FakeFleet()
    setattr(fleet, failure, True)
    with caplog.at_level("INFO", logger="ray.serve"):
        _for_a_second(fleet)
    failed = [r for r in caplog.records if "backing off" in r.getMessage()]
    assert [(r.levelname, r.exc_info is not None) for r in failed] == [(level, traceback)]
    assert fleet.reads >= 2  # either way the loop goes on trying


@pytest.mark.parametrize("replicas, expected", [
    ([{"actor_name": "R#a", "state": "STOPPING"}], ("R#a",)),  # never placed: no node_id
    ([{"actor_name": "R#a", "state": "ReplicaState.STOPPING", "node_id": None}], ("R#a",)),
    ([{"actor_name": "R#b", "state": "STOPPING", "node_id": "n1", "pid": 7}], ()),  # placed: it may be draining
    ([{"actor_name": "R#c", "state": "STARTING"}, {"actor_name": "R#d", "state": "RUNNING", "node_id": "n1"}], ()),
    ([{"state": "STOPPING"}], ()),  # no name to kill by
    ([{"actor_name": "R#e", "state": "STOPPING"}, {"actor_name": "R#f", "state": "STOPPING", "node_id": "n1"},
      {"actor_name": "R#g", "state": "STOPPING", "node_id": ""}], ("R#e", "R#g")),
])
def test_unplaced_stopping(replicas: list[dict], expected: tuple[str, ...]) -> None:
    assert unplaced_stopping(replicas) == expected


def test_a_replica_serve_stops_before_any_node_ran_it_is_ended_at_the_next_read(caplog) -> None:
    fleet = FakeFleet(running=1)
    loop = ScalingLoop(SETTINGS, fleet, "app/w")
    fleet.unplaced = ("SERVE_REPLICA::app#w#x",)

    async def scenario() -> None:
        await loop.tick(0.0)
        await loop.tick(0.6)  # the next read: nothing left to end
    with caplog.at_level("INFO", logger="ray.serve"):
        run(scenario())
    assert fleet.cancelled == [("SERVE_REPLICA::app#w#x",)]
    assert [r.getMessage() for r in caplog.records if "no node had run" in r.getMessage()] == [
        "autoscaler app/w: ended 1 replica(s) Serve was stopping that no node had run; Ray would hold them for "
        "graceful_shutdown_timeout_s (ray-project/ray#50426)"]


class FakeController:
    """Serve's controller handle as Ray gives it: ``method.remote(...)`` awaited; this one raises."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def __getattr__(self, method: str) -> object:
        error = self.error

        class Method:
            @staticmethod
            async def remote(*args: object) -> None:
                raise error

        return Method


def test_a_dead_or_missing_controller_is_controller_gone_other_errors_stay_what_they_are() -> None:
    from ray.exceptions import ActorDiedError

    def fleet_whose(controller: object) -> ServeFleet:
        fleet = object.__new__(ServeFleet)
        fleet.app_name, fleet.deployment, fleet._id = "app", "w", "w"

        def find() -> object:
            if controller is None:
                raise ValueError("Failed to look up actor with name 'SERVE_CONTROLLER_ACTOR'")
            return controller

        fleet._find, fleet._handle = find, None
        return fleet

    with pytest.raises(ControllerGone, match="its actor died"):
        run(fleet_whose(FakeController(ActorDiedError())).status())
    with pytest.raises(ControllerGone, match="not registered"):
        run(fleet_whose(None).scale(2))
    broken = fleet_whose(FakeController(KeyError("no such deployment")))
    with pytest.raises(KeyError):
        run(broken.scale(2))
    assert broken._handle is None  # looked up again at the next call


def test_an_ingress_reports_what_its_dispatcher_sent_and_where_queued_checkpoints_are() -> None:
    """The report carries the requests sent to replicas (with their tiers) and the queued requests'
    tiers as the dispatcher sees them at that moment; a failed report keeps what was sent for the next."""
    from serve.scaler import ScalingClient

    calls: list[tuple] = []
    failing = [True]

    def answer(value: object) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        future.set_result(value)
        return future

    class FakeActor:
        class configure:  # noqa: N801 - the actor methods' names
            @staticmethod
            def remote(settings):
                return answer(None)

        class report:  # noqa: N801
            @staticmethod
            def remote(*args):
                calls.append(args)
                if failing[0]:
                    raise RuntimeError("actor lost")
                return answer({"running": 2})

    client = ScalingClient("app", SETTINGS)
    client._scaler = FakeActor  # type: ignore[method-assign]
    client.tiers = lambda: {"q": "disk"}
    client.sent("a", "host")
    asyncio.run(client.flush())  # lost: kept
    failing[0] = False
    client.sent("b", "none")
    asyncio.run(client.flush())
    (_, _, _, first_sent, _), (_, _, _, sent, tiers) = calls
    assert [key for key, _, _ in first_sent] == ["a"]
    assert [(key, tier) for key, _, tier in sent] == [("a", "host"), ("b", "none")] and tiers == {"q": "disk"}
    assert client.running == 2
