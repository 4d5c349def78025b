"""MDP and its baselines behind one interface (docs/ARCHITECTURE.md, "Trainer <-> method interface").

    method = build_method("mdp", label_space=ls, arch="resnet50", output_stride=8, embed_dim=128, **options)
    out = method(batch)              # {"loss": scalar, per-term losses, cheap stats}: tensors, no host sync
    out["loss"].backward(); optimizer.step()
    method.momentum_update(m)        # EMA after the optimizer step (no-op without a momentum encoder)

Batch keys: "image" [B, 3, H, W] (query view), "image_k" [B, 3, H, W] (clean momentum view, same geometry),
"mask" [B, H, W] int64 global ids (-1 = ignore), "dataset_id" [B], "index" [B]; optional "unlabeled" [B] bool.

Unlabeled images (MDP only): the data layer yields them with a mask of -1 and ``unlabeled=True``; they can share
a batch with labelled images. Inside ``forward`` the momentum embeddings of their clean view are labelled by
the nearest prototype (``pseudo_label_threshold`` on the softmax confidence), and from then on they are
ordinary pixels for mixing and the losses. Prototypes are updated from ground-truth labels only, so
pseudo-labels cannot reinforce themselves through the memory.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import nn

from training.data.label_space import IGNORE_INDEX
from training.engine.distributed import all_reduce_sum_
from training.mdp.losses import (
    centred_prototype_logits,
    csc1_exclusion,
    moco_infonce,
    pixel_cross_entropy,
    pixel_to_pixel_loss,
    pixel_to_prototype_nce,
    pixel_to_region_loss,
    prototype_log_probs,
    prototype_logits,
    sparse_coding_loss,
    within_image_region_nce,
)
from training.mdp.memory import ClassPrototypeMemory, KeyQueue, RegionMemoryBank, region_means
from training.mdp.mixing import NO_MIX, MixedBatch, cross_dataset_mix, resize_labels, unmixed_batch
from training.mdp.model import Encoder, build_encoder, create_momentum_copy, ema_update_
from training.mdp.pseudo_label import pseudo_labels_from_embeddings


def _flatten_pixels(embeddings: torch.Tensor) -> torch.Tensor:
    """[B, D, h, w] -> [B * h * w, D]."""
    return embeddings.permute(0, 2, 3, 1).reshape(-1, embeddings.shape[1])


def _random_subset(num_items: int, max_items: int | None, batch: int, device: torch.device) -> torch.Tensor | None:
    """[batch, max_items] random indices into ``num_items`` (without replacement), None if all are kept."""
    if max_items is None or num_items <= max_items:
        return None
    return torch.rand(batch, num_items, device=device).argsort(dim=1)[:, :max_items]


class PretrainMethod(nn.Module):
    """Common part: the online ``encoder``, an optional ``momentum_encoder``, batch checks and the EMA.

    Subclasses set ``head_type`` ("dense", "pooled" or None, see ``build_encoder``) and implement ``forward``.
    """

    head_type: str | None = "dense"
    default_head_hidden_dim: int | None = 512
    required_keys: tuple[str, ...] = ("image", "mask")

    def __init__(self, label_space, encoder: Encoder, with_momentum_encoder: bool):
        super().__init__()
        num_classes = getattr(label_space, "num_classes", None)
        if not isinstance(num_classes, int) or num_classes <= 0:
            raise ValueError(f"label_space.num_classes must be a positive int, got {num_classes!r}")
        self.num_classes = num_classes
        self.encoder = encoder
        self.momentum_encoder = create_momentum_copy(encoder) if with_momentum_encoder else None
        self._labels_checked = False

    @torch.no_grad()
    def momentum_update(self, momentum: float) -> None:
        """EMA of the momentum encoder's parameters, BN buffers copied (training/mdp/model.py)."""
        if self.momentum_encoder is not None:
            ema_update_(self.encoder, self.momentum_encoder, momentum)

    def check_batch(self, batch: dict) -> None:
        """Shapes and dtypes always; label range on CPU tensors, and once (one host sync) on accelerators."""
        missing = [key for key in self.required_keys if key not in batch]
        if missing:
            raise KeyError(f"{type(self).__name__} needs batch keys {missing}; the batch has {sorted(batch)}")
        image = batch["image"]
        if image.dim() != 4 or image.shape[1] != 3 or not image.is_floating_point():
            raise ValueError(f"batch['image'] must be float [B, 3, H, W], got {image.dtype} {tuple(image.shape)}")
        if "image_k" in self.required_keys and batch["image_k"].shape != image.shape:
            raise ValueError(
                f"batch['image_k'] must have the shape of batch['image'] {tuple(image.shape)}, "
                f"got {tuple(batch['image_k'].shape)}"
            )
        if "mask" not in self.required_keys:
            return
        mask = batch["mask"]
        expected = (image.shape[0], *image.shape[2:])
        if mask.dtype != torch.long or tuple(mask.shape) != expected:
            raise ValueError(f"batch['mask'] must be int64 {expected}, got {mask.dtype} {tuple(mask.shape)}")
        # The id range needs the values on the host: checked eagerly (under torch.compile, by training.pretrain
        # before the compiled step), on the CPU every batch, on a GPU the first batch only (no sync per step).
        if not torch.compiler.is_compiling() and (mask.device.type == "cpu" or not self._labels_checked):
            low, high = (int(v) for v in torch.aminmax(mask))
            if low < IGNORE_INDEX or high >= self.num_classes:
                raise ValueError(
                    f"batch['mask'] holds ids in [{low}, {high}], but the label space has {self.num_classes} "
                    f"classes: valid ids are 0..{self.num_classes - 1} and {IGNORE_INDEX} (ignore)"
                )
            self._labels_checked = True


class MDP(PretrainMethod):
    """Pixel-to-prototype contrast + cross-dataset mixing + pixel-to-class sparse coding (docs/METHOD.md).

    Options: tau (0.07); window N of the prototype running mean (4096); prototype_anchors (True: prototypes
    start at fixed random unit vectors worth one window of regions, see ClassPrototypeMemory; False: at the
    first regions of each class); within_image_weight (0.0; the recipes ship 1.0: each pixel against its own
    image's region embeddings, see within_image_region_nce); mixing (True), p_mix (0.5),
    region_fraction (share of region vs pixel mixing, 0.5), pixel_mix ("mixup" | "classmix");
    sparse_coding ("csc2" | "csc1" | None), sc_weight (0.1), sc_topk (5), sc_temperature_ratio (code
    temperature / tau, 1.0); pseudo_label_threshold (0.5) for unlabeled images; dataset_centring (False,
    beyond the paper: each pixel is compared with a class's prototype after its dataset's running mean embedding
    is taken out, see centred_prototype_logits and docs/METHOD.md).
    """

    required_keys = ("image", "image_k", "mask", "dataset_id")

    def __init__(
        self,
        label_space,
        encoder: Encoder,
        *,
        tau: float = 0.07,
        window: int = 4096,
        prototype_anchors: bool = True,
        mixing: bool = True,
        p_mix: float = 0.5,
        region_fraction: float = 0.5,
        pixel_mix: str = "mixup",
        sparse_coding: str | None = "csc2",
        sc_weight: float = 0.1,
        sc_topk: int = 5,
        sc_temperature_ratio: float = 1.0,
        pseudo_label_threshold: float = 0.5,
        within_image_weight: float = 0.0,
        dataset_centring: bool = False,
    ):
        super().__init__(label_space, encoder, with_momentum_encoder=True)
        if sparse_coding not in ("csc2", "csc1", None):
            raise ValueError(f"sparse_coding must be 'csc2', 'csc1' or None, got {sparse_coding!r}")
        if sparse_coding is not None and not 0 < sc_topk < self.num_classes:
            raise ValueError(f"sc_topk must be in 1..{self.num_classes - 1} (classes - 1), got {sc_topk!r}")
        if pixel_mix not in ("mixup", "classmix"):
            raise ValueError(f"pixel_mix must be 'mixup' or 'classmix', got {pixel_mix!r}")
        if tau <= 0:
            raise ValueError(f"tau must be positive, got {tau!r}")
        self.tau = tau
        self.mixing = mixing
        self.p_mix = p_mix
        self.region_fraction = region_fraction
        self.pixel_mix = pixel_mix
        self.sparse_coding = sparse_coding
        self.sc_weight = sc_weight
        self.sc_topk = sc_topk
        self.sc_temperature_ratio = sc_temperature_ratio
        self.pseudo_label_threshold = pseudo_label_threshold
        if within_image_weight < 0:
            raise ValueError(f"within_image_weight must be >= 0, got {within_image_weight!r}")
        self.within_image_weight = within_image_weight
        embed_dim = encoder.head.out.out_channels
        self.memory = ClassPrototypeMemory(self.num_classes, embed_dim, window, anchors=prototype_anchors)
        self.dataset_centring = dataset_centring
        if dataset_centring:
            self._init_dataset_means(label_space, embed_dim)

    def _init_dataset_means(self, label_space, embed_dim: int) -> None:
        """Buffers of ``dataset_centring``: each dataset's running mean key embedding, and each class's dataset
        (the first that holds it when a unify map merges classes). Unlabelled items (dataset id = number of
        datasets) get a slot of their own, which no class uses."""
        names = list(label_space.dataset_names)
        class_dataset = torch.zeros(self.num_classes, dtype=torch.int64)
        for index in reversed(range(len(names))):
            class_dataset[label_space.dataset_class_ids(index)] = index
        self.register_buffer("class_dataset", class_dataset)
        self.register_buffer("dataset_means", torch.zeros(len(names) + 1, embed_dim))
        self.register_buffer("dataset_means_initialised", torch.zeros(len(names) + 1, dtype=torch.bool))

    def class_offsets(self) -> torch.Tensor | None:
        """[C, D] the running mean embedding of each class's dataset (``dataset_centring``), else None."""
        return self.dataset_means[self.class_dataset] if self.dataset_centring else None

    @torch.no_grad()
    def update_dataset_means(self, keys: torch.Tensor, dataset_id: torch.Tensor, momentum: float = 0.1) -> None:
        """EMA of each dataset's mean key embedding (keys [B, D, h, w], dataset_id [B]); a dataset's first batch
        sets it. The batch means are over every rank's images (the memory's prototypes are too), so all ranks
        keep the same means. Datasets absent from the global batch keep theirs."""
        onehot = F.one_hot(dataset_id.long(), self.dataset_means.shape[0]).float()  # [B, K]
        packed = all_reduce_sum_(torch.cat([onehot.t() @ keys.float().mean((2, 3)), onehot.sum(0)[:, None]], dim=1))
        sums, counts = packed[:, :-1], packed[:, -1]
        batch_means = sums / counts.clamp(min=1.0)[:, None]
        present = (counts > 0)[:, None]
        blended = torch.where(
            self.dataset_means_initialised[:, None], self.dataset_means.lerp(batch_means, momentum), batch_means
        )
        self.dataset_means.copy_(torch.where(present, blended, self.dataset_means))
        self.dataset_means_initialised |= present[:, 0]

    def _labels_with_pseudo_labels(self, batch: dict, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(training labels [B, H, W] with pseudo-labels for unlabeled items, ground-truth-only labels)."""
        labels = batch["mask"]
        if "unlabeled" not in batch:
            return labels, labels
        unlabeled = batch["unlabeled"].to(device=labels.device, dtype=torch.bool).reshape(-1, 1, 1)
        pseudo, _ = pseudo_labels_from_embeddings(
            keys, self.memory.prototypes, self.memory.seen, self.pseudo_label_threshold, self.tau, self.class_offsets()
        )
        pseudo = resize_labels(pseudo, tuple(labels.shape[-2:]))
        return torch.where(unlabeled, pseudo, labels), labels.masked_fill(unlabeled, IGNORE_INDEX)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        self.check_batch(batch)
        with torch.no_grad():
            keys = self.momentum_encoder(batch["image_k"])
        view = self.query_view(batch, keys)
        out = self.objective(self.encoder(view.image), keys, view)
        if self.dataset_centring:
            self.update_dataset_means(keys, batch["dataset_id"])
        return out

    def query_view(self, batch: dict, keys: torch.Tensor) -> MixedBatch:
        """The query encoder's input: pseudo-labels for unlabeled items, then cross-dataset mixing.

        ``labels_a`` (and ``labels_b`` when mixed) of the result are the training labels, ``ground_truth``
        [B, H, W] the labels that may update prototypes (pseudo-labelled items are ignore there).
        """
        labels, ground_truth = self._labels_with_pseudo_labels(batch, keys)
        if self.mixing:
            view = cross_dataset_mix(
                batch["image"],
                labels,
                batch["dataset_id"],
                self.num_classes,
                self.p_mix,
                self.pixel_mix,
                self.region_fraction,
                IGNORE_INDEX,
            )
        else:
            view = unmixed_batch(batch["image"], labels)
        view.ground_truth = ground_truth
        return view

    def objective(self, query: torch.Tensor, keys: torch.Tensor, view: MixedBatch) -> dict[str, torch.Tensor]:
        """Losses of the query embeddings [B, D, h, w], then the prototype update from the keys [B, D, h, w]."""
        size = tuple(query.shape[-2:])
        labels_a = resize_labels(view.labels_a, size).reshape(-1)
        labels_b = partner_weight = None
        out = {}
        if self.mixing:
            labels_b = resize_labels(view.labels_b, size).reshape(-1)
            partner_weight = resize_labels(view.partner_weight, size).reshape(-1)
            out["mixed_fraction"] = (view.mode != NO_MIX).float().mean()
        hard_labels = labels_a if labels_b is None else torch.where(partner_weight > 0.5, labels_b, labels_a)
        class_mask, seen = self.memory.initialised, self.memory.seen
        offsets = self.class_offsets()
        if offsets is None:
            logits = prototype_logits(_flatten_pixels(query), self.memory.normalised(), self.tau)
        else:
            logits = centred_prototype_logits(_flatten_pixels(query), self.memory.normalised(), offsets, self.tau)

        excluded = None
        if self.sparse_coding == "csc1":
            kept = [side for side in (labels_a, labels_b) if side is not None]
            excluded = csc1_exclusion(logits, hard_labels, class_mask, self.sc_topk, kept)
        log_probs = prototype_log_probs(logits, class_mask, excluded)
        loss_proto = pixel_to_prototype_nce(log_probs, labels_a, class_mask, labels_b, partner_weight, IGNORE_INDEX)
        loss = loss_proto
        out["loss_proto"] = loss_proto
        if self.sparse_coding == "csc2":
            # Codes over classes with real regions: an anchor is a random direction, not a class to resemble.
            loss_sc = sparse_coding_loss(
                log_probs, hard_labels, seen, self.sc_topk, self.sc_temperature_ratio, IGNORE_INDEX
            )
            loss = loss + self.sc_weight * loss_sc
            out["loss_sc"] = loss_sc

        ground_truth = resize_labels(view.ground_truth, size)
        regions, present = region_means(keys, ground_truth, self.num_classes, IGNORE_INDEX, class_offsets=offsets)
        if self.within_image_weight > 0:
            loss_image = self.within_image_loss(query, labels_a, partner_weight, regions, present, offsets)
            loss = loss + self.within_image_weight * loss_image
            out["loss_image"] = loss_image

        with torch.no_grad():
            labelled = (hard_labels != IGNORE_INDEX) & class_mask[hard_labels.clamp(min=0)]
            correct = (log_probs.argmax(dim=1) == hard_labels) & labelled
            out["prototype_accuracy"] = correct.float().sum() / labelled.float().sum().clamp(min=1.0)
            out["prototypes_seen"] = seen.float().mean()
        # The memory changes only after the loss is built, from clean momentum embeddings.
        self.memory.update_from_regions(regions, present)
        out["loss"] = loss
        return out

    def within_image_loss(
        self,
        query: torch.Tensor,
        labels_a: torch.Tensor,
        partner_weight: torch.Tensor | None,
        regions: torch.Tensor,
        present: torch.Tensor,
        class_offsets: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Each own-image pixel of ``query`` [B, D, h, w] against its image's region embeddings [B, C, D].

        labels_a, partner_weight: [B*h*w]; pixels that carry any share of a mixing partner are skipped, since
        their image's regions do not describe them. With ``class_offsets`` [C, D] (dataset centring) a pixel is
        centred by its label's dataset mean, which is its image's, as the regions are.
        """
        batch, dim = query.shape[:2]
        own_labels = labels_a if partner_weight is None else labels_a.masked_fill(partner_weight > 0, IGNORE_INDEX)
        pixels = query.flatten(2).transpose(1, 2)
        if class_offsets is not None:
            offsets = class_offsets[own_labels.clamp(min=0)].reshape(batch, -1, dim)
            pixels = F.normalize(pixels - offsets.to(pixels.dtype), dim=2)
        return within_image_region_nce(pixels, own_labels.reshape(batch, -1), regions, present, self.tau, IGNORE_INDEX)


class PixelToPixel(PretrainMethod):
    """Baseline: within-image supervised pixel contrast (the paper's Eq. 2), no memory, no momentum encoder.

    ``max_pixels`` random pixels per image are anchors (the all-pairs matrix is [B, P, P]); None = all.
    """

    def __init__(self, label_space, encoder: Encoder, *, tau: float = 0.07, max_pixels: int | None = 1024):
        super().__init__(label_space, encoder, with_momentum_encoder=False)
        self.tau = tau
        self.max_pixels = max_pixels

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        self.check_batch(batch)
        embeddings = self.encoder(batch["image"])
        batch_size, dim = embeddings.shape[:2]
        labels = resize_labels(batch["mask"], tuple(embeddings.shape[-2:])).reshape(batch_size, -1)
        pixels = embeddings.flatten(2).transpose(1, 2)
        subset = _random_subset(labels.shape[1], self.max_pixels, batch_size, labels.device)
        if subset is not None:
            pixels = pixels.gather(1, subset[..., None].expand(-1, -1, dim))
            labels = labels.gather(1, subset)
        loss = pixel_to_pixel_loss(pixels, labels, self.tau, IGNORE_INDEX)
        return {"loss": loss, "loss_pix2pix": loss}


class RegionBank(PretrainMethod):
    """Baseline "Region" memory: pixel-to-region contrast against a FIFO of momentum region embeddings.

    ``max_anchors`` random pixels of the batch are anchors (the matrix is [anchors, bank_size]); None = all.
    """

    required_keys = ("image", "image_k", "mask")

    def __init__(
        self,
        label_space,
        encoder: Encoder,
        *,
        tau: float = 0.07,
        bank_size: int = 4096,
        max_anchors: int | None = 8192,
    ):
        super().__init__(label_space, encoder, with_momentum_encoder=True)
        self.tau = tau
        self.max_anchors = max_anchors
        self.memory = RegionMemoryBank(self.num_classes, encoder.head.out.out_channels, bank_size)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        self.check_batch(batch)
        with torch.no_grad():
            keys = self.momentum_encoder(batch["image_k"])
        query = self.encoder(batch["image"])
        labels = resize_labels(batch["mask"], tuple(query.shape[-2:]))
        pixels, flat_labels = _flatten_pixels(query), labels.reshape(-1)
        subset = _random_subset(flat_labels.shape[0], self.max_anchors, 1, flat_labels.device)
        if subset is not None:
            pixels, flat_labels = pixels[subset[0]], flat_labels[subset[0]]
        bank_embeddings, bank_labels = self.memory.entries()
        loss = pixel_to_region_loss(pixels, flat_labels, bank_embeddings, bank_labels, self.tau, IGNORE_INDEX)
        self.memory.update(keys, labels, IGNORE_INDEX)
        return {"loss": loss, "loss_region": loss, "bank_filled": (bank_labels >= 0).float().mean()}


class SupervisedCE(PretrainMethod):
    """Baseline: 1x1 classifier on the backbone map, cross-entropy over the concatenated label space."""

    head_type = None

    def __init__(self, label_space, encoder: Encoder):
        super().__init__(label_space, encoder, with_momentum_encoder=False)
        self.classifier = nn.Conv2d(encoder.backbone.num_features, self.num_classes, 1)

    def allowed_classes(self, batch: dict, num_pixels_per_image: int) -> torch.Tensor | None:
        """[P, C] bool classes each pixel's softmax may use; None = all."""
        return None

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        self.check_batch(batch)
        logits = self.classifier(self.encoder(batch["image"]))
        labels = resize_labels(batch["mask"], tuple(logits.shape[-2:])).reshape(-1)
        allowed = self.allowed_classes(batch, logits.shape[-2] * logits.shape[-1])
        loss = pixel_cross_entropy(_flatten_pixels(logits), labels, allowed, IGNORE_INDEX)
        return {"loss": loss, "loss_ce": loss}


class MultiHead(SupervisedCE):
    """Baseline: one classifier per dataset, CE on its own labels.

    Stored as one 1x1 conv over the concatenated label space whose softmax is restricted, per image, to the
    block of its dataset: mathematically one head per dataset, computed without a loop over datasets.
    """

    required_keys = ("image", "mask", "dataset_id")

    def __init__(self, label_space, encoder: Encoder):
        super().__init__(label_space, encoder)
        num_datasets = len(label_space.datasets)
        blocks = torch.zeros(num_datasets, self.num_classes, dtype=torch.bool)
        for dataset_index in range(num_datasets):  # global ids, so unified label spaces work too
            blocks[dataset_index, label_space.dataset_class_ids(dataset_index)] = True
        self.register_buffer("dataset_classes", blocks, persistent=False)

    def check_batch(self, batch: dict) -> None:
        """Also: dataset ids index ``label_space.datasets`` and labels lie in their image's dataset block."""
        check_once = batch["mask"].device.type == "cpu" or not self._labels_checked
        super().check_batch(batch)
        if not check_once:
            return
        dataset_id, mask = batch["dataset_id"], batch["mask"]
        num_datasets = self.dataset_classes.shape[0]
        if int(dataset_id.min()) < 0 or int(dataset_id.max()) >= num_datasets:
            raise ValueError(f"batch['dataset_id'] must be in 0..{num_datasets - 1}, got {dataset_id.tolist()}")
        per_pixel = self.dataset_classes[dataset_id[:, None, None].expand_as(mask), mask.clamp(min=0)]
        outside = (mask != IGNORE_INDEX) & ~per_pixel
        if bool(outside.any()):
            image = int(outside.flatten(1).any(1).long().argmax())
            raise ValueError(
                f"batch['mask'] of image {image} (dataset_id {int(dataset_id[image])}) holds labels of another "
                "dataset's block; multi_head needs every label inside its own dataset's classes"
            )

    def allowed_classes(self, batch: dict, num_pixels_per_image: int) -> torch.Tensor:
        per_image = self.dataset_classes[batch["dataset_id"]]
        return per_image.repeat_interleave(num_pixels_per_image, dim=0)


class MoCoV2(PretrainMethod):
    """Image-level MoCo-v2 step (pooled MLP head, key queue, InfoNCE at tau 0.2); labels unused.

    The speed reference of the benchmarks. No ShuffleBN: under DDP the trainer's SyncBN normalises the keys
    over the global batch.
    """

    head_type = "pooled"
    default_head_hidden_dim = None
    required_keys = ("image", "image_k")

    def __init__(self, label_space, encoder: Encoder, *, tau: float = 0.2, queue_size: int = 65536):
        super().__init__(label_space, encoder, with_momentum_encoder=True)
        self.tau = tau
        self.queue = KeyQueue(encoder.head.fc2.out_features, queue_size)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        self.check_batch(batch)
        query = self.encoder(batch["image"])
        with torch.no_grad():
            keys = self.momentum_encoder(batch["image_k"])
        loss = moco_infonce(query, keys, self.queue.entries(), self.tau)
        self.queue.update(keys)
        return {"loss": loss, "loss_moco": loss}


_METHOD_CLASSES: dict[str, type[PretrainMethod]] = {
    "mdp": MDP,
    "pixel_to_pixel": PixelToPixel,
    "region_bank": RegionBank,
    "supervised_ce": SupervisedCE,
    "multi_head": MultiHead,
    "moco_v2": MoCoV2,
}
METHODS: tuple[str, ...] = tuple(_METHOD_CLASSES)


def method_options(name: str) -> dict[str, object]:
    """The keyword options of method ``name`` and their defaults."""
    if name not in _METHOD_CLASSES:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    parameters = inspect.signature(_METHOD_CLASSES[name].__init__).parameters.values()
    return {p.name: p.default for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY}


def build_method(
    name: str,
    *,
    label_space,
    arch: str = "resnet50",
    output_stride: int = 8,
    embed_dim: int = 128,
    head_hidden_dim: int | None = None,
    head_output_norm: str = "none",
    pretrained: bool = False,
    **options,
) -> PretrainMethod:
    """Build pretraining method ``name`` (one of ``METHODS``) on a timm ``arch`` backbone.

    head_hidden_dim: hidden width of the projection head (default 512 for the dense head, the backbone width
    for MoCo's MLP). head_output_norm: none | batchnorm | whiten, the dense head's ``output_norm``.
    ``options`` are the method's own keywords (``method_options(name)``); unknown ones raise.
    """
    known = method_options(name)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise TypeError(f"method {name!r} has no option {unknown}; its options are {sorted(known) or 'none'}")
    method_class = _METHOD_CLASSES[name]
    encoder = build_encoder(
        arch,
        output_stride,
        embed_dim,
        head=method_class.head_type,
        head_hidden_dim=head_hidden_dim or method_class.default_head_hidden_dim,
        pretrained=pretrained,
        head_output_norm=head_output_norm,
    )
    return method_class(label_space, encoder, **options)
