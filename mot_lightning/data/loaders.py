"""The loaders Lightning iterates: training epochs of a fixed length, validation sets of equal length
on every rank, both turning a stalled worker into an error and warning once about high skip rates.

- ``EpochLoader``: the infinite training stream cut into epochs of exactly ``batches`` batches.
- ``EqualBatches``: one validation set; ranks whose share runs out early run ``empty_batch`` rows
  (padding only, nothing to predict: zero weight in every loss) until the last rank is done, so every
  rank runs the same number of validation steps (collectives inside a step, e.g. FSDP's all-gathers,
  never wait for a rank that has stopped). One flag per step is all-reduced to know when all are done.
- Both re-raise the DataLoader's ``timeout`` error with the key that sets it, and warn once per stream
  (``DataSkipWarning``) when its skip rate passes ``data.loader.skip_warning``.
"""

from __future__ import annotations

import signal
import warnings
from collections.abc import Callable, Iterator

from torch.utils.data import DataLoader

from mot_lightning.data.batch import MultiModalBatch
from mot_lightning.data.counters import StreamCounters, skip_report

_HINTS = {
    "too_long": "documents longer than data.seq_len: raise it or set data.loader.overlong: truncate",
    "image_too_large": "raise data.loader.max_image_pixels to decode them",
    "audio_too_long": "raise data.loader.max_audio_seconds to decode them",
    "member_too_large": "raise data.loader.max_member_bytes to read them",
    "too_many_members": "raise data.loader.max_doc_members to decode them",
    "doc_too_large": "raise data.loader.max_doc_pixels / max_doc_audio_seconds to decode them",
    "bad_document": "the warnings name each document's exception; `mot data inspect` lists them",
}


class DataSkipWarning(UserWarning):
    """More documents of a stream were skipped than ``data.loader.skip_warning`` allows."""


class SkipWatch:
    """Warns once per stream (``counters.rate_warned``) when its skip rate passes ``threshold`` (None:
    never)."""

    def __init__(self, name: str, counters: StreamCounters, threshold: float | None) -> None:
        self.name, self.counters, self.threshold = name, counters, threshold

    def check(self, final: bool = False) -> None:
        if self.counters.rate_warned or self.threshold is None:
            return
        totals = self.counters.totals()
        report = skip_report(totals, self.threshold, final)
        if report is None:
            return
        self.counters.rate_warned = True
        hints = [hint for reason, hint in _HINTS.items() if totals.get(reason)]
        warnings.warn(f"data stream {self.name!r}: {report}, above data.loader.skip_warning "
                      f"{self.threshold:.0%}" + ("; " + "; ".join(hints) if hints else "")
                      + " (counts: data/<stage>/skipped_<reason>; `mot data inspect` lists problems)",
                      DataSkipWarning, stacklevel=2)


def next_batch(iterator: Iterator, timeout: float) -> MultiModalBatch | None:
    """The next batch, or None at the end; a DataLoader timeout becomes an error naming its key."""
    try:
        return next(iterator)
    except StopIteration:
        return None
    except RuntimeError as err:
        if "timed out" not in str(err):
            raise
        raise RuntimeError(f"no batch from the data workers in {timeout:g} s (data.loader.timeout): a worker "
                           "is stuck or far too slow (remote shards, huge media?). Raise data.loader.timeout "
                           "if that is expected, or set it to 0 to wait forever") from err


def counted(loader: DataLoader) -> StreamCounters:
    """Make ``loader``'s stream count by batch (``counters.py``): its workers yield ``(batch, counts)`` pairs,
    ``take`` adds the counts of each batch taken."""
    loader.dataset.counts_per_batch = True
    counters = loader.dataset.counters
    counters.count_by_batch()
    return counters


def take(iterator: Iterator, loader: DataLoader) -> MultiModalBatch | None:
    """The next batch of a ``counted`` loader with its counts added to the stream's counters, or None at the end
    (after adding what its workers read past their last batch)."""
    while (item := next_batch(iterator, loader.timeout)) is not None:
        batch, counts = item
        loader.dataset.counters.consume(counts)
        if batch is not None:
            return batch
    return None


class EpochLoader:
    """A training DataLoader cut into epochs of exactly ``batches`` batches (equal on every rank).

    Each ``iter()`` starts a new epoch: the dataset is reseeded with the epoch
    number before the workers start (so workers must not be persistent).

    Resumable (Lightning saves ``state_dict()`` with the fit loop and restores it
    before iterating): the state is the seed of the epoch in progress and how many
    of its batches were handed out. A resumed ``iter()`` regenerates that epoch and
    skips what was already trained on, so a resumed run sees exactly the batches an
    unbroken run would, wherever the checkpoint was taken. The stream's counters
    count by batch (``counters.py``): its totals are those of the batches handed
    out, whatever the workers have read ahead. ``epoch_start_counts`` are the
    totals when the epoch in progress started: what a checkpoint carries over (the
    regenerated epoch counts its own part again, the skipped batches included).
    """

    def __init__(self, loader: DataLoader, batches: int, skip_warning: float | None = None) -> None:
        if loader.persistent_workers:
            raise ValueError("EpochLoader reseeds the dataset per epoch; use persistent_workers=False")
        self.loader, self.batches, self.epoch = loader, batches, 0
        self._current: int | None = None  # seed of the epoch being iterated
        self._yielded = 0
        self._skip = 0
        counters = counted(loader)
        self.epoch_start_counts = counters.totals()
        self.watch = SkipWatch("train", counters, skip_warning)

    def __len__(self) -> int:
        return self.batches

    def state_dict(self) -> dict:
        if self._current is None:
            return {"epoch": self.epoch, "yielded": 0}
        return {"epoch": self._current, "yielded": self._yielded}

    def load_state_dict(self, state: dict) -> None:
        # saved at an epoch end (yielded == batches), the next iter() is empty and the one after
        # starts the next epoch: whichever way the trainer treats that epoch, no batch is lost or repeated
        self.epoch, self._skip = int(state["epoch"]), min(int(state["yielded"]), self.batches)

    def __iter__(self) -> Iterator[MultiModalBatch]:
        seed, skip = self.epoch, self._skip
        stream = self.loader.dataset
        stream.set_epoch(seed)
        self.epoch_start_counts = stream.counters.totals()
        self.epoch, self._skip = seed + 1, 0
        self._current, self._yielded = seed, skip
        iterator = iter(self.loader)
        try:
            for _ in range(skip):  # already trained on before the checkpoint
                self._next(iterator)
            for _ in range(self.batches - skip):
                batch = self._next(iterator)
                self._yielded += 1
                self.watch.check()
                yield batch
        finally:  # an error, a stop or the epoch's end: the workers go now, not at interpreter exit
            shut_down(iterator)

    def _next(self, iterator: Iterator) -> MultiModalBatch:
        batch = take(iterator, self.loader)
        if batch is None:
            raise RuntimeError("the training stream ended; it is infinite unless a worker failed")
        return batch


class EqualBatches:
    """One validation set's DataLoader yielding the same number of batches on every rank.

    ``any_rank(flag)`` is True when ``flag`` is True on any rank (an all-reduce; the identity in one
    process). Every step all ranks learn whether any still has a batch; one that has none runs
    ``empty`` instead. Counters are reset at the start of each pass (validation counts are per pass) and
    count by batch, so a pass cut short (``trainer.limit_val_batches``) counts what it evaluated.
    """

    def __init__(self, loader: DataLoader, empty: MultiModalBatch, any_rank: Callable[[bool], bool],
                 name: str, skip_warning: float | None = None) -> None:
        self.loader, self.empty, self.any_rank = loader, empty, any_rank
        self.watch = SkipWatch(name, counted(loader), skip_warning)
        self.padded = 0  # empty batches run in the last pass

    def __iter__(self) -> Iterator[MultiModalBatch]:
        self.loader.dataset.counters.reset()
        self.padded = 0
        iterator = iter(self.loader)
        exhausted = False
        try:
            while True:
                batch = None if exhausted else take(iterator, self.loader)
                exhausted = batch is None  # its workers are done; shut_down still ends its feeder threads
                if not self.any_rank(batch is not None):
                    break
                if batch is None:
                    self.padded += 1
                yield self.empty if batch is None else batch
        finally:
            shut_down(iterator)
        self.watch.check(final=True)


def worker_loader(stream, options) -> DataLoader:
    """The ``DataLoader`` over a stream that yields whole batches, with ``data.loader``'s workers, pinning and
    timeout (a timeout needs workers: without them the main process reads and nothing can stall apart)."""
    return DataLoader(
        stream,
        batch_size=None,  # the stream yields whole batches
        num_workers=options.num_workers,
        pin_memory=options.pin_memory,
        persistent_workers=False,
        prefetch_factor=4 if options.num_workers else None,
        timeout=options.timeout if options.num_workers else 0,
        worker_init_fn=ignore_stop_signals,
    )


def shut_down(iterator: Iterator | None) -> None:
    """Stop a DataLoader iterator's workers now (torch's own shutdown: the done event, a join, then SIGTERM
    for a stuck one). Left to garbage collection, an iterator held by a traceback keeps its workers until
    the interpreter exits, and a worker stuck on a stalled ``pipe:`` source would then outlive the one
    SIGTERM multiprocessing sends at exit (``ignore_stop_signals``)."""
    shutdown = getattr(iterator, "_shutdown_workers", None)  # torch's _MultiProcessingDataLoaderIter
    if shutdown is not None:
        shutdown()
        join_feeder_threads(iterator)


def join_feeder_threads(iterator: Iterator, timeout: float = 5.0) -> None:
    """Wait for the threads that fed a shut-down iterator's index queues to end (each ends once its closed
    queue is flushed), at most ``timeout`` seconds each.

    The next epoch forks new workers right away, and a thread ending while this process forks can leave the
    child deadlocked at birth: on Python 3.8 to 3.11.9 the child then waits forever on an interpreter lock
    the ending thread held (CPython bug gh-112275, fixed in 3.11.10 and 3.12). The worker never starts and the
    run stalls until ``data.loader.timeout``. torch's shutdown leaves these threads to end on their own."""
    for queue in getattr(iterator, "_index_queues", ()):
        thread = getattr(queue, "_thread", None)  # multiprocessing.Queue's feeder, None if never started
        if thread is not None:
            thread.join(timeout)


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: a worker outlives the first SIGTERM. Sent to the whole process group
    (``docker stop``, ``kill -TERM -<pgid>``) the signal is the trainer's to handle: a worker dying of it would
    turn a clean stop into "DataLoader worker killed". The trainer then ends its workers itself; a second
    SIGTERM (the loader terminating a stuck worker, or the process exiting) ends the worker as usual."""
    signal.signal(signal.SIGTERM, _first_sigterm)


def _first_sigterm(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the next one ends this worker
