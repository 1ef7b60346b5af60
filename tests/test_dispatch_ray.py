"""sdserve's own queue, live: one tenant's flood does not delay another's request, a tight deadline
overtakes loose ones, and a request cancelled while queued never reaches a replica. SIMULATED
backend on one replica: 10 steps of 0.05 s = 0.5 s a request; two API keys are two tenants."""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import ONE_SIM_REPLICA, SIM_ARGS, Deployed

URL = "/v1/images/generations"
SERVICE_S = 0.5
KEYS_FILE = Path(tempfile.gettempdir()) / "sdserve-test-dispatch-keys.txt"
KEYS_FILE.write_text("tenant-a\ntenant-b\n")
A, B = {"Authorization": "Bearer tenant-a"}, {"Authorization": "Bearer tenant-b"}
#: HTTP, proxy, ingress and handle hops on this 2-core machine, beyond the service times themselves.
OVERHEAD_S = 0.3

pytestmark = [
    pytest.mark.ray,
    pytest.mark.app("sim-single", *SIM_ARGS, *ONE_SIM_REPLICA, "simulation.step_time_s={1: 0.05}",
                    f"auth.api_keys_file={KEYS_FILE}", "queue.max_outstanding_per_client=48"),
]


def _body(prompt: str, timeout_s: float = 120, steps: int = 10) -> dict:
    return {"prompt": prompt, "size": "64x64", "num_inference_steps": steps, "timeout_s": timeout_s}


#: 40 steps, 2 s on the replica: time to queue requests behind it before it ends, even when each
#: HTTP round trip of the test's own polling is slow on a loaded 2-core machine.
BUSY = _body("busy", steps=40)
BUSY_S = 4 * SERVICE_S  # 40 steps of 0.05 s


async def _post(client: httpx.AsyncClient, headers: dict, body: dict) -> tuple[int, float]:
    response = await client.post(URL, json=body, headers=headers)
    return response.status_code, time.monotonic()


async def _until_queued(client: httpx.AsyncClient, n: int, timeout_s: float = 20) -> None:
    """Until the ingress holds ``n`` requests (queued or running)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready = (await client.get("/readyz")).json()
        if ready["outstanding"] >= n:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the ingress never held {n} requests")


async def _drain(tasks: list[asyncio.Task]) -> None:
    """Cancel what is still waiting (the clients go away: the requests leave the queue)."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def test_a_flood_by_one_tenant_does_not_delay_another(app: Deployed) -> None:
    """Tenant A floods 60 requests of 2 s each (48 accepted: its share; 12 × 429); tenant B's one
    request is answered within the flood request running when it arrives plus its own service time,
    instead of after A's 48. At 2 s each the replica finishes few of them while a loaded machine's
    proxy takes the 60 in, so A's queue still reaches its share."""
    app.wait_for_workers(1)

    async def scenario() -> tuple[list[int], int, float]:
        async with httpx.AsyncClient(base_url=app.url, timeout=120) as client:
            flood = [asyncio.create_task(_post(client, A, _body(f"flood {i}", steps=40))) for i in range(60)]
            await _until_queued(client, 48)
            await asyncio.sleep(1.0)  # the flood is queued and running
            refused = [t.result()[0] for t in flood if t.done()]
            sent = time.monotonic()
            status, answered = await _post(client, B, _body("the other tenant"))
            await _drain(flood)
            return refused, status, answered - sent

    refused, status, latency = asyncio.run(scenario())
    print(f"tenant B answered {status} in {latency:.2f}s behind a flood of 60 (refused: {len(refused)})")
    assert refused.count(429) == 12, refused
    assert status == 200
    assert latency <= BUSY_S + SERVICE_S + OVERHEAD_S, latency


def test_a_tight_deadline_overtakes_loose_ones_of_the_same_tenant(app: Deployed) -> None:
    app.wait_for_workers(1)

    async def scenario() -> tuple[tuple[int, float], list[tuple[int, float]]]:
        async with httpx.AsyncClient(base_url=app.url, timeout=120) as client:
            busy = asyncio.create_task(_post(client, A, BUSY))
            await _until_queued(client, 1)
            loose = []
            for i in range(3):
                loose.append(asyncio.create_task(_post(client, A, _body(f"loose {i}"))))
                await _until_queued(client, 2 + i)
            # the earliest deadline (4 s against the loose ones' 120 s): it goes next, ahead of them
            tight = await _post(client, A, _body("tight", timeout_s=4.0))
            await busy
            return tight, list(await asyncio.gather(*loose))

    (status, tight_done), loose = asyncio.run(scenario())
    assert status == 200
    assert all(code == 200 for code, _ in loose)
    assert all(tight_done < done for _, done in loose), "a loose request went before the tight one"


def test_a_request_cancelled_while_queued_never_reaches_a_replica(app: Deployed) -> None:
    app.wait_for_workers(1)
    [before] = app.worker_stats()

    async def scenario() -> list[int]:
        async with httpx.AsyncClient(base_url=app.url, timeout=120) as client:
            busy = asyncio.create_task(_post(client, A, BUSY))
            await _until_queued(client, 1)
            queued = asyncio.create_task(_post(client, B, _body("leaves")))
            await _until_queued(client, 2)
            await _drain([queued])  # its client goes away while it waits for the busy replica
            first = await busy
            after = await _post(client, B, _body("next"))
            return [first[0], after[0]]

    assert asyncio.run(scenario()) == [200, 200]
    [after] = app.worker_stats()
    assert after["replica_id"] == before["replica_id"]
    assert after["jobs_received"] - before["jobs_received"] == 2  # busy and next; never the one that left
