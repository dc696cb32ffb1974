"""Two halves of a batch on two cores: NumPy releases the GIL inside its loops.

The fused training primitives (``selective_ssm_final``) work on a batch of independent
rows. ``batch_halves`` cuts it into two fixed halves whenever it has at least
``2 * min_rows`` rows (the cut depends on the batch size only, never on the machine, so
results are bit-identical everywhere), and ``map_parts`` runs the parts on a small
thread pool when more than one core is available (``RSSM_REF_THREADS`` overrides; 1
runs them one after the other, with the same numbers).

>>> [(s.start, s.stop) for s in batch_halves(64)], [(s.start, s.stop) for s in batch_halves(8)]
([(0, 32), (32, 64)], [(0, 8)])
>>> map_parts(lambda a: a * 2, [(1,), (2,)])
[2, 4]
"""
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

__all__ = ["batch_halves", "map_parts", "workers", "one_thread_processes", "SPAWN"]

# fresh worker processes: nothing inherited, in particular no thread pool of ``map_parts``
SPAWN = multiprocessing.get_context("spawn")

_POOL = []


def workers():
    """Threads to use: $RSSM_REF_THREADS, else min(2, cores available to this process)."""
    env = os.environ.get("RSSM_REF_THREADS", "").strip()
    if env.isdigit() and int(env) >= 1:
        return int(env)
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(2, cores))


def batch_halves(batch, min_rows=16):
    """[slice] covering range(batch): two halves if batch >= 2 min_rows, else one part."""
    if batch < 2 * min_rows:
        return [slice(0, batch)]
    half = batch // 2
    return [slice(0, half), slice(half, batch)]


def map_parts(fn, arg_tuples):
    """[fn(*args) for args in arg_tuples], the parts on parallel threads if allowed."""
    if len(arg_tuples) < 2 or workers() < 2:
        return [fn(*a) for a in arg_tuples]
    if not _POOL:
        _POOL.append(ThreadPoolExecutor(max_workers=workers(), thread_name_prefix="rssm-ref"))
    futures = [_POOL[0].submit(fn, *a) for a in arg_tuples[1:]]
    first = fn(*arg_tuples[0])
    return [first] + [f.result() for f in futures]


def _one_thread():
    os.environ["RSSM_REF_THREADS"] = "1"


def one_thread_processes(n):
    """A pool of ``n`` fresh processes of one thread each (whole runs side by side: a run's
    numbers do not depend on its thread count, see ``batch_halves``)."""
    return ProcessPoolExecutor(max_workers=n, mp_context=SPAWN, initializer=_one_thread)
