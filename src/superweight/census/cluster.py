"""The Ray engine: the same census as Ray tasks on an existing Ray cluster (`--ray ADDRESS|auto`).

Ray is the engine, not a transport: each model is one task declaring what it needs — CPU threads,
the memory its weights take (Ray's `memory` resource) and a GPU when the census runs on one — so
Ray's scheduler places it on a node that has room, queues it while none has, and retries it
(`max_retries`) when the process running it dies; results come back to the driver as they finish
(`ray.wait`) and go into the same store as local results. There is no scheduler, RPC or retry loop
of our own. The task runs `superweight.census.work.run_model`, so an error inside a model is that
model's result (never retried: the same model fails the same way); only a lost worker or node is
retried, and when the retries are spent the model is recorded failed with Ray's one-line reason.
Every node needs superweight installed in the Python the cluster runs (the same
`pip install superweight[cluster]`), and the models where it can read them (hub ids, or paths on a
shared filesystem).
"""

from __future__ import annotations

from typing import Callable

from superweight.errors import SuperweightError

INSTALL_HINT = "--ray needs Ray: pip install 'superweight[cluster]'"


def import_ray():
    try:
        import ray
    except ImportError:
        raise SuperweightError(INSTALL_HINT) from None
    return ray


def connect(address: str) -> dict:
    """Join the Ray cluster at `address` ('auto': the one `ray start` made on this machine), unless
    this process is already connected; returns the cluster's resources."""
    ray = import_ray()
    if not ray.is_initialized():
        try:
            ray.init(address=address, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise SuperweightError(f"cannot join the Ray cluster at {address!r}: {first} "
                                   "(start one with `ray start --head`)") from None
    return ray.cluster_resources()


def largest_node(resource: str = "memory") -> int | None:
    """The largest amount of `resource` ("memory", "CPU", "GPU") on one alive node (a task cannot
    span nodes, so a request above it could never be placed)."""
    ray = import_ray()
    sizes = [int(n["Resources"].get(resource, 0)) for n in ray.nodes() if n.get("Alive")]
    return max(sizes) if sizes else None


def _run_model_task(task: dict) -> dict:  # what a Ray worker runs
    from superweight.census.work import run_model

    return run_model(task)


def run_on_ray(tasks: list[tuple[dict, dict]], retries: int, on_start: Callable[[int], None],
               on_done: Callable[[int, dict], None], crashed: Callable[[int, dict, str], dict]) -> None:
    """Submit every task with its resource request (`{"num_cpus", "memory", "num_gpus"}`) and stream
    the entries back as they finish."""
    ray = import_ray()
    from superweight.census.work import one_line

    if any(r.get("num_gpus") for _, r in tasks) and not largest_node("GPU"):
        raise SuperweightError("the census asks for a GPU per model (--device cuda) but the Ray cluster has none")
    cpus = largest_node("CPU") or 0
    if any(r.get("num_cpus", 0) > cpus for _, r in tasks):
        raise SuperweightError(f"--threads asks for more CPUs per model than any node of the Ray cluster has ({cpus})")
    remote = ray.remote(_run_model_task)
    pending: dict = {}
    for i, (task, request) in enumerate(tasks):
        options = {k: v for k, v in request.items() if v}
        ref = remote.options(max_retries=retries, retry_exceptions=False, **options).remote(task)
        pending[ref] = i
        on_start(i)
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            for ref in ready:
                i = pending.pop(ref)
                try:
                    entry = ray.get(ref)
                except ray.exceptions.RayError as e:  # the worker or node was lost, retries spent
                    entry = crashed(i, tasks[i][0], f"the Ray task failed after {retries + 1} attempt(s): "
                                                    f"{one_line(e)}")
                on_done(i, entry)
    finally:
        for ref in pending:  # interrupted: cancel what has not finished
            ray.cancel(ref, force=True)
