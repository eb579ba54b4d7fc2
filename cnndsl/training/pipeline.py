"""Batches for the loop: samples read (and decoded, for files) and augmented one at a time,
in DataLoader worker processes when `workers` > 0, collated, normalised.

Augmentation draws from a generator seeded by (seed, epoch, sample), not from a shared
stream: a sample's crop and angle are the same whichever worker makes it, however many
workers there are, and after `--resume` (so a resumed run stays bit for bit).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch.utils.data import DataLoader, default_collate
from torch.utils.data import Dataset as TorchDataset


def default_workers(samples, augment: Callable | None) -> int:
    """Files to decode: as many workers as cores beside the main process (at least one,
    at most 4). Samples in memory: none without augmentation, nor on two cores or fewer
    (the model's step needs them more than a cheap crop does)."""
    cores = os.cpu_count() or 1
    if hasattr(samples, "images") and (augment is None or cores <= 2):
        return 0
    return max(1, min(4, cores - 1))


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return ((seed * 1_000_003 + epoch) * 10_000_019 + index) % (2**63 - 1)


class _Samples(TorchDataset):
    """Index `(epoch, i)` -> sample i, augmented with its own seeded draw."""

    def __init__(self, samples, augment: Callable | None, seed: int):
        self.samples, self.augment, self.seed = samples, augment, seed

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, int]):
        """In a worker process; in the main one, `keeping_rng` around it."""
        epoch, i = key
        x, y = self.samples[i]
        if self.augment is None:
            return x, y
        # the CPU generator alone: torch.manual_seed would seed every device (100 us)
        torch.default_generator.manual_seed(sample_seed(self.seed, epoch, i))
        return self.augment(x, y)


@contextmanager
def keeping_rng():
    """The main process's generator as it was (dropout's draws stay where they were)."""
    state = torch.default_generator.get_state()
    try:
        yield
    finally:
        torch.default_generator.set_state(state)


class _Plan:
    """The batch sampler: the batches the next pass walks, set before each pass (so one
    DataLoader, and its workers, serve the whole run)."""

    def __init__(self):
        self.batches: list[list[tuple[int, int]]] = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class Batches:
    """`batches(index_lists, epoch)` -> (x, y) per list, in order."""

    def __init__(self, samples, *, augment: Callable | None, prepare: Callable, seed: int,
                 workers: int | None, collate: Callable = default_collate):
        self.samples, self.augment, self.prepare, self.seed = samples, augment, prepare, seed
        self.workers = default_workers(samples, augment) if workers is None else workers
        self.collate = collate
        self._plan = _Plan()
        self._loader = None

    def __call__(self, batches: list[list[int]], epoch: int = 0) -> Iterator:
        if self.workers == 0:
            yield from self._here(batches, epoch)
            return
        if self._loader is None:
            self._loader = DataLoader(
                _Samples(self.samples, self.augment, self.seed), batch_sampler=self._plan,
                num_workers=self.workers, collate_fn=self.collate,
                persistent_workers=self.workers > 0,
                generator=torch.Generator().manual_seed(self.seed))
        self._plan.batches = [[(epoch, i) for i in batch] for batch in batches]
        for x, y in self._loader:
            yield self.prepare(x), y

    def _here(self, batches, epoch: int) -> Iterator:
        """No workers: samples made in this process (in memory without augmentation, a
        batch is one indexing)."""
        per_sample = _Samples(self.samples, self.augment, self.seed)
        for batch in batches:
            if self.augment is None and hasattr(self.samples, "batch"):
                x, y = self.samples.batch(batch)
            else:
                with keeping_rng():
                    x, y = self.collate([per_sample[epoch, i] for i in batch])
            yield self.prepare(x), y

    def close(self) -> None:
        if self._loader is not None and self.workers > 0:
            self._loader._iterator = None  # persistent workers end with their iterator
        self._loader = None
