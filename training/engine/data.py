"""Per-epoch data loaders that can start in the middle of an epoch.

Resuming at step ``s`` must feed the same batches as an uninterrupted run. That holds when the sampler's order
depends only on its seed and ``set_epoch(epoch)`` (``DistributedSampler``, ``training.data.MultiDatasetSampler``),
the already-consumed batches of the epoch are skipped by index (no image is loaded for them), and the
DataLoader's worker seeds come from a generator seeded by (seed, epoch) instead of the global RNG.
With ``num_workers=0`` the augmentations then draw from the restored global RNG, so resume is bit-exact; with
workers, the data order is exact and the augmentation draws depend on which worker loads which batch.
"""

from __future__ import annotations

from typing import Callable, Iterator, Sized

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler

from training.config import ConfigError


class SkipBatches(Sampler[list[int]]):
    """The batches of ``batch_sampler`` without the first ``skip`` of them."""

    def __init__(self, batch_sampler: BatchSampler, skip: int):
        if skip < 0:
            raise ValueError(f"skip must be >= 0, got {skip}")
        self.batch_sampler = batch_sampler
        self.skip = skip

    def __iter__(self) -> Iterator[list[int]]:
        for position, batch in enumerate(self.batch_sampler):
            if position >= self.skip:
                yield batch

    def __len__(self) -> int:
        return max(0, len(self.batch_sampler) - self.skip)


def steps_per_epoch(sampler: Sized, batch_size: int) -> int:
    """Full batches per epoch (the last partial batch is dropped, so every step has the same shape)."""
    steps = len(sampler) // batch_size
    if steps == 0:
        raise ConfigError(
            f"the data gives {len(sampler)} images per epoch on this process, fewer than one batch of {batch_size}: "
            "lower train.batch_size or add images"
        )
    return steps


def epoch_loader(
    dataset: Dataset,
    sampler: Sampler | None,
    *,
    batch_size: int,
    epoch: int,
    skip: int = 0,
    seed: int = 0,
    num_workers: int = 0,
    pin_memory: bool = False,
    collate_fn: Callable | None = None,
) -> DataLoader:
    """A DataLoader over ``epoch`` of ``sampler``, starting at batch ``skip``.

    ``sampler=None``: ``dataset`` is an iterable dataset that plans its epochs itself and starts at batch ``skip``
    through ``set_epoch(epoch, skip)`` (training.data.hub_streaming.StreamingSegmentation); every worker gives
    whole batches only."""
    batching = {"batch_size": batch_size, "drop_last": True}
    if sampler is None:
        dataset.set_epoch(epoch, skip)
    else:
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        batching = {"batch_sampler": SkipBatches(BatchSampler(sampler, batch_size, drop_last=True), skip)}
    return DataLoader(
        dataset,
        **batching,
        num_workers=num_workers,
        pin_memory=pin_memory,
        generator=worker_seeds(seed, epoch),
        collate_fn=collate_fn,
        persistent_workers=False,
    )


def worker_seeds(seed: int, epoch: int) -> torch.Generator:
    """The generator DataLoader workers' seeds come from: fixed by (seed, epoch), not by the global RNG."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)
