"""What the Ray cluster holds, read for scaling decisions: the replicas its GPUs can run."""

from __future__ import annotations


class GpuReplicaCap:
    """Replicas the cluster's GPUs can hold (GPUs ÷ GPUs per replica), re-read every ``cache_s``.

    For a fixed GPU fleet. Leave it off where GPU nodes are added on demand (KubeRay with min 0 GPU
    workers): there the cap would stay at zero. A cluster with no GPU at all (a CPU run of a GPU
    config) gives no cap rather than a cap of zero."""

    def __init__(self, gpus_per_replica: float = 1.0, cache_s: float = 5.0) -> None:
        self.gpus_per_replica = gpus_per_replica
        self.cache_s = cache_s
        self.cached: tuple[float, int] | None = None  # (read at, replicas the GPUs allow)

    def __call__(self, now: float) -> int | None:
        if self.cached is None or now - self.cached[0] >= self.cache_s:
            import ray

            gpus = ray.cluster_resources().get("GPU", 0.0)
            self.cached = (now, int(gpus // self.gpus_per_replica))
        return self.cached[1] or None
