"""What travels between the ingress and a worker: deadlines survive clock skew between nodes."""

from __future__ import annotations

import pickle
from unittest import mock

import pytest

from models.request import GenerationRequest
from serve.protocol import WorkerJob


def test_deadline_travels_as_time_left_not_as_a_wall_clock_time() -> None:
    request = GenerationRequest("skew", 64, 64, 2, 7.5, seed=1)
    with mock.patch("serve.protocol.time.time", return_value=1_000.0):  # the ingress's clock
        job = WorkerJob(request, "r", accepted_at=990.0, deadline=1_030.0)
        wire = pickle.dumps(job)  # Ray pickles at dispatch: 10 s waited, 30 s left
    with mock.patch("serve.protocol.time.time", return_value=5_000.0):  # a worker clock 4000 s ahead
        received = pickle.loads(wire)
    assert received.deadline == pytest.approx(5_030.0)
    assert received.accepted_at == pytest.approx(4_990.0)
    assert received.job_id == job.job_id and received.request == request
    assert job.deadline == 1_030.0  # the sender's copy is untouched


def test_a_job_without_deadline_stays_without() -> None:
    job = WorkerJob(GenerationRequest("x", 64, 64, 2, 7.5, seed=1), "r", accepted_at=0.0)
    assert pickle.loads(pickle.dumps(job)).deadline is None
