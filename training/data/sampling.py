"""Sampling across datasets with DistributedSampler semantics.

``proportional`` (the paper): one shuffled pass over the union, datasets appear in proportion to their size.
``balanced``: every dataset gets an equal share of the epoch (len(dataset) samples in total); small datasets
are cycled through fresh permutations. Every rank takes a disjoint strided shard of the same per-epoch order.
"""

from __future__ import annotations

import math
from typing import Iterator

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

SAMPLING_MODES = ("proportional", "balanced")


class MultiDatasetSampler(Sampler[int]):
    """Indices into a dataset exposing ``dataset_ids`` (int64 ``[N]``, the dataset of each sample)."""

    def __init__(
        self,
        dataset,
        *,
        mode: str = "proportional",
        num_replicas: int | None = None,
        rank: int | None = None,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
    ):
        if mode not in SAMPLING_MODES:
            raise ValueError(f"sampling mode {mode!r}: choose one of {', '.join(SAMPLING_MODES)}")
        if num_replicas is None:
            num_replicas = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if rank is None:
            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} out of range for {num_replicas} replicas")
        self.dataset_ids = torch.as_tensor(dataset.dataset_ids, dtype=torch.int64)
        if self.dataset_ids.numel() == 0:
            raise ValueError("MultiDatasetSampler: the dataset is empty")
        self.mode, self.num_replicas, self.rank = mode, num_replicas, rank
        self.seed, self.shuffle, self.drop_last = seed, shuffle, drop_last
        self.epoch = 0
        total = self.dataset_ids.numel()
        if drop_last and total >= num_replicas:
            self.num_samples = total // num_replicas
        else:
            self.num_samples = math.ceil(total / num_replicas)
        self.total_size = self.num_samples * num_replicas

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_order(self) -> torch.Tensor:
        """The full order of this epoch before sharding, int64 ``[len(dataset)]`` (same on every rank)."""
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        total = self.dataset_ids.numel()
        if self.mode == "proportional":
            return torch.randperm(total, generator=generator) if self.shuffle else torch.arange(total)
        members = [torch.nonzero(self.dataset_ids == d).flatten() for d in torch.unique(self.dataset_ids)]
        quota = [total // len(members) + (d < total % len(members)) for d in range(len(members))]
        picks = []
        for indices, count in zip(members, quota):
            rounds = math.ceil(count / indices.numel())
            cycle = [
                torch.randperm(indices.numel(), generator=generator) if self.shuffle else torch.arange(indices.numel())
                for _ in range(rounds)
            ]
            picks.append(indices[torch.cat(cycle)[:count]])
        if self.shuffle:
            order = torch.cat(picks)
            return order[torch.randperm(order.numel(), generator=generator)]
        # Without shuffling, interleave the datasets round-robin so every prefix stays balanced.
        longest = max(quota)
        padded = torch.stack([torch.cat([p, p.new_full((longest - p.numel(),), -1)]) for p in picks], dim=1)
        order = padded.flatten()
        return order[order >= 0]

    def __iter__(self) -> Iterator[int]:
        order = self.epoch_order()
        if self.total_size > order.numel():
            repeats = math.ceil(self.total_size / order.numel())
            order = order.repeat(repeats)
        order = order[: self.total_size]
        return iter(order[self.rank : self.total_size : self.num_replicas].tolist())

    def __len__(self) -> int:
        return self.num_samples
