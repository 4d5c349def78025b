"""Segment images with an MDP backbone before any fine-tuning: nearest class prototype of every pixel.

MDP learns one prototype per class over the union of its pretraining label spaces (``"<dataset>/<class>"``,
342 classes for VOC + ADE20K + COCO-Stuff). Backbone + dense projection head + prototypes therefore already
form a segmenter::

    from mdp_hub import PrototypeSegmenter
    segmenter = PrototypeSegmenter.from_pretrained("exports/mdp_resnet50.voc_ade20k_coco_200ep")
    result = segmenter.segment("street.jpg", restrict_to="voc")     # labels [H, W] local VOC ids
    result.class_names[result.labels[100, 200]]                    # e.g. "car"

The source is an export folder, a Hub repo (``ORG/NAME``, or ``mdp_resnet50[.tag]``), or a pretraining
checkpoint. The projection head is rebuilt from the shapes of its tensors here, so nothing of the
``training`` package is needed. Preprocessing uses the mean/std the weights were trained with.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
import torch.nn.functional as F
from huggingface_hub import hf_hub_download
from PIL import Image, UnidentifiedImageError
from torch import nn
from torchvision.transforms import v2

from .cache import require_fetchable, resolve_repo_id
from .checkpoint_io import (
    is_training_checkpoint,
    load_file,
    select_backbone,
    split_prefix,
    unwrap_state_dict,
    verify_state_dict,
)
from .errors import CheckpointError, PrototypesNotFoundError, UserError
from .heads import load_dense_projection_head
from .integrity import WEIGHTS_FILENAME, verify_checksum
from .label_space import dataset_class_ids
from .prototypes import (
    CLASS_OFFSETS,
    CONFIG_FILENAME,
    HEAD_PREFIX,
    PROTOTYPES_KEY,
    centred_prototype_logits,
    extract_prototypes,
    load_prototypes,
)

# The method's defaults (training/mdp): used only when the source does not record its own values.
DEFAULT_TAU = 0.07
DEFAULT_OUTPUT_STRIDE = 8
# Bounds of predict(): larger inputs are downscaled to this many pixels for the network (its activations grow with
# the input), and the upsampled logits are held this many values at a time (all K x H x W of 342 classes on a
# 6000 x 4000 photo would be 32 GB).
MAX_NETWORK_PIXELS = 2048 * 2048
LOGITS_BUDGET = 1 << 26
_DEFAULT = object()  # predict()/segment(): restrict to the segmenter's own default


class NotAnImageError(UserError, ValueError):
    """A file given as an image cannot be decoded as one."""


@dataclass
class PrototypeSegmentation:
    """What ``PrototypeSegmenter.predict`` / ``segment`` return.

    labels: int64 ``[B, H, W]`` (``[H, W]`` from ``segment``); global ids when ``dataset`` is None, else the
        dataset's local ids ``0..K_d-1``; -1 where no class has a prototype.
    scores: float32, same shape: softmax probability of the chosen class over the candidate classes at the
        training temperature (the confidence the pseudo-labeller thresholds).
    class_names: name of every id in ``labels`` (``"<dataset>/<class>"`` globally, the bare class locally).

    network_size: the ``(H, W)`` the network saw: the input size, or smaller when a large input was downscaled
        to ``max_network_pixels`` (labels and scores are still at the input size).
    """

    labels: torch.Tensor
    scores: torch.Tensor
    class_names: list[str]
    dataset: str | None
    network_size: tuple[int, int] | None = None

    @property
    def downscaled(self) -> bool:
        return self.network_size is not None and tuple(self.network_size) != tuple(self.labels.shape[-2:])

    @property
    def id_space(self) -> str:
        return "global" if self.dataset is None else "local"


def class_colour(name: str) -> tuple[int, int, int]:
    """A stable RGB colour per class name (the same in every label space, restricted or not)."""
    digest = hashlib.sha1(name.encode("utf-8")).digest()
    return tuple(48 + value * 207 // 255 for value in digest[:3])


def open_image(path: str | os.PathLike, *, decode: bool = True) -> Image.Image | None:
    """Decode an image file to RGB; a missing file or one that is not an image raises naming it.

    ``decode=False`` only checks the file's header and structure (cheap) and returns None.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such image file")
    try:
        with Image.open(path) as image:
            if not decode:
                image.verify()
                return None
            return _to_rgb(image)  # decodes fully, so truncated files fail here
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise NotAnImageError(f"{path}: not a readable image ({err})") from None


def _to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB of any PIL mode; 16- and 32-bit integer greyscale is scaled by its bit depth, not clipped (PIL's
    own conversion would turn most of a 16-bit photo white)."""
    if image.mode.startswith("I;16") or image.mode == "I":
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
        grey = (values.clip(0, top) * (255.0 / top)).round().astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    return image.convert("RGB")


class PrototypeSegmenter(nn.Module):
    """Backbone + projection head + class prototypes -> per-pixel class over the pretraining label space.

    Args:
        backbone: headless timm model; ``forward_features`` gives ``[B, F, h, w]``.
        head: ``[B, F, h, w] -> [B, D, h, w]`` projection head.
        prototypes: ``[C, D]``; all-zero rows (classes never seen in pretraining) are never predicted.
        label_space: ``LabelSpace.to_dict()`` of the pretraining run (``C`` global classes).
        mean, std: per-channel normalisation of ``[0, 1]`` RGB the weights were trained with.
        tau: temperature of the scores (the pretraining temperature).
        restrict_to: default dataset to restrict predictions to (None = all classes).
        max_network_pixels: ``predict`` downscales larger inputs to this many pixels before the network (and
            says so in ``network_size``), so memory stays bounded on any photo (default ``MAX_NETWORK_PIXELS``).
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        prototypes: torch.Tensor,
        label_space: Mapping[str, Any],
        *,
        mean: Sequence[float],
        std: Sequence[float],
        tau: float = DEFAULT_TAU,
        restrict_to: str | None = None,
        max_network_pixels: int | None = None,
        class_offsets: torch.Tensor | None = None,
    ):
        super().__init__()
        max_network_pixels = MAX_NETWORK_PIXELS if max_network_pixels is None else max_network_pixels
        if max_network_pixels < 1:
            raise ValueError(f"max_network_pixels must be positive, got {max_network_pixels!r}")
        self.max_network_pixels = int(max_network_pixels)
        self.class_names = list(label_space["class_names"])
        if prototypes.ndim != 2 or prototypes.shape[0] != len(self.class_names):
            raise ValueError(f"prototypes must be [C={len(self.class_names)}, D], got {list(prototypes.shape)}")
        if tau <= 0:
            raise ValueError(f"tau must be positive, got {tau!r}")
        self.backbone, self.head = backbone, head
        self.label_space = dict(label_space)
        self.dataset_names = [d["name"] for d in label_space["datasets"]]
        self.register_buffer("prototypes", F.normalize(prototypes.float(), dim=1))
        self.register_buffer("available", prototypes.norm(dim=1) > 0)
        if class_offsets is not None and tuple(class_offsets.shape) != tuple(prototypes.shape):
            raise ValueError(f"class_offsets must be [C, D] like the prototypes, got {list(class_offsets.shape)}")
        # dataset centring: each class's dataset mean embedding, taken out of a pixel before comparing
        self.register_buffer("class_offsets", None if class_offsets is None else class_offsets.float())
        if not bool(self.available.any()):
            raise ValueError("every prototype is zero: the checkpoint was saved before any class was seen")
        self.tau = float(tau)
        self.mean, self.std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
        self.transform = v2.Compose(
            [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(self.mean, self.std)]
        )
        self.restrict_to = None if restrict_to is None else self.resolve_dataset(restrict_to)

    # ---- loading ------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        source: str | os.PathLike,
        *,
        restrict_to: str | None = None,
        output_stride: int | None = None,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
    ) -> "PrototypeSegmenter":
        """Load from an export folder, a pretraining checkpoint file, or a Hub repo (``ORG/NAME`` or
        ``mdp_resnet50[.tag]``), in eval mode.

        ``output_stride``: dilation of the backbone (default: the stride it was pretrained at). An export or
        checkpoint without prototypes raises ``PrototypesNotFoundError``.
        """
        path = Path(source).expanduser()
        if path.is_dir():
            model = cls._from_export_folder(path, restrict_to, output_stride)
        elif path.is_file():
            model = cls._from_checkpoint(path, restrict_to, output_stride)
        elif _looks_like_path(str(source)):
            raise FileNotFoundError(f"{source}: no such export folder or checkpoint file")
        else:
            model = cls._from_hub(str(source), restrict_to, output_stride, revision, cache_dir)
        return model.eval()

    @classmethod
    def _from_export_folder(cls, folder: Path, restrict_to, output_stride) -> "PrototypeSegmenter":
        head_state, prototypes, _, label_space, class_offsets = load_prototypes(folder, with_offsets=True)
        config = json.loads((folder / CONFIG_FILENAME).read_text())
        mdp = config.get("mdp") or {}
        cfg = config.get("pretrained_cfg") or {}
        if "architecture" not in config or "mean" not in cfg or "std" not in cfg:
            raise CheckpointError(f"{folder / CONFIG_FILENAME}: needs 'architecture' and pretrained_cfg mean/std")
        method = (mdp.get("training_config") or {}).get("method") or {}
        verify_checksum(folder / WEIGHTS_FILENAME)  # timm's local-dir: route does not check it
        backbone = timm.create_model(
            f"local-dir:{folder.resolve()}",
            pretrained=True,
            num_classes=0,
            global_pool="",
            output_stride=output_stride or _stride_of(method),
        )
        head = load_dense_projection_head(head_state, backbone.num_features, source=str(folder))
        return cls(
            backbone,
            head,
            prototypes,
            label_space,
            mean=cfg["mean"],
            std=cfg["std"],
            tau=_tau_of(method),
            restrict_to=restrict_to,
            class_offsets=class_offsets,
        )

    @classmethod
    def _from_checkpoint(cls, path: Path, restrict_to, output_stride) -> "PrototypeSegmenter":
        content = load_file(path)
        if not is_training_checkpoint(content):
            raise CheckpointError(
                f"{path}: not an mdp-hub training checkpoint; the prototype segmenter needs an "
                "MDP pretraining checkpoint, or an export folder made from one"
            )
        state_dict, prefix = unwrap_state_dict(content, source=path)
        tensors = extract_prototypes(state_dict, content.get("label_space"), source=path)
        if tensors is None:
            raise PrototypesNotFoundError(
                f"{path}: a {content.get('kind', 'unknown')} checkpoint without {PROTOTYPES_KEY} / {HEAD_PREFIX}* "
                "entries; only MDP pretraining checkpoints carry class prototypes"
            )
        method = (content.get("config") or {}).get("method") or {}
        backbone = timm.create_model(
            content["arch"], num_classes=0, global_pool="", output_stride=output_stride or _stride_of(method)
        )
        weights, _ = select_backbone(state_dict, prefix=prefix, source=path)
        weights = {key: value for key, value in weights.items() if not key.startswith("fc.")}
        verify_state_dict(weights, backbone, source=path)
        backbone.load_state_dict(weights, strict=True)
        head_state, _ = split_prefix(tensors, "head.")
        head = load_dense_projection_head(head_state, backbone.num_features, source=str(path))
        data_config = content.get("data_config") or {}
        if "mean" not in data_config or "std" not in data_config:
            raise CheckpointError(f"{path}: data_config has no mean/std to preprocess images with")
        return cls(
            backbone,
            head,
            tensors["prototypes"],
            content["label_space"],
            mean=data_config["mean"],
            std=data_config["std"],
            tau=_tau_of(method),
            restrict_to=restrict_to,
            class_offsets=tensors.get(CLASS_OFFSETS),
        )

    @classmethod
    def _from_hub(cls, name: str, restrict_to, output_stride, revision, cache_dir) -> "PrototypeSegmenter":
        repo = resolve_repo_id(name)
        require_fetchable(repo, cache_dir=cache_dir, revision=revision)
        load_prototypes(repo, revision=revision, cache_dir=cache_dir, with_offsets=True)  # before the large download
        weights = hf_hub_download(repo, WEIGHTS_FILENAME, revision=revision, cache_dir=cache_dir)
        return cls._from_export_folder(Path(weights).parent, restrict_to, output_stride)

    # ---- label space --------------------------------------------------------------------------------------
    def resolve_dataset(self, name: str) -> str:
        """The dataset of the label space called ``name``, or the only one whose name starts with it
        (``"voc"`` -> ``"voc_aug"``); anything else raises listing the datasets."""
        if name in self.dataset_names:
            return name
        matches = [d for d in self.dataset_names if d.startswith(name)]
        if len(matches) != 1:
            raise ValueError(
                f"restrict_to={name!r}: {'ambiguous' if matches else 'no such dataset'}; "
                f"the label space has {', '.join(self.dataset_names)}"
            )
        return matches[0]

    def candidates(self, restrict_to: str | None) -> tuple[torch.Tensor, list[str], str | None]:
        """(global ids of the candidate classes ``[K]``, their names, resolved dataset or None)."""
        if restrict_to is None:
            return torch.arange(len(self.class_names)), list(self.class_names), None
        dataset = self.resolve_dataset(restrict_to)
        entry = next(d for d in self.label_space["datasets"] if d["name"] == dataset)
        ids = torch.tensor(dataset_class_ids(self.label_space, dataset))
        if not bool(self.available[ids.to(self.available.device)].any()):
            raise ValueError(f"restrict_to={dataset!r}: none of its {len(ids)} classes has a prototype")
        return ids, list(entry["class_names"]), dataset

    # ---- inference ----------------------------------------------------------------------------------------
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Unit pixel embeddings ``[B, D, h, w]`` of normalised ``images [B, 3, H, W]``."""
        return F.normalize(self.head(self.backbone.forward_features(images)), dim=1)

    def forward(self, images: torch.Tensor, restrict_to: str | None = None) -> torch.Tensor:
        """Logits ``[B, K, H, W]`` (cosine similarity / tau, bilinearly upsampled to the input size) of the K
        candidate classes: all C classes, or the local classes of ``restrict_to`` in local id order. Classes
        without a prototype are ``-inf``. Memory grows with K x H x W (342 classes at 512 x 512: 360 MB)."""
        ids, _, _ = self.candidates(restrict_to)
        ids = ids.to(self.prototypes.device)
        embeddings = self.embed(images)
        if self.class_offsets is None:
            similarity = torch.einsum("bdhw,kd->bkhw", embeddings, self.prototypes[ids]) / self.tau
        else:
            batch, dim, height, width = embeddings.shape
            pixels = embeddings.permute(0, 2, 3, 1).reshape(-1, dim)
            flat = centred_prototype_logits(pixels, self.prototypes[ids], self.class_offsets[ids], self.tau)
            similarity = flat.reshape(batch, height, width, -1).permute(0, 3, 1, 2)
        logits = F.interpolate(similarity, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return logits.masked_fill(~self.available[ids][None, :, None, None], float("-inf"))

    @torch.inference_mode()
    def predict(self, images: torch.Tensor, restrict_to: str | None | object = _DEFAULT) -> PrototypeSegmentation:
        """Labels and scores ``[B, H, W]`` for normalised ``images [B, 3, H, W]``.

        ``restrict_to``: a dataset of the label space (local ids), None (global ids), or the segmenter's default.
        Memory is bounded for any input size: inputs over ``max_network_pixels`` are downscaled for the network
        (``network_size`` says to what), and the logits are upsampled a few classes at a time.
        """
        restrict_to = self.restrict_to if restrict_to is _DEFAULT else restrict_to
        ids, names, dataset = self.candidates(restrict_to)
        ids = ids.to(self.prototypes.device)
        network_input = self._fit_to_budget(images)
        similarity = torch.einsum("bdhw,kd->bkhw", self.embed(network_input), self.prototypes[ids]) / self.tau
        labels, scores = upsampled_best_class(similarity, self.available[ids], tuple(images.shape[-2:]))
        return PrototypeSegmentation(labels, scores, names, dataset, tuple(network_input.shape[-2:]))

    def _fit_to_budget(self, images: torch.Tensor) -> torch.Tensor:
        return fit_to_pixels(images, self.max_network_pixels)

    def preprocess(self, image: Image.Image | torch.Tensor) -> torch.Tensor:
        """PIL RGB image or uint8 ``[3, H, W]`` -> normalised float ``[3, H, W]``."""
        return self.transform(image)

    def segment(
        self, image: Image.Image | torch.Tensor | str | os.PathLike, restrict_to: str | None | object = _DEFAULT
    ) -> PrototypeSegmentation:
        """Segment one image (PIL, uint8 ``[3, H, W]`` tensor, or file path): labels and scores ``[H, W]``."""
        if isinstance(image, (str, os.PathLike)):
            image = open_image(image)
        batch = self.preprocess(image)[None].to(self.prototypes.device)
        result = self.predict(batch, restrict_to=restrict_to)
        return PrototypeSegmentation(
            result.labels[0], result.scores[0], result.class_names, result.dataset, result.network_size
        )


def fit_to_pixels(images: torch.Tensor, max_pixels: int) -> torch.Tensor:
    """``images [B, 3, H, W]``, bilinearly downscaled (antialiased, aspect kept) to at most ``max_pixels``."""
    height, width = images.shape[-2:]
    if height * width <= max_pixels:
        return images
    scale = (max_pixels / (height * width)) ** 0.5
    size = (max(1, int(height * scale)), max(1, int(width * scale)))
    return F.interpolate(images, size=size, mode="bilinear", antialias=True, align_corners=False)


def upsampled_best_class(
    similarity: torch.Tensor, available: torch.Tensor, size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels and softmax scores ``[B, H, W]`` of logits ``similarity [B, K, h, w]`` bilinearly upsampled to
    ``size``; classes where ``available [K]`` is False are never chosen, and -1 marks pixels with no class.

    The same as a softmax over the full ``[B, K, H, W]`` logits, computed ``LOGITS_BUDGET`` values at a time: a
    running maximum, its class and a running log-sum-exp over chunks of classes.
    """
    batch, classes = similarity.shape[:2]
    chunk = max(1, LOGITS_BUDGET // (batch * size[0] * size[1]))
    best = similarity.new_full((batch, *size), float("-inf"))
    labels = torch.zeros((batch, *size), dtype=torch.long, device=similarity.device)
    log_total = best.clone()
    for start in range(0, classes, chunk):
        logits = F.interpolate(similarity[:, start : start + chunk], size=size, mode="bilinear", align_corners=False)
        logits = logits.masked_fill(~available[start : start + chunk][None, :, None, None], float("-inf"))
        chunk_best, chunk_labels = logits.max(dim=1)
        better = chunk_best > best  # strict: ties keep the lower id, as a single argmax does
        labels = torch.where(better, chunk_labels + start, labels)
        best = torch.maximum(best, chunk_best)
        log_total = torch.logaddexp(log_total, torch.logsumexp(logits, dim=1))
    scores = torch.nan_to_num(torch.exp(best - log_total))
    return torch.where(scores > 0, labels, -1), scores


def _stride_of(method: Mapping[str, Any]) -> int:
    return int(method.get("output_stride") or DEFAULT_OUTPUT_STRIDE)


def _tau_of(method: Mapping[str, Any]) -> float:
    return float((method.get("options") or {}).get("tau") or DEFAULT_TAU)


def _looks_like_path(source: str) -> bool:
    """Hub names are ``ORG/NAME`` or ``mdp_resnetXX[.tag]``; anything else is meant as a local path."""
    return (
        source.startswith((".", "/", "~"))
        or source.count("/") > 1
        or os.sep != "/"
        and os.sep in source
        or Path(source).suffix in (".pth", ".pt", ".ckpt", ".safetensors", ".bin")
    )
