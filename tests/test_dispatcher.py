"""The dispatcher's bookkeeping on one event loop (no Ray): slots, order, expiry, cancellation,
bounds, lost replicas and batches."""

from __future__ import annotations

import asyncio
import time

import pytest

from serve.dispatcher import Dispatcher, Expired, QueueFull, WorkerPool, tenant_of


def _pool(*replicas: str, slots: int = 1, queued: int = -1) -> WorkerPool:
    return WorkerPool(tuple(replicas), slots, queued)


async def _busy() -> Dispatcher:
    """A dispatcher over one single-slot replica that runs the job "busy"."""
    d = Dispatcher()
    d.set_pool(_pool("r1"))
    await d.acquire("busy", "A", time.time() + 600)
    return d


async def _settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


def test_requests_wait_for_a_free_slot_and_take_it_in_fair_order() -> None:
    async def scenario() -> list[str]:
        d = Dispatcher()
        d.set_pool(_pool("r1"))
        far = time.time() + 600
        first = await d.acquire("a0", "A", far)
        waiting = [asyncio.ensure_future(d.acquire(job, tenant, far)) for job, tenant in
                   (("a1", "A"), ("a2", "A"), ("a3", "A"), ("b1", "B"))]
        await _settle()
        assert first == "r1" and not any(w.done() for w in waiting)  # one slot, held by a0
        order = []
        held = "a0"
        for _ in waiting:
            d.release(held)
            await _settle()
            done = [job for job, w in zip(("a1", "a2", "a3", "b1"), waiting) if w.done() and job not in order]
            assert len(done) == 1
            order.append(done[0])
            held = done[0]
        return order

    # B was not served yet, A just was: B's one request goes next, not behind the three of A
    assert asyncio.run(scenario()) == ["b1", "a1", "a2", "a3"]


def test_earliest_deadline_first_within_a_tenant() -> None:
    async def scenario() -> str:
        d = await _busy()
        loose = asyncio.ensure_future(d.acquire("loose", "A", time.time() + 600))
        tight = asyncio.ensure_future(d.acquire("tight", "A", time.time() + 5))
        await _settle()
        d.release("busy")
        await _settle()
        assert not loose.done()
        return await tight

    assert asyncio.run(scenario()) == "r1"


def test_with_urgency_a_request_near_its_due_time_passes_the_fair_order() -> None:
    async def scenario(urgent_within_s: float | None) -> str:
        d = await _busy()
        d.configure({}, urgent_within_s=urgent_within_s)
        now = time.time()
        waited = asyncio.ensure_future(d.acquire("a1", "A", now + 600, due=now + 5))  # A already dispatched "busy"
        newcomer = asyncio.ensure_future(d.acquire("b1", "B", now + 600, due=now + 30))
        await _settle()
        d.release("busy")
        await _settle()
        return "a1" if waited.done() else "b1" if newcomer.done() else ""

    assert asyncio.run(scenario(None)) == "b1"  # fair: B has not been served, A has
    assert asyncio.run(scenario(10.0)) == "a1"  # 5 s from due: it goes first


def test_a_cancelled_wait_leaves_the_queue_and_an_expired_one_is_refused_at_dequeue() -> None:
    async def scenario() -> None:
        d = await _busy()
        gone = asyncio.ensure_future(d.acquire("gone", "B", time.time() + 600))
        late = asyncio.ensure_future(d.acquire("late", "C", time.time() + 0.05))
        after = asyncio.ensure_future(d.acquire("after", "D", time.time() + 600))
        await _settle()
        gone.cancel()
        await _settle()
        assert d.queued == 2
        await asyncio.sleep(0.1)  # late's deadline passes while it waits
        d.release("busy")
        with pytest.raises(Expired):
            await late
        assert await after == "r1"  # the slot went past the cancelled and the expired request
        assert d.queued == 0

    asyncio.run(scenario())


def test_a_full_queue_refuses_at_once() -> None:
    async def scenario() -> None:
        d = Dispatcher()
        d.set_pool(_pool("r1", queued=2))
        await d.acquire("busy", "A", time.time() + 600)
        waiting = [asyncio.ensure_future(d.acquire(f"w{i}", "A", time.time() + 600)) for i in range(2)]
        await _settle()
        with pytest.raises(QueueFull):
            await d.acquire("one-too-many", "B", time.time() + 600)
        for w in waiting:
            w.cancel()

    asyncio.run(scenario())


def test_a_lost_replica_gets_nothing_until_serve_drops_it_and_new_ones_get_their_slots() -> None:
    async def scenario() -> None:
        d = Dispatcher()
        d.set_pool(_pool("r1", "r2"))
        first = await d.acquire("j1", "A", time.time() + 600)
        d.lost(first)
        d.release("j1")
        d.set_pool(_pool("r1", "r2"))  # Serve still lists the dead replica
        other = "r2" if first == "r1" else "r1"
        assert await d.acquire("j2", "A", time.time() + 600) == other
        waiting = asyncio.ensure_future(d.acquire("j3", "A", time.time() + 600))
        await _settle()
        assert not waiting.done()
        d.set_pool(_pool(other, "r3"))  # the dead one is gone, a new one runs
        assert await waiting == "r3"

    asyncio.run(scenario())


def test_a_slot_is_free_only_when_the_replicas_stream_has_ended() -> None:
    async def scenario() -> None:
        d = Dispatcher()
        d.set_pool(_pool("r1"))
        await d.acquire("j1", "A", time.time() + 600)
        stream_end = asyncio.Event()
        d.release("j1", after=stream_end.wait())
        waiting = asyncio.ensure_future(d.acquire("j2", "A", time.time() + 600))
        await _settle()
        assert not waiting.done()
        stream_end.set()
        assert await waiting == "r1"

    asyncio.run(scenario())


def test_a_freed_batch_is_filled_with_requests_that_batch_together() -> None:
    async def scenario() -> set[str]:
        d = Dispatcher()
        d.set_pool(_pool("r1", slots=3))
        far = time.time() + 600
        for k in range(3):
            await d.acquire(f"busy{k}", "Z", far)
        jobs = (("a-small", "A", "64"), ("b-large", "B", "128"), ("c-small-1", "C", "64"), ("c-small-2", "C", "64"))
        waiting = {job: asyncio.ensure_future(d.acquire(job, tenant, far, shape)) for job, tenant, shape in jobs}
        await _settle()
        for k in range(3):  # the batch's three replies come in together
            d.release(f"busy{k}")
        await _settle()
        return {job for job, w in waiting.items() if w.done()}

    assert asyncio.run(scenario()) == {"a-small", "c-small-1", "c-small-2"}


def test_a_request_goes_to_a_free_replica_that_holds_its_checkpoint() -> None:
    async def scenario() -> list[str]:
        d = Dispatcher()
        d.set_pool(_pool("r1", "r2", slots=2))
        d.holds("r1", ["sd15"])
        d.holds("r2", ["sd15", "anime"])
        far = time.time() + 600
        chosen = [await d.acquire(f"j{k}", "A", far, model="anime") for k in range(2)]
        chosen.append(await d.acquire("j2", "A", far, model="anime"))  # r2 is full: r1 loads it
        chosen.append(await d.acquire("j3", "A", far, model="sd15"))
        return chosen

    assert asyncio.run(scenario()) == ["r2", "r2", "r1", "r1"]


def test_without_a_resident_copy_a_request_goes_where_its_checkpoint_is_in_host_memory() -> None:
    async def scenario() -> tuple[list[str], dict]:
        d = Dispatcher()
        d.set_pool(_pool("r1", "r2", "r3", slots=1))
        d.holds("r1", ["sd15"], host=[])
        d.holds("r2", ["sd15"], host=["anime"])
        d.holds("r3", ["sd15"], host=["anime", "photo"])
        far = time.time() + 600
        chosen = [await d.acquire(f"j{k}", "A", far, model="anime") for k in range(2)]
        chosen.append(await d.acquire("j2", "A", far, model="anime"))  # both copies busy: any free one
        d.set_pool(_pool("r1", "r2", slots=1))  # r3 is gone, and so is what it held
        return chosen, d.residency()

    chosen, residency = asyncio.run(scenario())
    assert sorted(chosen[:2]) == ["r2", "r3"] and chosen[2] == "r1"
    assert residency == {"r1": {"free_slots": 0, "resident": ["sd15"], "host": [], "adapters": []},
                         "r2": {"free_slots": 0, "resident": ["sd15"], "host": ["anime"], "adapters": []}}


def test_a_request_goes_where_its_lora_is_loaded_and_one_without_keeps_that_replica_free() -> None:
    async def scenario() -> list[str]:
        d = Dispatcher()
        d.set_pool(_pool("r1", "r2", "r3", slots=2))
        d.holds("r1", ["sd15"], adapters=[("anime", "ink")])  # loaded into another checkpoint: no help
        d.holds("r2", ["sd15"], adapters=[("sd15", "ink")])
        d.holds("r3", ["sd15"])
        far = time.time() + 600
        chosen = [await d.acquire("j0", "A", far, shape="other", model="sd15", adapters=("ink",))]
        chosen.append(await d.acquire("j1", "A", far, shape="ink", model="sd15", adapters=("ink",)))  # a call runs there
        chosen.append(await d.acquire("j2", "A", far, shape="plain", model="sd15"))
        assert d.residency()["r2"]["adapters"] == ["sd15/ink"]
        return chosen

    assert asyncio.run(scenario()) == ["r2", "r2", "r3"]  # of the idle two, the one with no adapter loaded


def test_tenants_are_api_key_digests_else_addresses() -> None:
    assert tenant_of("sk-secret", "10.0.0.1").startswith("key-")
    assert "secret" not in tenant_of("sk-secret", "10.0.0.1")
    assert tenant_of("sk-secret", "a") == tenant_of("sk-secret", "b")
    assert tenant_of(None, "10.0.0.1") == "10.0.0.1"


def test_the_request_router_sends_a_job_to_its_dispatched_replica() -> None:
    from types import SimpleNamespace

    from ray.serve._private.request_router.common import RequestRoutingContext

    from serve.routing import FALLBACK_AFTER_S, DispatchedRouter

    router = object.__new__(DispatchedRouter)  # choose_replicas reads only its arguments
    replicas = [SimpleNamespace(replica_id=SimpleNamespace(unique_id=rid)) for rid in ("r1", "r2")]

    def pending(target: str | None, age_s: float = 0.0) -> SimpleNamespace:
        return SimpleNamespace(args=[SimpleNamespace(replica_id=target)], created_at=time.time() - age_s,
                               routing_context=RequestRoutingContext())

    def choose(request: SimpleNamespace) -> list[list[str]]:
        chosen = asyncio.run(router.choose_replicas(replicas, request))
        assert request.routing_context.should_backoff  # a failed attempt waits before the next
        return [[r.replica_id.unique_id for r in group] for group in chosen]

    assert choose(pending("r2")) == [["r2"]]
    assert choose(pending(None)) == [["r1", "r2"]]  # not dispatched: any replica
    assert choose(pending("r9")) == []  # not in the handle's list yet: wait for it
    assert choose(pending("r9", age_s=FALLBACK_AFTER_S + 1)) == [["r1", "r2"]]  # gone: any replica


def test_starting_replicas_preload_what_the_queue_needs_and_a_free_one_takes_its_own_requests() -> None:
    """b, a, a, b queue at a fleet at zero. The first replica to start is told to preload b (a tie,
    b queued first), the second a (b has a holder now). ra runs first and takes b0; when it is free
    again the head (a1) waits for rb, which is starting with a, and ra takes b3 past it. Once rb
    runs, a1 goes there."""
    async def scenario() -> tuple[list[str], dict[str, str]]:
        d = Dispatcher()
        far = time.time() + 600
        waits = {f"{model}{k}": asyncio.ensure_future(d.acquire(f"{model}{k}", "A", far + k, model=model))
                 for k, model in enumerate("baab")}
        await _settle()
        told = [d.preload_for("ra", "default"), d.preload_for("rb", "default")]
        d.set_pool(_pool("ra"))  # ra runs; rb is still starting
        await _settle()
        d.release("b0")
        await _settle()
        d.set_pool(_pool("ra", "rb"))
        await _settle()
        placed = {job: w.result() for job, w in waits.items() if w.done()}
        for w in waits.values():
            w.cancel()
        return told, placed

    told, placed = asyncio.run(scenario())
    assert told == ["b", "a"]
    assert placed == {"b0": "ra", "b3": "ra", "a1": "rb"}


def test_a_request_no_replica_holds_goes_where_the_checkpoints_were_wanted_longest_ago() -> None:
    """r1 holds a (just requested), r2 holds b (requested before it): c's load goes to r2, so a stays."""
    async def scenario() -> str:
        d = Dispatcher()
        d.set_pool(_pool("r1", "r2"))
        d.holds("r1", ["a"])
        d.holds("r2", ["b"])
        far = time.time() + 600
        for job, model in (("j0", "b"), ("j1", "a")):
            await d.acquire(job, "A", far, model=model)
            d.release(job)
            await _settle()
        return await d.acquire("j2", "A", far, model="c")

    assert asyncio.run(scenario()) == "r2"


@pytest.mark.parametrize("model_aware", [True, False])
def test_a_request_for_a_checkpoint_no_replica_holds_is_prefetched(model_aware: bool) -> None:
    """``on_unheld`` hears each queued checkpoint that no replica holds on its device or was told to
    preload (the ingress then reads its files ahead); never one a replica holds, never when
    placement ignores checkpoints."""
    heard: list[str] = []

    async def scenario() -> None:
        d = Dispatcher()
        d.configure({}, model_aware=model_aware)
        d.on_unheld = heard.append
        d.set_pool(_pool("r1", slots=4))
        d.holds("r1", ["sd15"], ["anime"])  # anime only in host memory: still worth reading ahead
        d.preload_for("r2", "sd15")  # a starting replica told to load what the queue needs: sd15
        far = time.time() + 600
        for k, model in enumerate(["sd15", "anime", "photo"]):
            await d.acquire(f"j{k}", "A", far, model=model)

    asyncio.run(scenario())
    assert heard == (["anime", "photo"] if model_aware else [])


def test_a_request_without_a_model_is_placed_by_the_default_checkpoints_name() -> None:
    """A request that names no checkpoint gets the default, and replicas name the default by its
    served name: the dispatcher places it where that checkpoint is, and does not read it ahead."""
    heard: list[str] = []

    async def scenario() -> list[str]:
        d = Dispatcher()
        d.configure({}, model_aware=True, default_model="sd15")
        d.on_unheld = heard.append
        d.set_pool(_pool("r1", "r2", slots=2))
        d.holds("r1", ["anime"])
        d.holds("r2", ["sd15"])
        far = time.time() + 600
        return [await d.acquire(f"j{k}", "A", far, model="") for k in range(2)]

    assert asyncio.run(scenario()) == ["r2", "r2"]
    assert heard == []


@pytest.mark.parametrize("in_node_memory", [False, True])
def test_the_head_waits_for_a_starting_holder_unless_its_checkpoint_is_in_the_nodes_memory(in_node_memory: bool) -> None:
    """rb is starting with a; ra runs and holds b. The head, a request for a, waits for rb (a load
    from disk costs like the start), unless a's files are in the node's memory (prefetched): then
    ra copies it from there at once."""
    async def scenario() -> bool:
        d = Dispatcher()
        d.node_memory = lambda: frozenset({"a"} if in_node_memory else set())
        d.preload_for("rb", "a")
        d.set_pool(_pool("ra"))
        d.holds("ra", ["b"])
        wait = asyncio.ensure_future(d.acquire("a0", "A", time.time() + 600, model="a"))
        await _settle()
        placed = wait.done() and wait.result() == "ra"
        wait.cancel()
        return placed

    assert asyncio.run(scenario()) is in_node_memory


def test_a_starting_holder_serve_stopped_before_it_ran_is_waited_for_no_more(monkeypatch: pytest.MonkeyPatch) -> None:
    """rb, starting, was told to bring a; the head (a request for a) waits for it while Serve lists
    it as starting, and goes to ra once Serve lists it no more (a scale-down stopped it)."""
    import serve.dispatcher as dispatcher

    monkeypatch.setattr(dispatcher, "PRELOAD_SEEN_S", 0.0)

    async def scenario() -> list[bool]:
        d = Dispatcher()
        d.preload_for("rb", "a")
        d.set_pool(WorkerPool(("ra",), 1, -1, ("rb",)))
        d.holds("ra", ["b"])
        wait = asyncio.ensure_future(d.acquire("a0", "A", time.time() + 600, model="a"))
        await _settle()
        seen = [wait.done()]
        d.set_pool(WorkerPool(("ra",), 1, -1, ("rb",)))  # still starting: still waited for
        await _settle()
        seen.append(wait.done())
        d.set_pool(WorkerPool(("ra",), 1, -1, ()))  # gone
        await _settle()
        seen.append(wait.done() and wait.result() == "ra")
        return seen

    assert asyncio.run(scenario()) == [False, False, True]


def test_the_dispatcher_says_where_each_requests_checkpoint_comes_from() -> None:
    """Queued: on some device (or preloading), in some host memory or the node's, else disk. Sent:
    what the chosen replica holds, told to the scaling loop as the request goes."""
    sent: list[tuple[str, str]] = []

    async def scenario() -> tuple[dict[str, str], list[str]]:
        d = Dispatcher()
        d.on_sent = lambda job_id, tier: sent.append((job_id, tier))
        d.node_memory = lambda: frozenset({"paged"})
        d.set_pool(_pool("r1", "r2", slots=1))
        d.holds("r1", ["sd15"], host=["anime"])
        d.holds("r2", ["photo"])
        d.preload_for("r3", "sd15")  # a starting replica, told to bring what the queue needs: sd15
        far = time.time() + 600
        first = [await d.acquire("j0", "A", far, model="photo"), await d.acquire("j1", "A", far, model="anime")]
        for k, model in enumerate(("sd15", "anime", "photo", "paged", "rare")):
            asyncio.get_running_loop().create_task(d.acquire(f"q{k}", "A", far, model=model))
        await asyncio.sleep(0)
        return d.queued_tiers(), first

    tiers, first = asyncio.run(scenario())
    assert first == ["r2", "r1"] and sent == [("j0", "none"), ("j1", "host")]
    assert tiers == {"q0": "none", "q1": "host", "q2": "none", "q3": "host", "q4": "disk"}


def test_a_request_does_not_wait_for_a_read_when_a_free_replica_keeps_its_checkpoint_in_host_memory() -> None:
    async def scenario() -> str:
        d = Dispatcher()
        d.reading = lambda: frozenset({"a"})
        d.set_pool(_pool("r1"))
        d.holds("r1", ["b"], host=["a"])  # a copy from its own host memory away
        return await asyncio.wait_for(d.acquire("a0", "A", time.time() + 600, model="a"), 2)

    assert asyncio.run(scenario()) == "r1"


@pytest.mark.parametrize("wait_for_reads", [True, False])
def test_a_request_waits_for_its_checkpoints_read_and_the_one_behind_it_goes_first(wait_for_reads: bool) -> None:
    """r1 holds b and is free; a's files are being read. The request for a waits in the queue for
    the read, and the request for b behind it takes r1 at once; once the read ends and r1 is free,
    a goes. With ``wait_for_reads`` off, a takes r1 at once (which then waits for the read)."""
    async def scenario() -> list[str]:
        d = Dispatcher()
        d.configure({}, wait_for_reads=wait_for_reads)
        reading = {"a"}
        d.reading = lambda: frozenset(reading)
        d.set_pool(_pool("r1"))
        d.holds("r1", ["b"])
        far = time.time() + 600
        order: list[str] = []
        waits = {job: asyncio.ensure_future(d.acquire(job, "A", far, model=model)) for job, model in
                 (("a0", "a"), ("b1", "b"))}
        await _settle()
        order += [job for job, w in waits.items() if w.done()]
        d.release(order[0])
        await _settle()
        if wait_for_reads:
            assert not waits["a0"].done()  # r1 is free, but a's read is not over
            reading.clear()
            d.read_ended()
            await _settle()
        order += [job for job, w in waits.items() if w.done() and job not in order]
        return order

    assert asyncio.run(scenario()) == (["b1", "a0"] if wait_for_reads else ["a0", "b1"])
