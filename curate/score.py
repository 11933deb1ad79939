"""Scoring: the base model answers every sample n times; every rollout is graded and kept.

How a run stays exact under crashes, shards and adaptive stopping:
1. A run's id is a fingerprint of what determines its rollouts (model, engine, sampling, prompt,
   grader, sources, adaptive rule), so running the same command again resumes the same run.
2. Rollout j of a sample is generated with the seed derived from (run seed, sample, j). What a run
   still needs is therefore a set difference: the indices not yet in the store. Batching, restarts
   and adaptive rounds do not change any rollout.
3. Rollouts land in immutable Parquet parts, one per chunk of finished requests, renamed into place
   under the store lock; a kill loses at most the chunk in flight and never leaves half of one.
4. `--shard i/N` takes the samples whose id hashes to i mod N; shards of one run share its id and
   take turns at the store lock, so N processes (or a Ray job) fill one store.
5. `--adaptive` samples in rounds and stops a sample once it has a correct and an incorrect rollout:
   its band (medium) is then certain. Easy and hard samples still get all n, so bands equal those of
   a full run with the same seeds.
6. Where chunks are generated is an executor (curate.executors): the engine in this process, or
   `--ray` engine replicas across GPUs and machines. Everything else (what is pending, grading,
   writing parts under the lock, adaptive rounds) is this one loop, and this process stays the store's
   only writer: replicas get requests with their images' bytes and send completions back.
7. Each invocation that generated rollouts leaves a `score-session` row in `runs` (its parent_run is
   the run): the executor, and each replica's rollouts, busy seconds and throughput.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from curate.difficulty import warm_cache
from curate.executors import (
    EngineSpec,
    Executor,
    LocalExecutor,
    RayExecutor,
    RayOptions,
)
from curate.store import Store, new_run_id
from generation import PROMPT_RULES, TOKEN_RULES
from generation.base import (
    Completion,
    EngineOptions,
    Request,
    SamplingConfig,
    rollout_seed,
)
from generation.prompt import PROMPT_TEMPLATE, build_messages, check_template
from rewards.config import RewardConfig
from schemas import REWARD_COLUMNS
from schemas.errors import PebrError
from schemas.io import file_lock

CHUNK = {"hf": 16, "vllm": 512}
"""Samples per generate call and written part, per engine: vLLM schedules big batches itself."""
STORE_WAIT_S = 600.0
"""How long a scoring process waits for the store lock held by another shard."""


@dataclass
class ScoreOptions:
    """What `curate score` was asked to do."""

    model: str
    """Hugging Face model directory of the base VLM."""
    engine: str = "hf"
    """``hf`` (transformers) or ``vllm``."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """n, temperature, top_p, max_new_tokens, seed, pixel bounds."""
    engine_options: EngineOptions = field(default_factory=EngineOptions)
    """Engine knobs: batch size, dtype, tensor/data parallel sizes, memory use."""
    sources: list[str] | None = None
    """Score only samples of these sources (default: all)."""
    shard: tuple[int, int] = (0, 1)
    """(i, N): score the i-th of N disjoint parts of the samples."""
    adaptive: bool = False
    """Stop a sample as soon as it has both a correct and an incorrect rollout."""
    round_size: int = 2
    """Rollouts per sample per adaptive round."""
    chunk: int | None = None
    """Samples per generate call and per written part (default: CHUNK[engine])."""
    rewards: RewardConfig = field(default_factory=RewardConfig)
    """The graders' settings (the sampling reward is the accuracy; format, keyword and length are kept too)."""
    template: str = PROMPT_TEMPLATE
    """The format prompt: a Jinja template over ``content`` (the problem), EasyR1's convention; part of
    the run's fingerprint."""
    limit: int | None = None
    """Score only the first `limit` samples (by id order) of this shard; for quick checks."""
    run: str | None = None
    """Resume this run id instead of the one the options fingerprint."""
    new_run: bool = False
    """Start a new run even when an identical one exists."""
    ray: bool = False
    """Generate on engine replicas in a Ray cluster (`ray_options`) instead of in this process; the run
    and its rollouts are the same either way."""
    ray_options: RayOptions = field(default_factory=RayOptions)
    """Replicas, GPUs and CPUs per replica, the cluster's address (with `ray`)."""


def score_options(model: str, values: dict) -> ScoreOptions:
    """ScoreOptions from one flat mapping (a recipe's `score` section merged with the command line):
    the fields of ScoreOptions, of its SamplingConfig, EngineOptions and RayOptions side by side (whole
    `sampling` / `engine_options` / `ray_options` objects or mappings too, single fields overriding them); `rewards`
    a mapping of RewardConfig fields; `format_prompt` a template file (its text becomes `template`).
    Unknown keys and wrong types are one clear error.

    >>> o = score_options("m", {"n": 4, "engine": "vllm", "batch_size": 2, "rewards": {"length_limit": 9}})
    >>> o.sampling.n, o.engine, o.engine_options.batch_size, o.rewards.length_limit
    (4, 'vllm', 2, 9)
    """
    from generation.prompt import load_format_prompt
    from schemas.config import build

    values = dict(values)
    if values.get("format_prompt") is not None:
        values["template"] = load_format_prompt(values.pop("format_prompt"))
    values.pop("format_prompt", None)
    groups = {name: {f.name for f in dataclasses.fields(cls)} for name, cls in
              (("sampling", SamplingConfig), ("engine_options", EngineOptions), ("ray_options", RayOptions))}
    top = {f.name for f in dataclasses.fields(ScoreOptions)} - set(groups) - {"model"}
    bases = {name: values.pop(name, None) for name in groups}
    unknown = sorted(set(values) - top - set().union(*groups.values()))
    if unknown:
        known = sorted(top | set(groups) | set().union(*groups.values()) | {"format_prompt"})
        raise PebrError(f"score: unknown setting(s) {unknown}; known: {known}")
    nested = {name: {**(dataclasses.asdict(bases[name]) if dataclasses.is_dataclass(bases[name]) else bases[name] or {}),
                     **{k: values.pop(k) for k in names if k in values}} for name, names in groups.items()}
    return build(ScoreOptions, {"model": str(model), **values, **nested}, "score")


@dataclass
class ScoreReport:
    run_id: str
    samples: int = 0
    generated: int = 0
    already_done: int = 0
    rollouts_full: int = 0
    """Rollouts a full (non-adaptive) run of these samples would make."""
    seconds: float = 0.0
    executor: str = "local"
    replicas: list[dict] = field(default_factory=list)
    """Each replica's record (ReplicaStats.record): node, pids, chunks, rollouts, busy seconds, rollouts/s."""
    session: str | None = None
    """The `score-session` row this invocation wrote in `runs` (None when it generated nothing)."""


def _model_fingerprint(model: str) -> str:
    """The model dir's config and weight index, so a retrained model in the same folder is a new run."""
    h = hashlib.sha256(os.path.realpath(model).encode())
    p = Path(model)
    for name in ("config.json", "model.safetensors.index.json", "generation_config.json"):
        if (p / name).is_file():
            h.update((p / name).read_bytes())
    for w in sorted(p.glob("*.safetensors")):
        st = w.stat()
        h.update(f"{w.name}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()[:16]


def run_fingerprint(opts: ScoreOptions, grader: str) -> dict:
    s = dataclasses.asdict(opts.sampling)
    return {
        "model": os.path.realpath(opts.model), "model_fingerprint": _model_fingerprint(opts.model),
        "engine": opts.engine, "sampling": s, "template": opts.template, "token_rules": TOKEN_RULES, "prompt_rules": PROMPT_RULES, "grader": grader,
        "sources": sorted(opts.sources) if opts.sources else None, "adaptive": opts.adaptive,
        "round_size": opts.round_size if opts.adaptive else None, "limit": opts.limit,
        "rewards": dataclasses.asdict(opts.rewards),
    }


def _in_shard(sample_id: str, shard: tuple[int, int]) -> bool:
    i, n = shard
    return n == 1 or int(hashlib.sha256(sample_id.encode()).hexdigest()[:8], 16) % n == i


def _shard_lock(store: Store, run_id: str, shard: tuple[int, int]):
    """One process per (run, shard): a second one is told who scores it."""
    path = store.root / "locks" / f"{run_id}.{shard[0]}-of-{shard[1]}.lock"
    return file_lock(path, f"pid {os.getpid()}",
                     busy=f"run {run_id} shard {shard[0]}/{shard[1]} is already being scored by {{holder}}")


def _pending(have: dict[int, bool], n: int, adaptive: bool, round_size: int) -> list[int]:
    """Rollout indices a sample still needs in this round, given {rollout_idx: correct} so far.

    >>> _pending({0: True, 1: False}, 8, True, 2)
    []
    >>> _pending({0: True, 1: True}, 8, True, 2)
    [2, 3]
    >>> _pending({0: True, 2: True}, 4, False, 2)
    [1, 3]
    """
    if adaptive and len(set(have.values())) == 2:
        return []
    missing = [i for i in range(n) if i not in have]
    return missing[:round_size] if adaptive else missing


def _chunks(store: Store, opts: ScoreOptions, todo: list[tuple[str, list[int]]], by_id: dict, size: int):
    """The round's requests, `size` samples a chunk, each built when the executor asks for it. Images go
    as their files' bytes: what a replica on another machine can use without the store."""
    for start in range(0, len(todo), size):
        chunk = []
        for sid, idx in todo[start:start + size]:
            _, problem, _answer, _kw, images, _qid = by_id[sid]
            chunk.append(Request(
                key=sid, messages=build_messages(problem, len(images), opts.template),
                images=[(store.root / p).read_bytes() for p in images], rollout_idx=idx,
                seeds=[rollout_seed(opts.sampling.seed, sid, j) for j in idx],
            ))
        yield chunk


def score(store: Store, opts: ScoreOptions, progress: Callable[[int, int | None], None] | None = None,
          engine=None, executor: Executor | None = None) -> ScoreReport:
    """Generate and grade the rollouts a run still needs. `progress(advance, new_total)` reports rollouts.

    `engine` is an engine already loaded, for this process; `executor` generates the chunks instead
    (default: `RayExecutor(opts.ray_options)` with `opts.ray`, else this process); an executor passed
    in is left open, so its caller can still read its replicas.
    """
    import time

    from rewards import GRADER_VERSION

    store.require()
    i, n_shards = opts.shard
    if not (0 <= i < n_shards):
        raise PebrError(f"--shard {i}/{n_shards}: need 0 <= i < N")
    if opts.sampling.n < 1:
        raise PebrError("--n must be at least 1")
    try:
        check_template(opts.template)
    except ValueError as exc:
        raise PebrError(str(exc)) from None
    if not Path(opts.model).is_dir():
        raise PebrError(f"--model {opts.model}: not a model directory")
    if not opts.ray and executor is None and opts.ray_options != RayOptions():
        raise PebrError("--replicas, --gpus-per-replica, --cpus-per-replica and --ray-address apply with --ray")
    fp = run_fingerprint(opts, GRADER_VERSION)
    con = store.connect()
    if opts.run:
        row = con.execute("SELECT config FROM runs WHERE run_id = ? AND kind = 'score'", [opts.run]).fetchone()
        if not row:
            raise PebrError(f"no score run {opts.run}")
        run_id = opts.run
    else:
        digest = hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:12]
        run_id = f"score-{digest}"
        if opts.new_run:
            import uuid

            run_id = f"score-{digest}-{uuid.uuid4().hex[:6]}"

    where, params = "", []
    if opts.sources:
        where = f"WHERE source IN ({', '.join('?' * len(opts.sources))})"
        params = list(opts.sources)
    rows = con.execute(
        f"SELECT sample_id, problem, answer, key_words, images, qid FROM samples {where} ORDER BY sample_id", params
    ).fetchall()
    rows = [r for r in rows if _in_shard(r[0], opts.shard)]
    if opts.limit is not None:
        rows = rows[: opts.limit]
    if not rows:
        raise PebrError("no samples to score (ingest some, or check --source / --shard)")
    have: dict[str, dict[int, bool]] = {r[0]: {} for r in rows}
    for sid, idx, correct in con.execute(
        "SELECT sample_id, rollout_idx, correct FROM rollouts WHERE run_id = ?", [run_id]
    ).fetchall():
        if sid in have:
            have[sid][idx] = correct
    run_exists = con.execute("SELECT count(*) FROM runs WHERE run_id = ?", [run_id]).fetchone()[0] > 0
    con.close()

    n = opts.sampling.n
    report = ScoreReport(run_id=run_id, samples=len(rows), rollouts_full=len(rows) * n,
                         already_done=sum(len(v) for v in have.values()))
    started = time.monotonic()
    spec = EngineSpec(opts.engine, opts.model, opts.engine_options, opts.sampling)
    own = executor is None
    if executor is None:
        executor = RayExecutor(opts.ray_options) if opts.ray else LocalExecutor(engine)
    report.executor = executor.name
    try:
        _score_rounds(store, opts, fp, run_id, run_exists, rows, have, report, executor, spec, progress)
    finally:
        if own:
            executor.close()
    report.seconds = time.monotonic() - started
    warm_cache(store, run_id)  # selections and reports of the run read its difficulty from here
    return report


def _score_rounds(store: Store, opts: ScoreOptions, fp: dict, run_id: str, run_exists: bool, rows: list, have: dict,
                  report: ScoreReport, executor: Executor, spec: EngineSpec, progress) -> None:
    """Commit the run's row, then generate, grade and write round after round until nothing is pending."""
    import time

    from rewards import GRADER_VERSION, grade

    n = opts.sampling.n
    started = time.monotonic()
    with _shard_lock(store, run_id, opts.shard):
        if not run_exists:
            with store.writing(f"curate score {run_id}", wait=STORE_WAIT_S):
                con = store.connect()
                if not con.execute("SELECT count(*) FROM runs WHERE run_id = ?", [run_id]).fetchone()[0]:
                    store.add_run(run_id, "score", model=fp["model"], engine=opts.engine, sampling=fp["sampling"],
                                  grader_version=GRADER_VERSION, config={**fp, "engine_options": dataclasses.asdict(opts.engine_options)})
                con.close()
        by_id = {r[0]: r for r in rows}
        while True:
            todo = [(sid, _pending(have[sid], n, opts.adaptive, opts.round_size)) for sid in have]
            todo = [(sid, idx) for sid, idx in todo if idx]
            if not todo:
                break
            if progress:
                progress(0, report.already_done + report.generated + sum(len(ix) for _, ix in todo))
            size = opts.chunk or CHUNK.get(opts.engine, CHUNK["hf"])
            for requests, outputs in executor.run(spec, _chunks(store, opts, todo, by_id, size)):
                table = _graded_rows(run_id, requests, outputs, by_id, grade, opts.rewards)
                with store.writing(f"curate score {run_id}", wait=STORE_WAIT_S):
                    store.write("rollouts", table, run_id)
                for sid, j, ok in zip(table.column("sample_id").to_pylist(), table.column("rollout_idx").to_pylist(),
                                      table.column("correct").to_pylist(), strict=True):
                    have[sid][j] = ok
                report.generated += table.num_rows
                if progress:
                    progress(table.num_rows, None)
        report.replicas = [s.record() for s in executor.stats]
        if report.generated:
            seconds = time.monotonic() - started
            report.session = new_run_id("session")
            with store.writing(f"curate score {run_id}", wait=STORE_WAIT_S):
                store.add_run(report.session, "score-session", model=fp["model"], engine=opts.engine, parent_run=run_id,
                              config={"executor": executor.name, "shard": list(opts.shard), "generated": report.generated,
                                      "seconds": round(seconds, 3), "startup_s": round(executor.startup_s, 3),
                                      "rollouts_per_s": round(report.generated / seconds, 3),
                                      "replicas": report.replicas,
                                      "ray": dataclasses.asdict(opts.ray_options) if executor.name == "ray" else None})


def _graded_rows(run_id: str, requests: list[Request], outputs: list[list[Completion]], by_id: dict, grade, rewards=None):
    records = []
    for req, comps in zip(requests, outputs, strict=True):
        if len(comps) != len(req.seeds):
            raise RuntimeError(f"engine returned {len(comps)} completions for {len(req.seeds)} seeds")
        _, _problem, answer, key_words, _images, qid = by_id[req.key]
        for j, seed, c in zip(req.rollout_idx, req.seeds, comps, strict=True):
            records.append({
                "sample_id": req.key, "qid": qid, "rollout_idx": j, "seed": seed, "response": c.text,
                "n_tokens": c.n_tokens, "finish_reason": c.finish_reason,
                "answer": answer, "key_words": key_words, "response_length": c.n_tokens,
            })
    graded = grade(records, "sampling", rewards)
    rows = []
    for g in graded:
        r = g["rewards"]
        rows.append({
            "run_id": run_id, "sample_id": g["sample_id"], "qid": g["qid"], "rollout_idx": g["rollout_idx"],
            "seed": g["seed"], "response": g["response"], "n_tokens": g["n_tokens"],
            "finish_reason": g["finish_reason"], **{k: r.get(k) for k in REWARD_COLUMNS},
            "correct": bool(g["correct"]),
        })
    import pyarrow as pa

    return pa.Table.from_pylist(rows)
