"""The learning-dynamics probe of a pretraining run: a fixed batch of pretraining crops scored every K steps.

    probe = LearningProbe(method, images, labels, chunk=cfg.train.batch_size)
    metrics = probe(step)     # {"val_backbone_probe": ..., "prototype_cos_mean": ..., ...}, Python floats

The crops are drawn once (fixed seed, no colour jitter) and never trained on as such. The even-numbered crops
fit the class centroids and the linear probe, the odd-numbered ones are scored (on the classes the fit crops
hold), so the probe measures how well pixel features separate classes on images they were not fitted on.
Every rank calls it at the same step: under SyncBN
the forward pass is a collective. Batch-norm layers run on the probe batch's own statistics in chunks of the
training batch size, as in training, and their running statistics are restored afterwards, so probing changes
nothing in the run.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from mdp_hub.heads import BatchWhitening2d
from training.mdp import dynamics
from training.mdp.losses import centred_prototype_logits
from training.mdp.mixing import resize_labels

PROBE_SEED = 20210608  # the crops of the probe batch depend only on this, the data and the crop settings


@contextlib.contextmanager
def batchnorm_stats_preserved(module: nn.Module) -> Iterator[None]:
    """Run ``module`` in train mode inside the block; its BN (and whitening) running statistics are put back."""
    norms = [m for m in module.modules() if isinstance(m, (nn.modules.batchnorm._BatchNorm, BatchWhitening2d))]
    saved = [{k: v.clone() for k, v in m.state_dict().items()} for m in norms]
    was_training = module.training
    module.train(True)
    try:
        yield
    finally:
        module.train(was_training)
        for norm, state in zip(norms, saved):
            norm.load_state_dict(state)


class LearningProbe:
    """Scores backbone features, pixel embeddings and prototypes of ``method`` on a fixed labelled batch.

    images: [N, 3, H, W] normalised crops; labels: [N, H, W] global ids (-1 ignore); N >= 2.
    """

    def __init__(
        self,
        method: nn.Module,
        images: torch.Tensor,
        labels: torch.Tensor,
        chunk: int = 8,
        max_pixels: int = 4096,
        dataset_classes: dict[str, torch.Tensor] | None = None,
    ):
        if images.shape[0] < 2:
            raise ValueError(f"the probe needs at least 2 images (half fit, half score), got {images.shape[0]}")
        self.method = method
        self.images, self.labels = images, labels
        self.chunk = max(1, chunk)
        self.max_pixels = max_pixels
        self.dataset_classes = dataset_classes or {}  # dataset name -> [K] global ids, for the regime measures
        self._previous: tuple[int, torch.Tensor] | None = None

    @torch.no_grad()
    def features(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(backbone map [N, F, h, w], unit pixel embeddings [N, D, h, w] or None without a dense head)."""
        encoder = self.method.encoder
        device = next(encoder.parameters()).device
        backbone_maps, embedding_maps = [], []
        with batchnorm_stats_preserved(encoder):
            for start in range(0, self.images.shape[0], self.chunk):
                features = encoder.backbone.forward_features(self.images[start : start + self.chunk].to(device))
                backbone_maps.append(features.float())
                head = encoder.head
                if head is not None and getattr(self.method, "head_type", None) == "dense":
                    embedding_maps.append(F.normalize(head(features).float(), dim=1))
        embeddings = torch.cat(embedding_maps) if embedding_maps else None
        return torch.cat(backbone_maps), embeddings

    def _split(self, maps: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Fit and score pixels with labels, at most ``max_pixels`` of each (a fixed subset)."""
        labels = resize_labels(self.labels.to(maps.device), tuple(maps.shape[-2:]))
        halves = []
        for part in (slice(0, None, 2), slice(1, None, 2)):
            pixels, part_labels = dynamics.pixels_and_labels(maps[part], labels[part])
            if pixels.shape[0] > self.max_pixels:
                keep = torch.randperm(pixels.shape[0], generator=torch.Generator().manual_seed(0))
                keep = keep[: self.max_pixels].to(pixels.device)
                pixels, part_labels = pixels[keep], part_labels[keep]
            halves += [pixels, part_labels]
        return tuple(halves)

    def _separability(self, prefix: str, maps: torch.Tensor) -> dict[str, float]:
        fit_pixels, fit_labels, test_pixels, test_labels = self._split(maps)
        return {
            f"{prefix}_ncc": dynamics.nearest_centroid_accuracy(fit_pixels, fit_labels, test_pixels, test_labels),
            f"{prefix}_probe": dynamics.ridge_probe_accuracy(fit_pixels, fit_labels, test_pixels, test_labels),
        }

    def _embedding_metrics(self, embeddings: torch.Tensor) -> dict[str, float]:
        labels = resize_labels(self.labels.to(embeddings.device), tuple(embeddings.shape[-2:]))
        pixels, pixel_labels = dynamics.pixels_and_labels(embeddings, labels)
        alignment, uniformity = dynamics.alignment_uniformity(
            pixels, pixel_labels, generator=torch.Generator().manual_seed(0)
        )
        metrics = {
            "val_embed_alignment": alignment,
            "val_embed_uniformity": uniformity,
            "val_embed_rank": dynamics.effective_rank(pixels),
            "val_embed_image_share": dynamics.image_level_share(embeddings, labels),
            **self._separability("val_embed", embeddings),
        }
        memory = getattr(self.method, "memory", None)
        if memory is not None and hasattr(memory, "prototypes"):
            metrics.update(self._prototype_metrics(memory, pixels, pixel_labels))
        return metrics

    def _prototype_metrics(self, memory: nn.Module, pixels: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        seen = memory.seen
        prototypes = memory.prototypes.detach().float()
        mean_cos, max_cos = dynamics.off_diagonal_cosine(prototypes, seen)
        offsets = self.method.class_offsets() if hasattr(self.method, "class_offsets") else None
        if offsets is None:
            scores = pixels @ F.normalize(prototypes, dim=1).t()
        else:  # the logits the loss uses (dataset centring), at temperature 1
            scores = centred_prototype_logits(pixels, F.normalize(prototypes, dim=1), offsets.float(), 1.0)
        scores = scores.masked_fill(~seen[None, :], float("-inf"))
        scored = seen[labels]
        correct = (scores.argmax(1) == labels)[scored]
        accuracy = float(correct.float().mean()) if correct.numel() else float("nan")
        metrics = {"prototype_cos_mean": mean_cos, "prototype_cos_max": max_cos, "val_prototype_accuracy": accuracy}
        if hasattr(memory, "anchor_share") and self.dataset_classes:
            blocks = {name: ids.to(seen.device) for name, ids in self.dataset_classes.items()}
            anchors = memory.anchor_vectors().to(prototypes.device)
            metrics.update(dynamics.prototype_regime(prototypes, anchors, memory.anchor_share, seen, blocks))
        return metrics

    def drift(self, step: int) -> float:
        """Mean per-step (1 - cosine) of the seen prototypes since the previous call (NaN on the first)."""
        memory = getattr(self.method, "memory", None)
        if memory is None or not hasattr(memory, "prototypes"):
            return float("nan")
        current = memory.prototypes.detach().float().clone()
        previous, self._previous = self._previous, (step, current)
        if previous is None:
            return float("nan")
        return dynamics.prototype_drift(previous[1], current, memory.seen, step - previous[0])

    def __call__(self, step: int) -> dict[str, float]:
        backbone, embeddings = self.features()
        metrics = self._separability("val_backbone", backbone)
        if embeddings is not None:
            metrics.update(self._embedding_metrics(embeddings))
        drift = self.drift(step)
        if drift == drift:  # not NaN
            metrics["prototype_drift"] = drift
        return metrics
