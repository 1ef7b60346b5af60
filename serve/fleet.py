"""The worker fleet as Serve sees it: replica states read, replica target set (through the controller).

:func:`replica_counts` is the one reading of Serve's replica states in sdserve: the scaling loop,
the benchmarks' fleet monitor and the tests all count running and starting replicas with it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from serve.dispatcher import WorkerPool

#: Serve's ``ReplicaState`` values of a replica on its way to serving, and of one serving (a replica
#: about to move to another node still serves: Ray counts it running).
STARTING_STATES = ("STARTING", "UPDATING", "RECOVERING")
RUNNING_STATES = ("RUNNING", "PENDING_MIGRATION")


@dataclass(frozen=True)
class ReplicaCounts:
    running: int
    starting: int

    @property
    def total(self) -> int:
        return self.running + self.starting


@dataclass(frozen=True)
class FleetStatus:
    """A deployment as Serve shows it: its replicas, the floor it keeps, the target Serve holds."""

    counts: ReplicaCounts
    minimum: int | None = None  # None: Serve does not know the deployment (yet)
    target: int | None = None
    unplaced_stopping: tuple[str, ...] = ()  # see :func:`unplaced_stopping`


def state_name(state: Any) -> str:
    """``ReplicaState.RUNNING``, ``"RUNNING"`` or ``"ReplicaState.RUNNING"`` → ``"RUNNING"``."""
    return str(getattr(state, "value", state)).split(".")[-1]


def replica_counts(states: Iterable[Any] | Mapping[Any, int]) -> ReplicaCounts:
    """Running and starting replicas from a list of states, or from states → counts
    (``serve.status()``'s ``replica_states``)."""
    counts: dict[str, int] = {}
    if isinstance(states, Mapping):
        for state, n in states.items():
            counts[state_name(state)] = counts.get(state_name(state), 0) + n
    else:
        for state in states:
            counts[state_name(state)] = counts.get(state_name(state), 0) + 1
    return ReplicaCounts(sum(counts.get(s, 0) for s in RUNNING_STATES), sum(counts.get(s, 0) for s in STARTING_STATES))


def unplaced_stopping(replicas: Iterable[Mapping[str, Any]]) -> tuple[str, ...]:
    """The actor names of the replicas Serve is stopping that no node ever ran (no ``node_id``): a
    scale-down while the cluster had no room for them. Ray 2.60 asks such a replica to shut down
    gracefully, which it can only do once placed, so Serve keeps it STOPPING for the deployment's
    ``graceful_shutdown_timeout_s`` (ray-project/ray#50426): the deployment stays UPDATING, and
    should room free up meanwhile, the replica starts, loads its model and stops. Nothing runs on it,
    so killing it loses nothing."""
    return tuple(r["actor_name"] for r in replicas
                 if state_name(r.get("state", "")) == "STOPPING" and not r.get("node_id") and r.get("actor_name"))


class ControllerGone(RuntimeError):
    """Serve's controller is dead or not registered: Serve was shut down, or is starting again after
    its controller died. Expected after ``serve shutdown``, so the scaling loop says so in one line
    rather than with a traceback."""


class ServeFleet:
    """Reads a deployment's replica states and sets its target, through the Serve controller."""

    def __init__(self, app_name: str, deployment: str) -> None:
        import ray
        from ray.serve._private.common import DeploymentID
        from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

        self.app_name, self.deployment = app_name, deployment
        self._id = DeploymentID(name=deployment, app_name=app_name)
        self._find = lambda: ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
        self._handle: Any = self._find()
        if not hasattr(self._handle, "update_deployment_replicas"):
            raise RuntimeError("this Ray has no external-scaler API (update_deployment_replicas); Ray >= 2.50 needed")

    @property
    def _controller(self) -> Any:
        """The controller's handle, looked up again after a call failed (Serve restarted)."""
        if self._handle is None:
            self._handle = self._find()
        return self._handle

    async def _ask(self, method: str, *args: Any) -> Any:
        """One controller call; after a failure the handle is looked up again at the next call."""
        from ray.exceptions import ActorDiedError

        gone = "the Serve controller is gone ({}): Serve is shut down or restarting"
        try:
            controller = self._controller
        except ValueError as error:  # ray.get_actor: no live actor holds the controller's name
            raise ControllerGone(gone.format("not registered")) from error
        try:
            return await getattr(controller, method).remote(*args)
        except ActorDiedError as error:
            self._handle = None
            raise ControllerGone(gone.format("its actor died")) from error
        except Exception:
            self._handle = None
            raise

    async def _details(self) -> dict[str, Any]:
        return await self._ask("get_serve_instance_details")

    async def status(self) -> FleetStatus:
        details = await self._details()
        app = (details.get("applications") or {}).get(self.app_name) or {}
        deployment = (app.get("deployments") or {}).get(self.deployment)
        if not deployment:
            return FleetStatus(ReplicaCounts(0, 0))
        replicas = deployment.get("replicas") or []
        counts = replica_counts(r.get("state", "") for r in replicas)
        config = deployment.get("deployment_config") or {}
        scaling = config.get("autoscaling_config") or {}
        minimum = scaling.get("min_replicas") if scaling else config.get("num_replicas")
        target = deployment.get("target_num_replicas")
        return FleetStatus(counts, int(minimum or 0), None if target is None else int(target),
                           unplaced_stopping(replicas))

    async def pool(self) -> WorkerPool:
        """The running replicas' ids and the deployment's request limits, for the dispatcher."""
        details = await self._details()
        app = (details.get("applications") or {}).get(self.app_name) or {}
        deployment = (app.get("deployments") or {}).get(self.deployment) or {}
        config = deployment.get("deployment_config") or {}
        replicas = deployment.get("replicas") or []
        running = tuple(r["replica_id"] for r in replicas if state_name(r.get("state", "")) in RUNNING_STATES)
        starting = tuple(r["replica_id"] for r in replicas if state_name(r.get("state", "")) in STARTING_STATES)
        return WorkerPool(running, int(config.get("max_ongoing_requests") or 1),
                          int(config.get("max_queued_requests", -1) or -1), starting)

    async def scale(self, target: int) -> None:
        await self._ask("update_deployment_replicas", self._id, target)

    async def cancel(self, actor_names: Iterable[str]) -> int:
        """Kill replicas that :func:`unplaced_stopping` found; Serve then counts each as stopped at
        its next check. How many were still there to kill."""
        import ray
        from ray.serve._private.constants import SERVE_NAMESPACE

        killed = 0
        for name in actor_names:
            try:
                ray.kill(ray.get_actor(name, namespace=SERVE_NAMESPACE), no_restart=True)
                killed += 1
            except ValueError:  # ray.get_actor: gone already
                pass
        return killed
