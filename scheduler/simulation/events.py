"""The simulator's clock: a heap of timed events, popped in time order — at equal times the control
loop's call last (it sees everything that happened at that instant, however early its call was
scheduled), the others in push order."""

from __future__ import annotations

import heapq
from enum import IntEnum


class Event(IntEnum):
    ARRIVE = 0  # a request reaches the ingress
    READY = 1  # a replica's cold start ends
    FINISH = 2  # a request is answered (b: 1 = ok, 0 = failed)
    CALL_DONE = 3  # a replica's pipeline call ends
    EXPIRE = 4  # a request's deadline, if it is still waiting
    BATCH = 5  # a replica's batch-wait timer (b: its token)
    TICK = 6  # the control loop (a: its token)
    ROUTE = 7  # one of Ray's routing tasks tries again (a: the task)
    PREWARM = 8  # sdserve's pre-warm reads predicted checkpoints into the node's memory
    WARMED = 9  # an idle replica's adapter load ends (FleetSpec.lora_warming)


class EventQueue:
    def __init__(self) -> None:
        self._heap: list[tuple[float, bool, int, Event, int, int]] = []
        self.seq = 0  # pushes so far: a pushed event's number, usable as a token

    def __bool__(self) -> bool:
        return bool(self._heap)

    def push(self, t: float, kind: Event, a: int = 0, b: int = 0) -> int:
        self.seq += 1
        heapq.heappush(self._heap, (t, kind == Event.TICK, self.seq, kind, a, b))
        return self.seq

    def next_time(self) -> float:
        return self._heap[0][0]

    def pop(self) -> tuple[float, Event, int, int]:
        t, _, _, kind, a, b = heapq.heappop(self._heap)
        return t, kind, a, b
