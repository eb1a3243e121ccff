"""Batch streams over in-memory arrays, and `Stream`: how any source is read (batch size, order,
repetition, this process's shard, the batch to start at). The layout is in `casc_jax.data`'s docstring."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator

import numpy as np

from casc_jax import image_io

Batch = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class Stream:
    """How a split is read.

    batch_size: B, this process's batch size. shuffle_seed: shuffle with this seed, or keep file order
    when None. repeat: True for an endless training stream; False for one padded evaluation pass.
    process_index, process_count: this process's shard (None: ``jax.process_index()`` /
    ``jax.process_count()``). start_batch: with ``repeat``, start at the stream's ``start_batch``-th batch
    (exact resume).
    """

    batch_size: int
    shuffle_seed: int | None = None
    repeat: bool = False
    process_index: int | None = None
    process_count: int | None = None
    start_batch: int = 0

    @classmethod
    def training(cls, batch_size: int, shuffle_seed: int | None, start_batch: int = 0) -> Stream:
        return cls(batch_size, shuffle_seed, repeat=True, start_batch=start_batch)

    @classmethod
    def single_pass(cls, batch_size: int) -> Stream:
        """One padded pass in file order of this process's shard."""
        return cls(batch_size)

    @classmethod
    def evaluation(cls, global_batch_size: int) -> Stream:
        """One padded pass in file order of the whole split, the same on every process: the multi-host
        rule of `casc_jax.evaluate.snr_sweep` (every process reads the global batch)."""
        return cls(global_batch_size, process_index=0, process_count=1)

    def resolved(self) -> Stream:
        """Checked, with the process shard filled in (JAX's by default); start_batch 0 for a single pass."""
        b = self.batch_size
        if isinstance(b, bool) or not isinstance(b, int | np.integer) or b < 1:
            raise ValueError(f"batch_size must be a positive int, got {b!r}")
        index, count = resolve_process(self.process_index, self.process_count)
        start = int(self.start_batch) if self.repeat else 0
        return Stream(int(b), self.shuffle_seed, bool(self.repeat), index, count, start)

    def check_shards(self, n: int) -> int:
        """This process's share of ``n`` examples; a training stream needs one for every process."""
        if self.repeat and n < self.process_count:
            raise ValueError(f"{n} examples cannot give every one of {self.process_count} processes a shard")
        return len(range(self.process_index, n, self.process_count))


def resolve_process(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    """(process_index, process_count), defaulting to JAX's; ValueError when out of range."""
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"need 0 <= process_index < process_count, got {process_index}, {process_count}")
    return int(process_index), int(process_count)


def num_eval_batches(num_examples: int, batch_size: int, process_count: int) -> int:
    """Batches per process in a padded evaluation pass: every process yields the same number."""
    return math.ceil(math.ceil(num_examples / process_count) / batch_size)


def epoch_order(local: np.ndarray, shuffle_seed: int | None, epoch: int) -> np.ndarray:
    """The order of this process's examples in training epoch `epoch`: a function of (seed, epoch) alone."""
    if shuffle_seed is None:
        return local
    return np.random.default_rng([shuffle_seed, epoch]).permutation(local)


def index_batches(n: int, stream: Stream) -> Iterator[tuple[int, np.ndarray]]:
    """The examples of each batch of `stream` over N examples: (b, idx), idx indices into the N.

    Training (``stream.repeat``): b counts the batches from ``stream.start_batch`` on and idx is always
    full (B,). The global batches (B * process_count) are those of one process, each process taking its
    contiguous block, so b and the slot ``process_index * B + k`` name an example's place in the stream on
    any number of processes. Single pass: b = 0, 1, ..., ``num_eval_batches`` - 1 over this process's shard;
    idx holds at most B indices (the last batches may be short or empty, for the caller to pad).
    """
    stream = stream.resolved()
    batch_size, shuffle_seed, process_index, process_count = (
        stream.batch_size, stream.shuffle_seed, stream.process_index, stream.process_count
    )
    local = np.arange(n)[process_index::process_count]
    stream.check_shards(n)

    def endless() -> Iterator[tuple[int, np.ndarray]]:
        size = batch_size * process_count
        epoch, offset = divmod(stream.start_batch * size, n)
        pending = epoch_order(np.arange(n), shuffle_seed, epoch)[offset:]
        b = stream.start_batch
        while True:
            while len(pending) < size:
                epoch += 1
                pending = np.concatenate([pending, epoch_order(np.arange(n), shuffle_seed, epoch)])
            yield b, pending[process_index * batch_size : (process_index + 1) * batch_size]
            pending = pending[size:]
            b += 1

    def single_pass() -> Iterator[tuple[int, np.ndarray]]:
        order = epoch_order(local, shuffle_seed, 0)
        for b in range(num_eval_batches(n, batch_size, process_count)):
            yield b, order[b * batch_size : (b + 1) * batch_size]

    return endless() if stream.repeat else single_pass()


def array_batches(images: np.ndarray, labels: np.ndarray, stream: Stream) -> Iterator[Batch]:
    """Batches of in-memory uint8 images (N, S, S, 3) read as `stream` says (see `index_batches`)."""
    stream = stream.resolved()
    batch_size = stream.batch_size

    def batch(idx: np.ndarray) -> Batch:
        if stream.repeat:
            return dict(image=image_io.to_float(images[idx]), label=labels[idx], valid=np.ones(batch_size, bool))
        image = np.zeros((batch_size, *images.shape[1:]), np.float32)
        label = np.zeros(batch_size, np.int32)
        image[: len(idx)], label[: len(idx)] = image_io.to_float(images[idx]), labels[idx]
        return dict(image=image, label=label, valid=np.arange(batch_size) < len(idx))

    return (batch(idx) for _, idx in index_batches(len(images), stream))
