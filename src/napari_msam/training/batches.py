"""A batch's training crops made in parallel, each from its own random stream.

Why: one crop costs milliseconds of CPU (resampling, normalisation, augmentations) while a GPU step of a
small model costs less than a batch of them made one after another, so a GPU run would wait on one CPU
core. numpy and torch release the GIL in the heavy parts, so a pool of threads (no pickling of the cases,
no start-up cost) makes the crops side by side.

Every sample draws from its own generator, keyed by (seed, epoch, step, micro-batch, rank) and the
sample's place in the micro-batch, so a batch is the same whatever the number of workers, and a resumed
run replays the same crops. Each crop runs with one torch intra-op thread (in a worker or on the calling
thread alike): the workers are the parallelism, and a reduction's result does not depend on how many
threads split it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np
import torch

__all__ = ["CROP_STREAM", "CropPool", "available_cores", "resolve_workers", "sample_rngs"]

#: The crop random streams a run's state was made with: 2 = one generator per sample (this module);
#: 1 = one generator per micro-batch, shared by its crops and then its clicks (older runs).
CROP_STREAM = 2

T = TypeVar("T")


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def resolve_workers(requested: int, batch_size: int, processes_per_machine: int = 1) -> int:
    """Crop workers for one process: ``requested`` if > 0, else the cores this process's share of the
    machine has (data-parallel ranks split it), at most one per sample of the batch."""
    if requested > 0:
        return int(requested)
    share = available_cores() // max(1, processes_per_machine)
    return max(1, min(share, int(batch_size)))


def sample_rngs(seed: int, epoch: int, step: int, micro: int, rank: int, n: int) -> list[np.random.Generator]:
    """One generator per sample of a micro-batch: children of the micro-batch's seed sequence."""
    key = [int(seed), int(epoch), int(step), int(micro), int(rank)]
    return [np.random.default_rng(np.random.SeedSequence(key, spawn_key=(k,))) for k in range(n)]


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run the body with one torch intra-op thread on this thread, then give the thread its count back."""
    before = torch.get_num_threads()
    if before != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if before != 1:
            torch.set_num_threads(before)


def _in_one_thread(fn: Callable[[], T]) -> T:
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)
    return fn()


class CropPool:
    """Runs a batch's crop jobs on ``workers`` threads (1: on the calling thread); reused across steps."""

    def __init__(self, workers: int):
        self.workers = max(1, int(workers))
        self._pool: ThreadPoolExecutor | None = None

    def map(self, jobs: Sequence[Callable[[], T]]) -> list[T]:
        """The jobs' results in order; the first job's exception, if any, is raised here."""
        if self.workers == 1 or len(jobs) <= 1:
            with one_torch_thread():
                return [job() for job in jobs]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="msam-crops")
        caller = torch.get_num_threads()
        try:
            futures = [self._pool.submit(_in_one_thread, job) for job in jobs]
            return [f.result() for f in futures]
        finally:
            # a worker's set_num_threads(1) also becomes torch's default for threads started later
            # (autograd, inter-op); give that default back the caller's count
            torch.set_num_threads(caller)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
