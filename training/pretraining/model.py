"""The model of a pretraining run: the method (encoder, momentum encoder, prototypes) with its options checked,
and the learning probe."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from training.config import ConfigError, PretrainConfig
from training.data import (
    LabelSpace,
    build_pretrain_dataset,
)
from training.data.device_augment import BatchPhotometric, DeviceViews
from training.data.label_space import IGNORE_INDEX
from training.data.transforms import PhotometricConfig
from training.engine import distributed
from training.mdp import build_method, method_options, momentum_schedule
from training.mdp.model import create_momentum_copy
from training.mdp.probe import PROBE_SEED, LearningProbe
from training.pretraining.stages import resolve_dataset_specs, resolve_unify_map

BACKBONE_PREFIX = "encoder.backbone."


def checked_method_options(cfg: PretrainConfig) -> dict:
    """``method.options`` checked against the method's keywords: unknown names and wrong types are errors."""
    known = method_options(cfg.method.name)
    for key, value in cfg.method.options.items():
        if key not in known:
            raise ConfigError(
                f"method.options.{key}: method {cfg.method.name!r} has no such option; "
                f"its options are: {', '.join(sorted(known)) or 'none'}"
            )
        default = known[key]
        ok = (
            default is None
            or value is None
            or (isinstance(default, bool) and isinstance(value, bool))
            or (isinstance(default, float) and isinstance(value, (int, float)) and not isinstance(value, bool))
            or (type(default) in (int, str) and type(value) is type(default))
        )
        if not ok:
            raise ConfigError(
                f"method.options.{key}: expected {type(default).__name__} like the default {default!r}, "
                f"got {type(value).__name__} {value!r}"
            )
    return dict(cfg.method.options)


def load_pretrained_backbone(backbone: nn.Module, source: str) -> None:
    """Strictly load ImageNet (or any) weights: a weights file / checkpoint, an MDP export folder, or a timm name
    such as ``resnet50.tv_in1k`` (downloaded by timm, so it needs the network or a filled HF cache). A file of an
    export is checked against the sha256 its config.json records."""
    path = Path(source)
    if path.exists():
        from mdp_hub.checkpoint_io import load_into
        from mdp_hub.integrity import WEIGHTS_FILENAME, verify_checksum

        path = path / WEIGHTS_FILENAME if path.is_dir() else path
        verify_checksum(path)
        load_into(backbone, path)
        return
    import timm

    if ":" not in source and not timm.is_model(source.split(".")[0]):  # hf-hub:, local-dir: go to timm
        raise ConfigError(
            f"init.pretrained={source!r}: no such file, and not a timm model name such as resnet50.tv_in1k"
        )
    reference = timm.create_model(source, pretrained=True, num_classes=0, global_pool="")
    backbone.load_state_dict(reference.state_dict(), strict=True)


def method_from_config(cfg: PretrainConfig, label_space: LabelSpace, options: dict) -> nn.Module:
    """The method ``cfg.method`` names, on the CPU, with ``options`` (its ``method.options``)."""
    return build_method(
        cfg.method.name,
        label_space=label_space,
        arch=cfg.method.arch,
        output_stride=cfg.method.output_stride,
        embed_dim=cfg.method.embed_dim,
        head_hidden_dim=cfg.method.head_hidden_dim or None,
        head_output_norm=cfg.method.head_output_norm,
        **options,
    )


def build_model(cfg: PretrainConfig, label_space: LabelSpace, info: distributed.DistInfo):
    """(method on the device, the module the loop calls): init, SyncBN, momentum copy, channels_last, DDP, compile."""
    try:
        method = method_from_config(cfg, label_space, checked_method_options(cfg))
    except ValueError as error:  # an option that does not fit this run's data, e.g. sc_topk >= classes
        raise ConfigError(
            f"method.options for the {label_space.num_classes} classes of "
            f"{', '.join(label_space.dataset_names)}: {error}"
        ) from None
    if cfg.init.pretrained:
        load_pretrained_backbone(method.encoder.backbone, cfg.init.pretrained)
    if cfg.train.sync_bn and info.distributed and info.device.type == "cuda":
        method.encoder = nn.SyncBatchNorm.convert_sync_batchnorm(method.encoder)
    if method.momentum_encoder is not None:
        # Created after init and SyncBN, so it starts from the loaded weights with the same layer types. It has
        # no trainable parameters, so DDP does not synchronise gradients for it.
        method.momentum_encoder = create_momentum_copy(method.encoder)
    method.to(info.device)
    if cfg.train.channels_last:
        method.to(memory_format=torch.channels_last)
    model = method
    if info.distributed:
        # The prototype memory is kept identical by the method's own all_reduce; DDP must not overwrite it.
        model = nn.parallel.DistributedDataParallel(
            method, device_ids=[info.local_rank] if info.device.type == "cuda" else None, broadcast_buffers=False
        )
    if cfg.train.compile:
        model = CheckedBeforeCompiled(torch.compile(model), method.check_batch)
    return method, model


class CheckedBeforeCompiled(nn.Module):
    """A compiled step with the batch checks that need host values (label ids in range) run eagerly first."""

    def __init__(self, compiled: nn.Module, check_batch):
        super().__init__()
        self.compiled, self.check_batch = compiled, check_batch

    def forward(self, batch: dict) -> dict:
        self.check_batch(batch)
        return self.compiled(batch)


def build_probe(cfg: PretrainConfig, method: nn.Module, label_space: LabelSpace) -> LearningProbe | None:
    """The learning-dynamics probe: ``train.probe_images`` fixed crops spread over the pretraining datasets.

    Same geometry as training, no colour jitter, drawn with a fixed seed, so every run of the same data and
    crop settings is scored on the same pixels.
    """
    if cfg.train.probe_every <= 0 or cfg.train.probe_images < 2:
        return None
    data = cfg.data
    no_jitter = PhotometricConfig(color_jitter_p=0.0, grayscale_p=0.0, blur_p=0.0)
    dataset, _ = build_pretrain_dataset(
        resolve_dataset_specs(cfg),
        crop_size=data.crop_size,
        mean=data.mean,
        std=data.std,
        scale_range=tuple(data.scale_range),
        base_size=data.base_size or None,
        photometric=no_jitter,
        photometric_on="worker",
        two_views=False,
        skip_bad_samples=data.skip_bad_samples,
        unify_map=resolve_unify_map(data.unify_map),
        index_cache=data.index_cache,
    )
    count = min(cfg.train.probe_images, len(dataset))
    indices = torch.linspace(0, len(dataset) - 1, count).round().long().tolist()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(PROBE_SEED)
        items = [dataset[index] for index in indices]
    # Shuffled once (fixed seed), so that each chunk mixes datasets as a training batch does: batch norm on a
    # one-dataset chunk would remove the dataset's own mean and understate how well the datasets separate.
    order = torch.randperm(count, generator=torch.Generator().manual_seed(PROBE_SEED)).tolist()
    images = torch.stack([items[i]["image"] for i in order])
    labels = torch.stack([items[i]["mask"] for i in order])
    blocks = {name: torch.as_tensor(label_space.dataset_class_ids(name)) for name in label_space.dataset_names}
    return LearningProbe(method, images, labels, chunk=cfg.train.batch_size, dataset_classes=blocks)


def gradient_groups(method: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Parameters whose gradient norms are logged: the backbone and the head (projection or classifier)."""
    encoder = method.encoder
    head = encoder.head if encoder.head is not None else getattr(method, "classifier", None)
    groups = {"backbone": list(encoder.backbone.parameters())}
    if head is not None:
        groups["head"] = list(head.parameters())
    return groups


def update_momentum_encoder(method: nn.Module, cfg: PretrainConfig, total_steps: int, step: int) -> None:
    method.momentum_update(momentum_schedule(step, total_steps, cfg.method.momentum, cfg.method.momentum_final))


def on_device_views(cfg: PretrainConfig, label_space: LabelSpace, model: nn.Module) -> nn.Module:
    """Workers send uint8 crops and local ids; the views, their jitter and the global ids are made on the device."""
    tables = torch.stack([label_space.global_lookup_table(i) for i in range(len(label_space.datasets))])
    if cfg.data.unlabeled:  # the unlabeled folders' source id: every pixel ignored
        tables = torch.cat([tables, torch.full((1, tables.shape[1]), IGNORE_INDEX)])
    return DeviceViews(
        model,
        BatchPhotometric(cfg.data.photometric, cfg.data.mean, cfg.data.std),
        channels_last=cfg.train.channels_last,
        label_tables=tables,
    )
