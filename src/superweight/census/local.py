"""The local engine: a few worker processes on this machine, each running one model at a time.

Why processes of our own rather than `concurrent.futures.ProcessPoolExecutor`: when one of its
workers dies (killed for memory, a segfault in a native library), the executor breaks and every
model still queued fails with it, and it cannot say which model the dead worker held. Here each
worker is a 'spawn' process with its own pipe; the driver waits on the pipes and on the processes'
sentinels, so a worker that dies is seen at once, the model it held is recorded as failed with how
the process ended, a fresh worker takes its place, and the other models go on. A worker is reused
for the next model, so torch is imported once per worker, not once per model. Workers are not
daemonic (lm-eval, under `--ablate quick`, starts processes of its own); one whose driver is gone
sees its pipe close and exits.

Placement by memory: each model reserves what its weights need (plus a fixed allowance for the
process); models start while their reservations fit in the budget, so several small models run at
once, and a model larger than one worker's share waits until the others are done and runs alone
with the whole budget (layers beyond it stay on disk, as with `--max-memory`).
"""

from __future__ import annotations

import multiprocessing as mp
import signal
from multiprocessing.connection import wait
from typing import Callable

from superweight.census.work import run_model


def _serve(conn) -> None:  # the worker process: run what the driver sends until it sends None
    import superweight.detect  # noqa: F401 — torch and transformers load now, while the driver plans
    import superweight.model.load  # noqa: F401

    while True:
        try:
            task = conn.recv()
        except EOFError:
            return
        if task is None:
            return
        conn.send(run_model(task))


class _Worker:
    def __init__(self, ctx):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child,), name="superweight-census-worker")
        self.proc.start()
        child.close()
        self.item = None  # what it runs now: (index, task, reserve)
        self.used = False

    def stop(self) -> None:
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.proc.join(timeout=10)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.conn.close()


def death_message(exitcode: int | None) -> str:
    """How a worker process ended, in words ('killed by SIGKILL (out of memory?)')."""
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = " (out of memory?)" if name == "SIGKILL" else ""
        return f"the worker process died: killed by {name}{hint}"
    return f"the worker process died (exit status {exitcode})"


class LocalPool:
    """`workers` spawn processes, started at once (so their imports overlap the driver's own work),
    kept for as many `run`s as wanted; `close()` ends them (a context manager does it too)."""

    def __init__(self, workers: int):
        self.ctx = mp.get_context("spawn")
        self.workers = [_Worker(self.ctx) for _ in range(workers)]

    def run(self, tasks: list[tuple[dict, int]], total: int, on_start: Callable[[int], None],
            on_done: Callable[[int, dict], None], crashed: Callable[[int, dict, str], dict]) -> None:
        """Run `tasks` = [(task, reserve bytes)]: start each when a worker is idle and its reserve fits
        in what `total` has left; `on_done(i, entry)` as each ends (`crashed(i, task, why)` makes the
        entry of a model whose worker died)."""
        pending = list(range(len(tasks)))
        free = total
        try:
            while pending or any(w.item for w in self.workers):
                for w in self.workers:
                    if w.item is None and pending:
                        i = next((i for i in pending if tasks[i][1] <= free), None)
                        if i is None:
                            break
                        pending.remove(i)
                        task, reserve = tasks[i]
                        free -= reserve
                        w.item, w.used = (i, task, reserve), True
                        on_start(i)
                        w.conn.send(task)
                busy = [w for w in self.workers if w.item]
                ready = wait([w.conn for w in busy] + [w.proc.sentinel for w in busy], timeout=1.0)
                for w in busy:
                    if w.conn not in ready and w.proc.sentinel not in ready:
                        continue
                    i, task, reserve = w.item
                    try:
                        entry = w.conn.recv()
                    except (EOFError, OSError):  # the process died with the model
                        w.proc.join(timeout=5)
                        w.conn.close()
                        entry = crashed(i, task, death_message(w.proc.exitcode))
                        self.workers[self.workers.index(w)] = _Worker(self.ctx)
                    w.item = None
                    free += reserve
                    on_done(i, entry)
        except BaseException:  # interrupted (Ctrl-C, an error in a callback): stop the workers, models and all
            self.close()
            raise

    def __enter__(self) -> "LocalPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for w in self.workers:
            if w.proc.is_alive() and (w.item is not None or not w.used):  # interrupted, or never needed
                w.proc.kill()
            w.stop()
        self.workers = []

