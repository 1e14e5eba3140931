"""Worker processes that never outlive the process that started them, and an ordered map over
a pool of them.

:func:`exit_with_parent` ends a worker once its parent is gone (feature extraction's loky
workers, prediction's photo workers). :func:`ordered_map` is ``map(fn, items)`` run by spawned
worker processes, results in input order, at most a fixed number of items ahead of the
consumer, so that a folder of 100,000 photos holds a few results at a time, not all of them.

The workers are *spawned* (a fresh interpreter each), never forked: the parent may hold
TensorFlow's threads and locks (forking those is unsafe), and a spawned worker imports only
what its task needs. What crosses between processes is pickled: give ``fn`` and ``items`` that
are plain data (paths, tuples, numpy arrays), never a dlib object or a loaded model.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator

LOOK_AHEAD_PER_WORKER = 8
"""Items in the pool or done and not yet taken, per worker: enough that the workers
keep going while the consumer is busy (prediction runs a network batch of 64 crops, about
0.4 s for the release on one core, while a worker finds a photo's faces in 0.05-0.25 s), and
few enough that what waits is small (each result a photo's 48x48 crops)."""

_WATCHING_PARENT = False


def exit_with_parent(parent_pid: int) -> None:
    """In a worker process of ``parent_pid``, exit as soon as that parent is gone.

    Pool workers hold both ends of their own task pipe (joblib's loky workers, and the call
    queue of ``concurrent.futures``), so when the parent is killed with -9 they never see it
    close and linger (measured: loky's still alive ten minutes later, each holding its memory;
    spawned ``ProcessPoolExecutor`` workers likewise). A daemon thread, started once per
    worker, watches the parent pid and ends the worker when it changes. It does nothing in the
    parent itself (``n_jobs=1``, threading backend) or in workers that are not its children
    (dask, ray).
    """
    global _WATCHING_PARENT
    if _WATCHING_PARENT or os.getpid() == parent_pid or os.getppid() != parent_pid:
        return
    _WATCHING_PARENT = True

    def watch():
        while os.getppid() == parent_pid:
            time.sleep(0.25)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _start_worker(parent_pid: int) -> None:
    import signal

    # Ctrl-C is the parent's to handle (it cancels what is queued and waits for the items in
    # hand); a worker that took it too would die between two items with a traceback of its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    exit_with_parent(parent_pid)


@contextlib.contextmanager
def ordered_map(fn: Callable, items: Iterable, workers: int,
                look_ahead: int | None = None) -> Iterator[Iterator]:
    """``map(fn, items)`` by ``workers`` spawned processes, as a context: the iterator of
    results, in the order of ``items``. At most ``look_ahead`` items (default
    :data:`LOOK_AHEAD_PER_WORKER` per worker) are in the pool or done and not yet taken;
    ``items`` is read only that far. An exception in ``fn`` is raised where its result
    is taken; a worker that dies (killed, out of memory) raises ``BrokenProcessPool`` there.
    Leaving the context, however it is left, cancels what was not started and waits for the
    items in hand (one per worker), so no worker outlives it.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    if look_ahead is None:
        look_ahead = LOOK_AHEAD_PER_WORKER * workers
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_start_worker, initargs=(os.getpid(),))
    try:
        yield _in_order(pool, fn, iter(items), max(1, look_ahead))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _in_order(pool, fn, items: Iterator, look_ahead: int) -> Iterator:
    pending = deque(pool.submit(fn, item) for item in itertools.islice(items, look_ahead))
    while pending:
        result = pending.popleft().result()
        # the next item goes in before this result is handed over: the workers keep busy
        # while the consumer works on it
        pending.extend(pool.submit(fn, item) for item in itertools.islice(items, 1))
        yield result
