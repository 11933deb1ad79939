"""Where scoring's chunks are generated: one engine in this process, or engine replicas on Ray.

`curate.score` decides which rollouts a run still needs, grades what comes back and writes every
part; an executor only turns chunks of requests into completions. Requests carry their images as the
files' bytes, so a replica on another machine needs neither the store nor a shared filesystem, and
per-rollout seeds make a chunk's completions the same wherever, and in whatever order, it runs.

How the Ray executor holds up:
1. Back-pressure: a replica holds at most `in_flight` chunks, and the scorer builds a chunk (reads
   its images) only when a replica has room for it, so the driver's memory does not grow with the run.
2. A replica whose worker dies (killed, out of memory, its node lost) is restarted by Ray
   (`max_restarts`); the chunks it held go to the other replicas meanwhile, and it takes new ones once
   it answers again. A chunk lost `chunk_retries` times stops the run with one line. Nothing is written
   for a lost chunk, so no rollout is lost or doubled.
3. An engine's own error (a model that does not load, an exception in generate) is no fault of the
   worker: it stops the run as it would in one process, instead of being retried.

Ray is imported only by `RayExecutor`, so scoring in one process never loads it.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from generation.base import Completion, EngineOptions, Request, SamplingConfig, decoded
from schemas.errors import PebrError

Chunk = list[Request]
"""The requests of one generate call, whose graded rollouts become one part."""


@dataclass
class RayOptions:
    """How `curate score --ray` lays out its engine replicas. None of it changes a rollout, so none of it
    is part of the run's fingerprint: the same command with other replicas resumes the same run."""

    replicas: int = 1
    """Engine replicas, each a Ray actor holding one engine."""
    gpus_per_replica: float | None = None
    """GPUs per replica; vLLM splits the model over them (tensor parallel). Default: 1 when the cluster
    has GPUs, else 0."""
    cpus_per_replica: int = 1
    """CPU cores per replica (on a CPU, the hf engine's torch threads)."""
    ray_address: str | None = None
    """The cluster to join (the address `ray start --head` prints). Default: RAY_ADDRESS, else a cluster
    started with `ray start` on this machine, else a new local Ray; `local` always starts a new one."""
    in_flight: int = 2
    """Chunks a replica holds at once: one generating and one waiting, so that it does not idle while
    the driver grades and writes."""
    max_restarts: int = 3
    """Times Ray restarts a replica whose worker died."""
    chunk_retries: int = 3
    """Times a chunk is sent again after the replica holding it died, before the run stops."""


@dataclass
class EngineSpec:
    """What an engine is loaded from; a replica receives this, never a path into the store."""

    engine: str
    model: str
    options: EngineOptions
    sampling: SamplingConfig

    def load(self):
        from generation import load_engine

        return load_engine(self.engine, self.model, self.options, self.sampling)


@dataclass
class ReplicaStats:
    """One replica's share of a scoring session (the session's record in `runs` lists them)."""

    replica: int
    node: str = ""
    """Where it ran (the host's IP address)."""
    pids: list[int] = field(default_factory=list)
    """Its worker processes: more than one when Ray restarted it."""
    chunks: int = 0
    rollouts: int = 0
    tokens: int = 0
    busy_s: float = 0.0
    """Seconds inside the engine's generate."""
    lost_chunks: int = 0
    """Chunks it held when its worker died, sent again to a replica."""

    def record(self) -> dict:
        rate = self.rollouts / self.busy_s if self.busy_s else 0.0
        return {**dataclasses.asdict(self), "busy_s": round(self.busy_s, 3), "rollouts_per_s": round(rate, 3),
                "restarts": max(0, len(self.pids) - 1)}

    def add(self, chunk: Chunk, outputs: list[list[Completion]], info: dict) -> None:
        self.node = info.get("node") or self.node
        if info.get("pid") is not None and (not self.pids or self.pids[-1] != info["pid"]):
            self.pids.append(info["pid"])
        self.chunks += 1
        self.rollouts += sum(len(r.seeds) for r in chunk)
        self.tokens += sum(c.n_tokens for comps in outputs for c in comps)
        self.busy_s += info.get("seconds", 0.0)


class Executor(Protocol):
    name: str
    stats: list[ReplicaStats]
    startup_s: float
    """Seconds spent starting: loading the engine here, or reaching Ray and loading every replica's."""

    def run(self, spec: EngineSpec, chunks: Iterable[Chunk]) -> Iterator[tuple[Chunk, list[list[Completion]]]]:
        """Generate every chunk; yield each with its completions when done (in any order). A chunk is
        drawn from `chunks` only when there is room to start it."""
        ...

    def close(self) -> None: ...


def _host() -> str:
    import socket

    return socket.gethostname()


class LocalExecutor:
    """One engine in this process, chunk after chunk (`engine`: an engine already loaded, else loaded
    from the spec on the first chunk)."""

    name = "local"

    def __init__(self, engine: Any = None):
        self.engine = engine
        self.stats = [ReplicaStats(replica=0, node=_host())]
        self.startup_s = 0.0

    def run(self, spec: EngineSpec, chunks: Iterable[Chunk]) -> Iterator[tuple[Chunk, list[list[Completion]]]]:
        for chunk in chunks:
            if self.engine is None:
                started = time.perf_counter()
                self.engine = spec.load()
                self.startup_s = time.perf_counter() - started
            started = time.perf_counter()
            outputs = self.engine.generate(decoded(chunk), spec.sampling)
            self.stats[0].add(chunk, outputs, {"pid": os.getpid(), "seconds": time.perf_counter() - started})
            yield chunk, outputs

    def close(self) -> None:
        self.engine = None


class EngineReplica:
    """One engine in a Ray worker process: the actor class of `RayExecutor` (plain Python, so that this
    module imports without Ray)."""

    def __init__(self, spec: EngineSpec, threads: int | None = None):
        if threads and spec.engine == "hf":
            import torch

            torch.set_num_threads(threads)  # the replica's share of the node's cores, not all of them
        self.spec = spec
        self.engine = spec.load()

    def info(self) -> dict:
        return {"pid": os.getpid(), "node": _node_ip()}

    def generate(self, chunk: Chunk) -> tuple[list[list[Completion]], dict]:
        """The chunk's completions, with where and how long it took."""
        for r in chunk:
            if any(isinstance(i, str | os.PathLike) for i in r.images):
                raise TypeError(f"request {r.key}: a replica takes image bytes, not paths")
        started = time.perf_counter()
        outputs = self.engine.generate(decoded(chunk), self.spec.sampling)
        return outputs, {**self.info(), "seconds": time.perf_counter() - started}


def _node_ip() -> str:
    import ray

    return ray.util.get_node_ip_address()


class RayExecutor:
    """Engine replicas as Ray actors, fed chunks with bounded in-flight work; see the module docstring."""

    name = "ray"

    def __init__(self, options: RayOptions | None = None):
        import importlib.util

        if importlib.util.find_spec("ray") is None:  # before the run is recorded, not at its first chunk
            raise PebrError("--ray needs Ray: pip install 'pebr[ray]'")
        self.options = options or RayOptions()
        self.stats = [ReplicaStats(replica=i) for i in range(self.options.replicas)]
        self.replicas: list[Any] = []
        """The actor handles, once started."""
        self._groups: list[Any] = []
        self._own_ray = False
        self.startup_s = 0.0

    # -- start and stop -------------------------------------------------------------------
    def _start(self, spec: EngineSpec) -> None:
        if self.replicas:
            return
        started = time.perf_counter()
        o = self.options
        if o.replicas < 1 or o.cpus_per_replica < 1 or o.in_flight < 1 or o.max_restarts < 0 or o.chunk_retries < 0:
            raise PebrError("--ray: need replicas, cpus per replica and in-flight chunks >= 1, restarts and retries >= 0")
        import ray

        if not ray.is_initialized():
            import logging

            try:
                ray.init(address=o.ray_address, include_dashboard=False, log_to_driver=False,
                         logging_level=logging.WARNING)
            except (ConnectionError, ValueError, RuntimeError) as exc:
                where = o.ray_address or "a local Ray"
                raise PebrError(f"--ray: could not start or reach {where}: {str(exc).splitlines()[0]}") from None
            self._own_ray = True
        gpus = o.gpus_per_replica
        if gpus is None:
            gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
        if gpus > 1 and (spec.engine != "vllm" or gpus != int(gpus)):
            raise PebrError(f"--gpus-per-replica {gpus:g}: more than one GPU per replica needs --engine vllm "
                            "(tensor parallel) and a whole number of GPUs")
        have = ray.cluster_resources()
        need = {"CPU": o.replicas * (gpus if gpus > 1 else o.cpus_per_replica), "GPU": o.replicas * gpus}
        short = [f"{need[k]:g} {k}s (the cluster has {have.get(k, 0):g})" for k in need if need[k] > have.get(k, 0)]
        if short:
            raise PebrError(f"--replicas {o.replicas}: the replicas need {' and '.join(short)}; lower --replicas, "
                            "--cpus-per-replica or --gpus-per-replica, or add nodes")
        actor = ray.remote(EngineReplica)
        retries = dict(max_restarts=o.max_restarts, max_task_retries=0)
        for _ in range(o.replicas):
            if gpus > 1:
                self.replicas.append(self._tensor_parallel_replica(ray, actor, spec, int(gpus), retries))
            else:
                self.replicas.append(actor.options(num_cpus=o.cpus_per_replica, num_gpus=gpus, **retries)
                                     .remote(spec, o.cpus_per_replica if not gpus else None))
        # Every replica loads its engine now, so that a model that does not load is one error, not a retry loop.
        for i, replica in enumerate(self.replicas):
            try:
                info = ray.get(replica.info.remote())
                self.stats[i].node, self.stats[i].pids = info["node"], [info["pid"]]
            except ray.exceptions.RayError as exc:
                self.close()
                raise PebrError(f"replica {i} could not load the {spec.engine} engine: {_cause(exc)}") from None
        self.startup_s = time.perf_counter() - started

    def _tensor_parallel_replica(self, ray, actor, spec: EngineSpec, gpus: int, retries: dict):
        """A vLLM replica over `gpus` GPUs of one node: a placement group holds them, and vLLM's Ray
        workers, started from the actor, land in its bundles."""
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        group = placement_group([{"GPU": 1, "CPU": 1}] * gpus, strategy="STRICT_PACK")
        self._groups.append(group)
        extra = dict(spec.options.extra)
        extra["llm_kwargs"] = {"distributed_executor_backend": "ray", **extra.get("llm_kwargs", {})}
        spec = dataclasses.replace(spec, options=dataclasses.replace(spec.options, tensor_parallel_size=gpus, extra=extra))
        strategy = PlacementGroupSchedulingStrategy(group, placement_group_capture_child_tasks=True)
        return actor.options(num_cpus=0, num_gpus=0, scheduling_strategy=strategy, **retries).remote(spec, None)

    def close(self) -> None:
        try:
            import ray
        except ImportError:
            return
        if not ray.is_initialized():
            return
        for replica in self.replicas:
            ray.kill(replica, no_restart=True)
        for group in self._groups:
            from ray.util.placement_group import remove_placement_group

            remove_placement_group(group)
        self.replicas, self._groups = [], []
        if self._own_ray:
            ray.shutdown()
            self._own_ray = False

    # -- the work -------------------------------------------------------------------------
    def run(self, spec: EngineSpec, chunks: Iterable[Chunk]) -> Iterator[tuple[Chunk, list[list[Completion]]]]:
        self._start(spec)
        import ray

        o = self.options
        source = iter(chunks)
        retry: collections.deque[tuple[Chunk, int]] = collections.deque()
        pending: dict[Any, tuple[int, Chunk | None, int]] = {}
        """ObjectRef -> (replica, chunk, times the chunk was lost); a None chunk is a probe of a restarting replica."""
        load = [0] * len(self.replicas)
        state = ["live"] * len(self.replicas)
        probes = [0] * len(self.replicas)
        drained = False

        def fill() -> None:
            nonlocal drained
            while True:
                free = [i for i, s in enumerate(state) if s == "live" and load[i] < o.in_flight]
                if not free:
                    return
                if retry:
                    chunk, lost = retry.popleft()
                elif not drained:
                    chunk, lost = next(source, None), 0
                    if chunk is None:
                        drained = True
                        return
                else:
                    return
                i = min(free, key=lambda k: (load[k], k))
                pending[self.replicas[i].generate.remote(chunk)] = (i, chunk, lost)
                load[i] += 1

        def probe(i: int) -> None:
            probes[i] += 1
            pending[self.replicas[i].info.remote()] = (i, None, 0)

        def working() -> bool:  # probes alone keep the loop going only while chunks wait for a replica
            return any(c is not None for _, c, _ in pending.values()) or bool(retry) or not drained

        fill()
        while pending and working():
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            i, chunk, lost = pending.pop(ref)
            if chunk is None:  # a restarting replica answered, or is gone for good
                try:
                    info = ray.get(ref)
                except ray.exceptions.ActorUnavailableError:
                    if probes[i] > 10 * (o.max_restarts + 1):
                        state[i] = "dead"
                    else:
                        time.sleep(0.5)
                        probe(i)
                except ray.exceptions.RayActorError:
                    state[i] = "dead"
                else:
                    state[i] = "live"
                    if info["pid"] not in self.stats[i].pids:
                        self.stats[i].pids.append(info["pid"])
                fill()
                continue
            load[i] -= 1
            try:
                outputs, info = ray.get(ref)
            except ray.exceptions.RayActorError as exc:
                self.stats[i].lost_chunks += 1
                if lost + 1 > o.chunk_retries:
                    raise PebrError(f"a chunk of {len(chunk)} sample(s) was lost {lost + 1} times (replica {i}: "
                                    f"{_cause(exc)}); what was written stands, run the command again to resume") from None
                retry.append((chunk, lost + 1))
                if state[i] == "live":
                    state[i] = "restarting"
                    probe(i)
                fill()
                continue
            self.stats[i].add(chunk, outputs, info)
            fill()  # before the driver writes, so that the replicas have work meanwhile
            yield chunk, outputs
        if retry or not drained:  # chunks left and no replica to take them
            raise self._all_dead()

    def _all_dead(self) -> PebrError:
        return PebrError(f"every replica died ({self.options.max_restarts} restart(s) each); what was written stands, "
                         "run the command again to resume")


def _cause(exc: BaseException) -> str:
    """The first line that says why, from a Ray error (which wraps the replica's own error and traceback)."""
    cause = getattr(exc, "cause", None) or exc
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    errors = [line for line in lines if "Error:" in line or "Exception:" in line]
    return (errors[-1] if errors else lines[0] if lines else type(cause).__name__)[:300]
