"""The ingress's parts that need no server: what it learns from replies and how it keeps decisions."""

from __future__ import annotations

import pytest

from models.request import GenerationRequest
from scheduler.autoscaling import AutoscalerInputs, AutoscalerState, Decision, DecisionKind
from scheduler.memory import MemoryModel
from scheduler.outcomes import Outcome
from serve.control import DecisionLog
from serve.learning import ReplyLearner
from serve.metrics import MetricsRecorder
from serve.openai_api import ApiError
from serve.protocol import CallFacts, ReplicaFacts, WorkerJob, WorkerReply

REQUEST = GenerationRequest("x", 64, 64, 10, 7.5, seed=1)


def reply(outcome: Outcome = Outcome.OK, seconds: float = 2.0, replica_id: str = "r1",
          **replica: object) -> WorkerReply:
    return WorkerReply(outcome, service_time_s=seconds, steps_done=10, call=CallFacts("c", 1),
                       replica=ReplicaFacts(replica_id, **replica))  # type: ignore[arg-type]


def test_replies_teach_the_wait_a_client_is_told() -> None:
    learner = ReplyLearner(MetricsRecorder("test-learning"), drain_window_s=30.0)
    assert learner.expected_wait_s(running=1) is None  # nothing measured: no number made up
    assert learner.retry_after_s(queued=4) == 4  # nor a service time: one second per request ahead
    learner.learn(WorkerJob(REQUEST, "a", 0.0), reply(seconds=2.0, cold_start_s=7.5))
    learner.outstanding = 3
    assert learner.expected_wait_s(running=0) == 7.5  # at zero: the measured cold start
    assert learner.expected_wait_s(running=1) == pytest.approx(6.0)  # 3 ahead × 2 s on one replica
    error = learner.overloaded(queued_by_ray=5)
    assert error.status == 503 and int(error.headers["Retry-After"]) >= 1
    learner.forget_speed()
    assert learner.expected_wait_s(running=1) is None


def test_each_replica_s_own_cold_start_is_kept_in_the_order_replicas_first_replied(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("serve.learning.RECENT_REPLICAS", 3)
    learner = ReplyLearner(MetricsRecorder("test-learning"), drain_window_s=30.0)
    for rid, seconds in [("a", 2.0), ("b", 3.0), ("a", 9.0), ("c", 4.0), ("d", 5.0)]:
        learner.learn(WorkerJob(REQUEST, "j", 0.0), reply(replica_id=rid, cold_start_s=seconds))
    learner.learn(WorkerJob(REQUEST, "j", 0.0), reply(replica_id="e"))  # reported none: not listed
    assert learner.recent_cold_starts() == [{"replica": "b", "cold_start_s": 3.0}, {"replica": "c", "cold_start_s": 4.0},
                                            {"replica": "d", "cold_start_s": 5.0}]  # a: the oldest, gone
    assert learner.cold_start_s == 5.0  # the loop's: the last reported


def test_a_failed_reply_teaches_no_service_time() -> None:
    learner = ReplyLearner(MetricsRecorder("test-learning"), drain_window_s=30.0)
    learner.learn(WorkerJob(REQUEST, "a", 0.0), reply(Outcome.DEADLINE, seconds=9.0))
    assert learner.service.value is None


def test_what_cannot_fit_a_replica_is_refused_before_it_queues() -> None:
    learner = ReplyLearner(MetricsRecorder("test-learning"), drain_window_s=30.0)
    learner.check_memory(GenerationRequest("x", 512, 512, 10, 7.5, seed=1, n=4))  # no model yet: passes
    model = MemoryModel(fixed_bytes=0, per_pixel_bytes=100.0, per_pixel_sq_bytes=0, budget_bytes=64 * 64 * 100 * 2)
    learner.learn(WorkerJob(REQUEST, "a", 0.0), reply(memory=model.__dict__))
    learner.check_memory(GenerationRequest("x", 64, 64, 10, 7.5, seed=1, n=2))
    with pytest.raises(ApiError) as refused:
        learner.check_memory(GenerationRequest("x", 64, 64, 10, 7.5, seed=1, n=3))
    assert (refused.value.status, refused.value.code, refused.value.param) == (422, "exceeds_memory_budget", "size")


def _decision(desired: int, kind: DecisionKind) -> Decision:
    return Decision(desired, AutoscalerState(target=desired), kind, "detail")


def test_the_decision_log_keeps_every_change_and_the_latest() -> None:
    log = DecisionLog("app/DiffusionWorker", keep=10)
    inputs = AutoscalerInputs(now=1.0, queued=2, in_flight=1, running_replicas=1, starting_replicas=0)
    for desired, kind in [(1, DecisionKind.STEADY), (1, DecisionKind.STEADY), (3, DecisionKind.BURST),
                          (3, DecisionKind.STEADY)]:
        log.record(_decision(desired, kind), inputs)
    read = log.read()
    assert [(d["desired"], d["kind"]) for d in read["recent"]] == [(1, "steady"), (3, "burst"), (3, "steady")]
    latest = read["latest"]["app/DiffusionWorker"]
    assert latest["reason"] == "steady: detail" and latest["queued"] == 2
    assert log.read(limit=0)["recent"] == []


def test_the_lifecycle_gives_the_dispatcher_its_urgency_and_each_job_its_due_time() -> None:
    from serve.dispatcher import Dispatcher
    from serve.lifecycle import RequestLifecycle
    from serve.settings import AppSettings

    settings = AppSettings.model_validate({"queue": {"urgent_within_s": 20},
                                           "autoscaling": {"policy": {"latency_objective_s": 29}}})
    lifecycle = RequestLifecycle(None, ReplyLearner(MetricsRecorder("test-urgency"), 30.0),  # type: ignore[arg-type]
                                 MetricsRecorder("test-urgency"))
    lifecycle.dispatcher = Dispatcher()
    lifecycle.configure(settings)
    assert lifecycle.dispatcher.queue.urgent_within_s == 20
    assert lifecycle._due(WorkerJob(REQUEST, "a", 100.0)) == 129.0  # arrival + the latency objective
    lifecycle.configure(AppSettings())
    assert lifecycle.dispatcher.queue.urgent_within_s is None
    assert lifecycle._due(WorkerJob(REQUEST, "a", 100.0)) is None  # no objective: the deadline counts


def test_the_control_loop_hears_of_a_requests_adapters_only_where_it_counts_them() -> None:
    """Accepted: the adapters count goes with the job only with ``per_request_adapters``; replied:
    the call's report names its request's adapters either way (the loop learns loads by them)."""
    import dataclasses

    from serve.lifecycle import RequestLifecycle
    from serve.settings import AppSettings

    with_loras = dataclasses.replace(REQUEST, loras=(("x", 1.0), ("y", 0.5)))
    job = WorkerJob(with_loras, "a", 100.0, deadline=130.0)
    lifecycle = RequestLifecycle(None, ReplyLearner(MetricsRecorder("test-adapters"), 30.0),  # type: ignore[arg-type]
                                 MetricsRecorder("test-adapters"))
    lifecycle.configure(AppSettings())
    assert lifecycle._pending(job).adapters is None
    lifecycle.configure(AppSettings.model_validate({"autoscaling": {"per_request_adapters": True}}))
    assert lifecycle._pending(job).adapters == 2

    reports = []
    learner = ReplyLearner(MetricsRecorder("test-adapters-replies"), 30.0)
    learner.scaling = type("Spy", (), {"replied": lambda self, call: reports.append(call)})()  # type: ignore[assignment]
    learner.learn(job, reply())
    assert [call.adapters for call in reports] == [2]
