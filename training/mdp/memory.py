"""Memories of the pretraining methods, all persistent buffers updated in place without host syncs.

* ``ClassPrototypeMemory``: MDP's one prototype per global class, kept by the two-step average.
* ``RegionMemoryBank``: the "Region" baseline, a FIFO queue of per-image class-mean embeddings.
* ``KeyQueue``: MoCo-v2's FIFO queue of image keys (speed reference).

Under torch.distributed every rank reduces (prototypes) or gathers (queues) the batch statistics before the
update, so all ranks hold identical memories; wrap the method in DDP with ``broadcast_buffers=False``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from training.engine.distributed import all_gather_cat, all_reduce_sum_


def region_means(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    ignore_index: int = -1,
    class_offsets: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Step 1 of the two-step average: per image and class, the normalised mean embedding of its pixels.

    embeddings: [B, D, h, w] (momentum-encoder output); labels: [B, h, w] global ids, ``ignore_index`` skipped;
    class_offsets: [C, D] subtracted from each class's mean before normalising (its dataset's mean embedding,
    MDP's ``dataset_centring``), or None. Returns (regions [B, C, D] unit vectors, zero where absent;
    present [B, C] bool).
    """
    batch, dim = embeddings.shape[:2]
    flat_embeddings = embeddings.permute(0, 2, 3, 1).reshape(-1, dim).float()
    flat_labels = labels.reshape(batch, -1)
    valid = (flat_labels != ignore_index).reshape(-1)
    image_index = torch.arange(batch, device=labels.device).repeat_interleave(flat_labels.shape[1])
    slot = torch.where(valid, image_index * num_classes + flat_labels.reshape(-1), 0)
    weight = valid.to(flat_embeddings.dtype)
    sums = flat_embeddings.new_zeros(batch * num_classes, dim)
    sums.index_add_(0, slot, flat_embeddings * weight[:, None])
    pixel_counts = flat_embeddings.new_zeros(batch * num_classes).index_add_(0, slot, weight)
    present = (pixel_counts > 0).reshape(batch, num_classes)
    if class_offsets is not None:
        means = sums / pixel_counts.clamp(min=1.0)[:, None]
        offsets = class_offsets.float().repeat(batch, 1)  # [B*C, D], slot = image * C + class
        sums = torch.where(present.reshape(-1, 1), means - offsets, torch.zeros_like(means))
    regions = F.normalize(sums, dim=1).reshape(batch, num_classes, dim)
    return regions, present


class ClassPrototypeMemory(nn.Module):
    """One prototype per global class, the running mean of the last ~``window`` region embeddings of the class.

    Step 2 of the two-step average, for class c with n_c regions seen so far and m_c new regions this step:
        mu_c <- (1 - w_c) * mu_c + w_c * mean(new regions),   w_c = min(1, m_c / min(a + n_c + m_c, window))
    With ``anchors=False`` (a = 0) a prototype starts at the mean of its first regions, is the exact cumulative
    mean while n_c + m_c <= window, and an EMA with per-region weight 1/window afterwards (a soft window).
    With ``anchors=True`` (the default, a = window) every prototype starts at a fixed random unit vector that
    counts as a full window of regions, so the EMA runs at 1/window per region from the first step and real
    regions replace the anchor gradually. Random anchors in D dimensions are nearly orthogonal: the loss has
    well-separated targets while the encoder is still random, where class means of its own embeddings are
    nearly parallel and the pixel-to-prototype gradient, proportional to their differences, cannot separate
    classes (docs/LEARNING.md, "The first fix"). Prototypes are stored un-normalised and
    normalised where used.

    Buffers (persistent): prototypes [C, D] float32, counts [C] int64 (real regions seen; 0 = never seen),
    anchor_share [C] float32: the weight of the starting anchor in the (un-normalised) prototype, 1 at the start
    and multiplied by (1 - w_c) at every update (0 throughout without anchors). It tells the regime of a run:
    near 1 the loss contrasts against fixed random class vectors, near 0 against pure class means.
    """

    def __init__(self, num_classes: int, dim: int, window: int = 4096, anchors: bool = True, anchor_seed: int = 0):
        super().__init__()
        if num_classes <= 0 or dim <= 0:
            raise ValueError(f"num_classes and dim must be positive, got {num_classes}, {dim}")
        if window <= 0:
            raise ValueError(f"window must be positive, got {window!r}")
        self.num_classes = num_classes
        self.window = window
        self.anchors = anchors
        self.anchor_seed = anchor_seed
        prototypes = self.anchor_vectors(dim) if anchors else torch.zeros(num_classes, dim)
        self.register_buffer("prototypes", prototypes)
        self.register_buffer("counts", torch.zeros(num_classes, dtype=torch.long))
        self.register_buffer("anchor_share", torch.full((num_classes,), 1.0 if anchors else 0.0))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, *args) -> None:
        # Checkpoints written before the share was tracked: exp(-regions / window) is its value for a class
        # whose regions arrived one batch at a time, each batch holding far fewer than a window.
        key, counts_key = prefix + "anchor_share", prefix + "counts"
        if key not in state_dict and counts_key in state_dict:
            counts = state_dict[counts_key].to(self.anchor_share.device, torch.float32)
            state_dict[key] = torch.exp(-counts / self.window) if self.anchors else torch.zeros_like(counts)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, *args)

    def anchor_vectors(self, dim: int | None = None) -> torch.Tensor:
        """[C, D] the starting anchors: unit vectors of a fixed generator, so identical on every rank and run."""
        dim = dim or self.prototypes.shape[1]
        generator = torch.Generator().manual_seed(self.anchor_seed)
        return F.normalize(torch.randn(self.num_classes, dim, generator=generator), dim=1)

    @property
    def seen(self) -> torch.Tensor:
        """[C] bool: classes whose prototype holds real regions."""
        return self.counts > 0

    @property
    def initialised(self) -> torch.Tensor:
        """[C] bool: classes that have a prototype (every class when anchored)."""
        return torch.ones_like(self.seen) if self.anchors else self.seen

    def normalised(self) -> torch.Tensor:
        """[C, D] unit prototypes (zero rows for uninitialised classes)."""
        return F.normalize(self.prototypes, dim=1)

    @torch.no_grad()
    def update(self, embeddings: torch.Tensor, labels: torch.Tensor, ignore_index: int = -1) -> None:
        """embeddings [B, D, h, w] momentum embeddings of clean images; labels [B, h, w] global ids.

        One all_reduce of [sums | counts] per call under torch.distributed.
        """
        self.update_from_regions(*region_means(embeddings, labels, self.num_classes, ignore_index))

    @torch.no_grad()
    def update_from_regions(self, regions: torch.Tensor, present: torch.Tensor) -> None:
        """Step 2 alone, from step 1's output: regions [B, C, D] unit vectors, present [B, C] bool."""
        dim = regions.shape[2]
        region_sums = (regions * present[..., None]).sum(0)
        new_counts = present.sum(0).to(regions.dtype)
        packed = all_reduce_sum_(torch.cat([region_sums, new_counts[:, None]], dim=1))
        region_sums, new_counts = packed[:, :dim], packed[:, dim]
        total = self.counts.to(packed.dtype) + new_counts + (self.window if self.anchors else 0)
        # Capped at 1: more new regions than the window replace the prototype by their mean; above 1 the lerp
        # would extrapolate away from the old prototype.
        weight = (new_counts / total.clamp(max=self.window).clamp(min=1.0)).clamp(max=1.0)
        batch_mean = region_sums / new_counts.clamp(min=1.0)[:, None]
        self.prototypes.lerp_(batch_mean, weight[:, None])
        self.anchor_share.mul_(1.0 - weight.to(self.anchor_share.dtype))
        self.counts.add_(new_counts.round().long())


def _ring_write_(
    storage: torch.Tensor, values: torch.Tensor, keep: torch.Tensor, pointer: torch.Tensor, capacity: int
) -> torch.Tensor:
    """Write the rows of ``values`` [M, ...] flagged by ``keep`` [M] to a ring of ``capacity`` rows, in order.

    ``storage`` has ``capacity + 1`` rows: the last one absorbs rows that are not kept, so the write is a
    single index_copy_ with no host sync. Only the newest ``capacity`` kept rows are written when more
    arrive. Returns the advanced pointer (a [1] int64 tensor).
    """
    rank = keep.long().cumsum(0) - 1
    written = keep.long().sum()
    keep = keep & (rank >= written - capacity)
    slot = torch.where(keep, (pointer + rank) % capacity, capacity)
    storage.index_copy_(0, slot, values.to(storage.dtype))
    return (pointer + written) % capacity


class RegionMemoryBank(nn.Module):
    """FIFO queue of ``size`` region embeddings (per-image class means of momentum embeddings) with labels.

    Buffers (persistent): embeddings [size + 1, D] (last row is scratch), labels [size + 1] int64 (-1 = empty
    slot), pointer [1] int64.
    """

    def __init__(self, num_classes: int, dim: int, size: int = 4096):
        super().__init__()
        if size <= 0:
            raise ValueError(f"region bank size must be positive, got {size!r}")
        self.num_classes = num_classes
        self.size = size
        self.register_buffer("embeddings", torch.zeros(size + 1, dim))
        self.register_buffer("labels", torch.full((size + 1,), -1, dtype=torch.long))
        self.register_buffer("pointer", torch.zeros(1, dtype=torch.long))

    def entries(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(embeddings [size, D], labels [size] with -1 for empty slots): copies, safe to keep in a graph."""
        return self.embeddings[: self.size].clone(), self.labels[: self.size].clone()

    @torch.no_grad()
    def update(self, embeddings: torch.Tensor, labels: torch.Tensor, ignore_index: int = -1) -> None:
        """Enqueue the region means of ``embeddings`` [B, D, h, w] with ``labels`` [B, h, w] (all ranks)."""
        regions, present = region_means(embeddings, labels, self.num_classes, ignore_index)
        batch, num_classes, dim = regions.shape
        class_ids = torch.arange(num_classes, device=regions.device).expand(batch, num_classes)
        regions = all_gather_cat(regions.reshape(-1, dim))
        present = all_gather_cat(present.reshape(-1))
        class_ids = all_gather_cat(class_ids.reshape(-1))
        _ring_write_(self.embeddings, regions, present, self.pointer, self.size)
        new_pointer = _ring_write_(self.labels, class_ids, present, self.pointer, self.size)
        self.pointer.copy_(new_pointer)


class KeyQueue(nn.Module):
    """MoCo's queue of ``size`` unit keys [size, D] (random unit vectors at start), FIFO over all ranks."""

    def __init__(self, dim: int, size: int = 65536):
        super().__init__()
        if size <= 0:
            raise ValueError(f"queue size must be positive, got {size!r}")
        self.size = size
        self.register_buffer("keys", F.normalize(torch.randn(size + 1, dim), dim=1))
        self.register_buffer("pointer", torch.zeros(1, dtype=torch.long))

    def entries(self) -> torch.Tensor:
        """[size, D] keys: a copy, safe to keep in a graph across the in-place enqueue."""
        return self.keys[: self.size].clone()

    @torch.no_grad()
    def update(self, keys: torch.Tensor) -> None:
        """keys: [B, D] this rank's keys; all ranks' keys are enqueued in rank order."""
        keys = all_gather_cat(keys)
        keep = torch.ones(keys.shape[0], dtype=torch.bool, device=keys.device)
        self.pointer.copy_(_ring_write_(self.keys, keys, keep, self.pointer, self.size))
