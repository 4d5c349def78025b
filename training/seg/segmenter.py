"""A fine-tuned checkpoint of ``training.finetune`` as a segmenter with the interface of
:class:`mdp_hub.PrototypeSegmenter` (``segment``, ``class_names``, ``dataset_names``), for ``mdp-hub demo`` and
``mdp-hub segment``: whole-image inference, softmax scores, and the same bounded memory on large photos."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from PIL import Image
from torch import nn
from torchvision.transforms import v2

from mdp_hub.segmenter import (
    MAX_NETWORK_PIXELS,
    PrototypeSegmentation,
    fit_to_pixels,
    open_image,
    upsampled_best_class,
)
from training.seg.evaluation import load_finetuned_model


class FinetunedSegmenter(nn.Module):
    """Backbone + decode head of a fine-tuning run; predictions over its dataset's classes (local ids)."""

    def __init__(self, checkpoint_path: str | os.PathLike, max_network_pixels: int = MAX_NETWORK_PIXELS):
        super().__init__()
        model, config, checkpoint = load_finetuned_model(Path(checkpoint_path))
        self.model = model.eval()
        dataset = checkpoint["label_space"]["datasets"][0]
        self.dataset_names = [dataset["name"]]
        self.class_names = list(dataset["class_names"])
        self.restrict_to = dataset["name"]
        self.max_network_pixels = max_network_pixels
        self.transform = v2.Compose(
            [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(config.data.mean, config.data.std)]
        )

    def resolve_dataset(self, name: str | None) -> str:
        return self.restrict_to

    @torch.inference_mode()
    def segment(self, image: Image.Image | str | os.PathLike, restrict_to: str | None = None) -> PrototypeSegmentation:
        """Labels (local ids) and softmax scores ``[H, W]`` of one image; ``restrict_to`` is ignored (one dataset)."""
        if isinstance(image, (str, os.PathLike)):
            image = open_image(image)
        batch = self.transform(image)[None]
        network_input = fit_to_pixels(batch, self.max_network_pixels)
        _, features = self.model.backbone(network_input)
        logits = self.model.decode_head(features)
        available = torch.ones(logits.shape[1], dtype=torch.bool)
        labels, scores = upsampled_best_class(logits, available, tuple(batch.shape[-2:]))
        return PrototypeSegmentation(
            labels[0], scores[0], self.class_names, self.restrict_to, tuple(network_input.shape[-2:])
        )
