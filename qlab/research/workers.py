"""Several worker processes on one optuna study: `qlab.optimize(..., workers=N)` runs here.

    qlab.optimize("sma_cross", candles, space, "sharpe", method="bayes", n_trials=400, workers=4,
                  storage="postgresql+psycopg://qlab@db-host/qlab", study_name="sma-btc-1h")

The parent checks the arguments (and the strategy for lookahead) once, creates the study, starts N "spawn"
processes that each run `optimize(..., workers=1)` on it, and builds the result from the shared study. Other
machines join by running `optimize` or `qlab optimize` with the same storage URL and study name.

Storage: a path or URL every worker opens itself. None: a Journal file in a temporary folder, copied into
memory at the end (the folder is removed). "study.log" (.journal, .jsonl): a Journal file. "sqlite:///study.db":
one machine (writers wait up to 60 s for the lock). "postgresql+psycopg://...": many machines.
`study_name=None` gives a fresh `qlab-<method>-<8 hex digits>`.

Sharing: worker k runs n_trials // N trials (+1 for k < n_trials % N) with seed + k, so random, TPE, CMA-ES
and NSGA-II workers do not propose the same points. Grid workers all keep `seed`: optuna gives trial number
i < grid size the i-th point of the seeded shuffle, so every point is evaluated; workers that finish while
others still run the last points may evaluate a point again (optuna warns "GridSampler is re-evaluating"), a
duplicate or two at the end. The study keeps them; `result.trials` keeps one row per grid point, as one process.
Workers wait for each other before their first trial, so each runs at least one. Every trial carries the
user attribute `worker` (0..N-1), the `worker` column of `result.trials`.

Errors: the first worker that fails stops the others; its exception is raised in the parent (a qlab error as
itself, anything else as WorkerError) with the worker's traceback as a note. A worker that dies (killed, out of
memory) raises WorkerError. Trials running when the others are stopped stay RUNNING in a persistent storage.
"""

from __future__ import annotations

import abc
import multiprocessing as mp
import os
import pickle
import queue as queue_mod
import shutil
import tempfile
import traceback
import uuid
from typing import Any

import optuna
import pandas as pd
from optuna.storages import BaseStorage

import qlab.research.optimize as opt
from qlab.data.candles import Candles, validate_candles
from qlab.errors import ConfigError, QlabError
from qlab.research.space import parse_space

JOURNAL_SUFFIXES = (".log", ".journal", ".jsonl")  # the rule of `open_study`
SQLITE_LOCK_WAIT_S = 60


class WorkerError(QlabError, RuntimeError):
    """A worker process failed with an error that is not a qlab error, or died."""


def is_journal_path(storage: str) -> bool:
    return storage.endswith(JOURNAL_SUFFIXES) and "://" not in storage


def open_storage(storage: str) -> Any:
    """The optuna storage object for a Journal file path or an RDB URL (SQLite waits for its lock)."""
    if is_journal_path(storage):
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(storage))
    engine = {"connect_args": {"timeout": SQLITE_LOCK_WAIT_S}} if storage.startswith("sqlite") else {}
    return optuna.storages.get_storage(optuna.storages.RDBStorage(storage, engine_kwargs=engine))


def _check_shareable(storage: Any, workers: int) -> None:
    if not isinstance(storage, str):
        raise ConfigError(f"workers={workers} needs a storage every worker can open itself: an RDB URL (sqlite:///study.db, "
                          f"postgresql+psycopg://user@host/db) or a Journal file path ('study.log'), not a {type(storage).__name__}")
    if storage.startswith("sqlite") and (storage.rstrip("/") == "sqlite:" or ":memory:" in storage):
        raise ConfigError(f"storage={storage!r} is an in-memory database the workers cannot share; give a file, "
                          "e.g. sqlite:///study.db")


def run_workers(strategy: Any, candles: Candles, space: dict[str, Any], objective: Any = "sharpe", *, method: str = "bayes",
                n_trials: int | None = 100, storage: Any = None, study_name: str | None = None, seed: int | None = 0,
                constraints: Any = None, data: dict[str, pd.Series] | None = None, cash: float = 10_000.0, fast: bool = True,
                check_lookahead: bool = True, workers: int = 2, progress: bool = False) -> opt.OptimizationResult:
    """`optimize` on `workers` processes sharing one study (see the module docstring); `progress` shows a bar
    of finished trials (terminal or notebook)."""
    strat = opt.resolve_strategy(strategy)
    validate_candles(candles, where="the candles to optimise on")
    sp = parse_space(space, strat)
    names, directions = opt.parse_objectives(objective)
    opt.parse_constraints(constraints)
    if not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers={workers!r}; give a positive number of processes")
    total = sp.grid_size() if method == "grid" else n_trials
    if total is None or total < 1:
        raise ConfigError(f"n_trials={n_trials!r}; give a positive number of trials")
    sampler = opt.make_sampler(method, sp, seed, len(names))  # also refuses an unknown method
    if check_lookahead:
        opt._assert_causal(strat, candles, data)  # once here, not in every worker
    temp_dir = None
    if storage is None:
        temp_dir = tempfile.mkdtemp(prefix="qlab-study-")
        storage = os.path.join(temp_dir, "study.log")
    _check_shareable(storage, workers)
    if is_journal_path(storage):
        storage = os.path.abspath(storage)
    study_name = study_name or f"qlab-{method}-{uuid.uuid4().hex[:8]}"
    try:
        shared = open_storage(storage)
        study = opt.open_study(shared, study_name, directions, sampler)
        n = min(workers, total)
        shares = [total // n + (k < total % n) for k in range(n)]
        job = {"strategy": strat.to_dict(), "candles": candles, "space": space, "objective": objective, "method": method,
               "study_name": study_name, "constraints": constraints, "data": data, "cash": cash, "fast": fast,
               "check_lookahead": False}
        jobs = [{**job, "n_trials": shares[k], "seed": None if seed is None else seed + (0 if method == "grid" else k)}
                for k in range(n)]
        fast_path = _run_processes(jobs, storage, study, total if progress else None)
        if temp_dir is not None:  # the Journal file goes with its folder: keep the study in memory
            memory = optuna.storages.InMemoryStorage()
            optuna.copy_study(from_study_name=study_name, from_storage=shared, to_storage=memory)
            study = optuna.load_study(study_name=study_name, storage=memory, sampler=sampler)
    finally:
        if temp_dir is not None:
            shutil.rmtree(temp_dir, ignore_errors=True)
    table = opt.trials_table(study, sp, names)
    if method == "grid":
        table = one_row_per_point(table, sp.names)
    return opt.OptimizationResult(study, table, names, directions, sp, method, strat, fast_path)


def one_row_per_point(table: pd.DataFrame, params: list[str]) -> pd.DataFrame:
    """The first complete trial of each parameter set (drops grid points that workers evaluated twice)."""
    if table.empty:
        return table
    first = table.assign(_late=table.state.ne("COMPLETE")).sort_values(["_late", "number"])
    first = first.drop_duplicates(subset=params, keep="first").drop(columns="_late")
    return first.sort_values("number").reset_index(drop=True)


def _run_processes(jobs: list[dict], storage: str, study: Any, progress_total: int | None) -> bool:
    """Start one process per job, wait for all; the first failure stops the rest and is raised here."""
    ctx = mp.get_context("spawn")
    todo, results, barrier = ctx.Queue(), ctx.Queue(), ctx.Barrier(len(jobs))
    procs = [ctx.Process(target=_work, args=(storage, todo, barrier, results), name=f"qlab-worker-{k}", daemon=True)
             for k in range(len(jobs))]
    bar = _ProgressBar(study, progress_total) if progress_total else None
    pending, fast_path = set(range(len(jobs))), False
    try:
        for p in procs:  # small arguments, so the processes start side by side; the jobs (candles) follow by queue
            p.start()
        for k, job in enumerate(jobs):
            todo.put({**job, "worker": k})
        while pending:
            try:
                k, ok, info = results.get(timeout=0.5)
            except queue_mod.Empty:
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                if dead:
                    raise WorkerError(f"a worker process died with exit code {dead[0].exitcode} (killed, or out of memory?)") from None
                if bar:
                    bar.update()
                continue
            if not ok:
                _raise_remote(k, len(jobs), info)
            pending.discard(k)
            fast_path = bool(info)
        if bar:
            bar.update()
    finally:
        if bar:
            bar.close()
        started = [p for p in procs if p.pid is not None]
        for p in started:
            if pending and p.is_alive():  # a failure or an interrupt: stop the others
                p.terminate()
        for p in started:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
                p.join()
        for q in (todo, results):
            q.cancel_join_thread()
            q.close()
    return fast_path


def _raise_remote(k: int, n: int, info: tuple[str, str, bytes | None]) -> None:
    summary, text, blob = info
    exc = pickle.loads(blob) if blob is not None else None
    note = f"raised in qlab worker {k} of {n}; the worker's traceback:\n{text}"
    if isinstance(exc, QlabError):
        exc.add_note(note)
        raise exc
    error = WorkerError(f"worker {k} of {n} failed: {summary}")
    error.add_note(note)
    raise error from exc


def _work(storage: str, todo: Any, barrier: Any, results: Any) -> None:
    """One worker process: take a job, optimize on the shared study; report (k, True, fast_path) or (k, False, error)."""
    job = todo.get()
    k = job.pop("worker")
    try:
        from qlab.research.optimize import optimize

        result = optimize(**job, storage=_WorkerStorage(open_storage(storage), k, barrier), workers=1)
        results.put((k, True, result.fast_path))
    except Exception as exc:
        try:
            blob = pickle.dumps(exc)
            pickle.loads(blob)
        except Exception:
            blob = None
        results.put((k, False, (f"{type(exc).__name__}: {exc}", "".join(traceback.format_exception(exc)), blob)))


class _WorkerStorage(BaseStorage):
    """The shared storage as one worker sees it: every call goes to it, each new trial is tagged with the
    worker's number, and the first new trial waits until every worker is ready."""

    def __init__(self, inner: Any, worker: int, barrier: Any) -> None:
        self._inner, self._worker, self._barrier = inner, worker, barrier

    def create_new_trial(self, study_id: int, template_trial: Any = None) -> int:
        if self._barrier is not None:
            self._barrier.wait()
            self._barrier = None
        trial_id = self._inner.create_new_trial(study_id, template_trial)
        self._inner.set_trial_user_attr(trial_id, "worker", self._worker)
        return trial_id

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _delegate(name: str):
    return lambda self, *args, **kwargs: getattr(self._inner, name)(*args, **kwargs)


for _name in dir(BaseStorage):  # every public method is the shared storage's own
    if not _name.startswith("_") and _name != "create_new_trial" and callable(getattr(BaseStorage, _name)):
        setattr(_WorkerStorage, _name, _delegate(_name))
abc.update_abstractmethods(_WorkerStorage)


class _ProgressBar:
    """Finished trials of this run, polled from the shared study (tqdm: a terminal bar or a notebook widget)."""

    def __init__(self, study: Any, total: int) -> None:
        from tqdm.auto import tqdm

        self.study = study
        self.start = self._finished()
        self.bar = tqdm(total=total, desc="trials", unit="trial")

    def _finished(self) -> int:
        return sum(t.state.is_finished() for t in self.study.get_trials(deepcopy=False))

    def update(self) -> None:
        self.bar.update(max(0, min(self.bar.total, self._finished() - self.start)) - self.bar.n)

    def close(self) -> None:
        self.bar.close()
