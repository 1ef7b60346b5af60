"""What a running call tells the ingress on the way: when it started, each step, and previews.

Events go to ``notify`` on the pipeline thread (the worker relays them to each job's event stream);
without a listener nothing is built, previews included.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

from models.generator import LatentsHook
from models.preview import latent_preview_png, placeholder_preview_png, preview_steps
from serve.protocol import EventKind, WorkerEvent, WorkerJob, WorkerReply

#: Called on the pipeline thread with a job's id and its progress, or its reply as soon as its call
#: is over (the adaptive setting runs several calls per batch: a job need not wait for the others).
Notify = Callable[[str, "WorkerEvent | WorkerReply"], None]


class ProgressReporter:
    def __init__(self, replica_id: str) -> None:
        self.replica_id = replica_id
        self.notify: Notify | None = None
        #: Seconds each partial image took to render (its cost is reported by the stream benchmark).
        self.preview_seconds: deque[float] = deque(maxlen=1000)

    def tell(self, group: list[WorkerJob], kind: EventKind, step: int, steps: int, first_call: bool = False,
             load: tuple[str, float] = ("none", 0.0)) -> None:
        """``load``: where a started call's checkpoint came from, and the seconds its loads took."""
        if self.notify is not None:
            for job in group:
                self.notify(job.job_id, WorkerEvent(kind, job.job_id, step, steps, self.replica_id, first_call,
                                                    model_load=load[0], model_load_s=load[1]))

    def answered(self, job: WorkerJob, reply: WorkerReply) -> None:
        """``job``'s reply is final: send it now, ahead of the rest of its batch."""
        if self.notify is not None:
            self.notify(job.job_id, reply)

    def previewer(self, group: list[WorkerJob], steps: int) -> LatentsHook | None:
        """A latents hook that streams each job's partial images at its evenly spaced steps."""
        plans = {job.job_id: preview_steps(steps, job.request.partial_images) for job in group}
        notify = self.notify
        if notify is None or not any(plans.values()):
            return None
        offsets, offset = {}, 0
        for job in group:
            offsets[job.job_id], offset = offset, offset + job.request.n

        def on_latents(step: int, latents: Any) -> None:
            for job in group:
                plan = plans[job.job_id]
                if step not in plan:
                    continue
                began = time.perf_counter()
                r = job.request
                png = (placeholder_preview_png(r.width, r.height, step / steps) if latents is None
                       else latent_preview_png(latents, offsets[job.job_id], r.width, r.height))
                self.preview_seconds.append(time.perf_counter() - began)
                notify(job.job_id, WorkerEvent(EventKind.PARTIAL, job.job_id, step, steps, self.replica_id,
                                               png=png, index=plan.index(step)))

        return on_latents
