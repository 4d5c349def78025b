"""MDP pretraining: ``python -m training.pretrain [--recipe NAME|FILE] [--set key=value ...] [--output DIR]``.

No arguments = the synthetic demo (resnet18, small crops, a few minutes on 2 CPU cores), ending with an exported
timm-loadable folder. Multi-GPU / multi-node: start the same command under ``torchrun`` (docs/TRAINING.md).

The run folder holds ``config.yaml`` (resolved), ``label_space.json``, ``last.pth`` (auto-resumed),
``checkpoint_<step>.pth`` snapshots, ``metrics.jsonl``, ``tensorboard/``, ``loss_curves.png``,
``prototype_similarity.png`` and ``export/`` (the Hub-ready backbone).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from mdp_hub.errors import command
from mdp_hub.help_format import HelpFormatter
from mdp_hub.integrity import CONFIG_FILENAME
from mdp_hub.prototypes import ANCHOR_SHARE_KEY, COUNTS_KEY, prototype_regime
from training import config as config_lib
from training.config import ConfigError, PretrainConfig
from training.data import (
    LabelSpace,
    MultiDatasetSampler,
    SegmentationSamples,
    build_pretrain_dataset,
    build_unlabeled_dataset,
    ensure_synthetic,
)
from training.data.device_augment import BatchPhotometric, DeviceViews
from training.data.hub_streaming import StreamingSegmentation, is_streaming
from training.data.label_space import IGNORE_INDEX, LOCAL_IGNORE
from training.data.transforms import PhotometricConfig
from training.engine import distributed
from training.engine.data import epoch_loader, steps_per_epoch
from training.engine.logger import METRICS_NAME, RunLogger
from training.engine.loop import LoopConfig, Trainer
from training.engine.numerics import make_grad_scaler
from training.engine.optim import build_optimizer, scaled_lr, warmup_cosine
from training.engine.plots import plot_loss_curves, plot_prototype_similarity
from training.engine.run_lock import RunLock
from training.mdp import build_method, method_options, momentum_schedule
from training.mdp.model import create_momentum_copy
from training.mdp.probe import PROBE_SEED, LearningProbe

BACKBONE_PREFIX = "encoder.backbone."


# ---------------------------------------------------------------- data


class LabeledWithFlag(Dataset):
    """Pretraining items plus ``unlabeled=False`` so they collate with pseudo-labelled items."""

    def __init__(self, dataset):
        self.dataset = dataset
        self.dataset_ids = dataset.dataset_ids

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        return {**self.dataset[index], "unlabeled": torch.tensor(False)}


class UnlabeledAsPretrain(Dataset):
    """Unlabeled images in the pretraining item format: mask all ignore, ``unlabeled=True``.

    They get a dataset id of their own (``source_id`` = number of labelled datasets), so cross-dataset mixing
    pairs them with labelled images; the method pseudo-labels them from the prototypes.
    """

    def __init__(self, dataset, source_id: int):
        self.dataset = dataset
        self.dataset_ids = torch.full((len(dataset),), source_id, dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        item = self.dataset[index]
        if item["image"].dtype == torch.uint8:  # photometric_on=device: uint8 local ids, as labelled items send
            mask = torch.full(item["image"].shape[-2:], LOCAL_IGNORE, dtype=torch.uint8)
        else:
            mask = torch.full(item["image"].shape[-2:], IGNORE_INDEX, dtype=torch.int64)
        return {**item, "mask": mask, "dataset_id": self.dataset_ids[index], "unlabeled": torch.tensor(True)}


class ConcatWithIndex(Dataset):
    """Concatenation keeping ``dataset_ids`` for MultiDatasetSampler; item ``index`` is the concatenated index."""

    def __init__(self, parts: list):
        self.parts = parts
        self.dataset_ids = torch.cat([part.dataset_ids for part in parts])
        self.starts = torch.tensor([0] + [len(part) for part in parts]).cumsum(0).tolist()

    def __len__(self) -> int:
        return self.starts[-1]

    def __getitem__(self, index: int) -> dict:
        part = next(i for i in range(len(self.parts)) if index < self.starts[i + 1])
        item = self.parts[part][index - self.starts[part]]
        return {**item, "index": torch.tensor(index)}


class DatasetSubset(Dataset):
    """The samples of some datasets only (one stage of sequential pretraining), keeping global ids."""

    def __init__(self, dataset, keep_ids: list[int]):
        self.dataset = dataset
        keep = torch.isin(dataset.dataset_ids, torch.tensor(keep_ids))
        self.indices = torch.nonzero(keep).flatten()
        self.dataset_ids = dataset.dataset_ids[self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict:
        return self.dataset[int(self.indices[index])]


@dataclass
class Stage:
    dataset: Dataset
    labeled: SegmentationSamples  # the labelled samples behind ``dataset`` (its bad-sample counts)
    sampler: MultiDatasetSampler | None  # None: ``dataset`` is a stream that plans its own epochs
    steps_per_epoch: int
    epochs: int


def resolve_dataset_specs(cfg: PretrainConfig) -> list[str]:
    specs = []
    for spec in cfg.data.datasets:
        if spec == "synthetic":
            root = cfg.data.synthetic_root or None
            specs += ensure_synthetic(root, seed=0, sizes=cfg.data.synthetic_sizes or None)["pretrain"]
        else:
            specs.append(spec)
    if not specs:
        raise ConfigError("data.datasets is empty; name at least one dataset spec NAME:PATH[:split]")
    return specs


def resolve_unify_map(value: str) -> Path | None:
    """A path as given, or a map shipped next to the recipes (``unify_voc_ade20k.json``); empty = none."""
    if not value:
        return None
    path = Path(value)
    if not path.exists() and not path.is_absolute() and (config_lib.RECIPE_DIR / path).exists():
        return config_lib.RECIPE_DIR / path
    if not path.exists():
        raise ConfigError(f"data.unify_map: {path} does not exist (nor in {config_lib.RECIPE_DIR})")
    return path


def build_stages(cfg: PretrainConfig, info: distributed.DistInfo) -> tuple[LabelSpace, list[Stage]]:
    """The label space over every dataset of the run and, per stage, a sharded sampler over its datasets."""
    data = cfg.data
    common = dict(
        crop_size=data.crop_size,
        mean=data.mean,
        std=data.std,
        scale_range=tuple(data.scale_range),
        base_size=data.base_size or None,
        photometric=data.photometric,
        photometric_on=data.photometric_on,
    )
    specs = resolve_dataset_specs(cfg)
    streamed = [spec for spec in specs if is_streaming(spec)]
    if streamed:
        check_streaming_run(cfg, specs, streamed)
    labeled, label_space = build_pretrain_dataset(
        specs,
        skip_bad_samples=data.skip_bad_samples,
        unify_map=resolve_unify_map(data.unify_map),
        index_cache=data.index_cache,
        **common,
    )
    if streamed:
        return label_space, [streaming_stage(cfg, labeled, info)]
    dataset = labeled
    if data.unlabeled:
        if cfg.method.name != "mdp":
            raise ConfigError(f"data.unlabeled needs method.name 'mdp' (pseudo-labels), got {cfg.method.name!r}")
        source = len(label_space.datasets)
        unlabeled = [
            UnlabeledAsPretrain(build_unlabeled_dataset(folder, **common), source) for folder in data.unlabeled
        ]
        dataset = ConcatWithIndex([LabeledWithFlag(labeled), *unlabeled])
    stage_configs = cfg.train.stages or [config_lib.StageConfig(list(label_space.dataset_names), cfg.train.epochs)]
    stages = []
    for number, stage in enumerate(stage_configs):
        unknown = sorted(set(stage.datasets) - set(label_space.dataset_names))
        if unknown or not stage.datasets:
            raise ConfigError(
                f"train.stages[{number}].datasets {stage.datasets}: every stage needs datasets of this run "
                f"({', '.join(label_space.dataset_names)}); unknown: {unknown}"
            )
        if stage.epochs <= 0:
            raise ConfigError(f"train.stages[{number}].epochs must be positive, got {stage.epochs}")
        ids = [label_space.dataset_index(name) for name in stage.datasets]
        if data.unlabeled:
            ids.append(len(label_space.datasets))  # unlabeled folders join every stage
        part = dataset if len(stage_configs) == 1 else DatasetSubset(dataset, ids)
        sampler = MultiDatasetSampler(
            part, mode=data.sampling, num_replicas=info.world_size, rank=info.rank, seed=cfg.train.seed
        )
        stages.append(Stage(part, labeled, sampler, steps_per_epoch(sampler, cfg.train.batch_size), stage.epochs))
    return label_space, stages


def check_streaming_run(cfg: PretrainConfig, specs: list[str], streamed: list[str]) -> None:
    """Streams (``hf:...?stream=true``) plan their epochs from shard row counts, map-style datasets through a
    sampler over indices: one run reads one kind, in one stage."""
    if len(streamed) < len(specs):
        others = ", ".join(spec for spec in specs if spec not in streamed)
        raise ConfigError(
            f"data.datasets mixes streamed (stream=true) and map-style datasets ({others}); a run reads streams "
            "only or map-style datasets only: add stream=true to every hf: spec, or remove it from all"
        )
    for key, value in (("data.unlabeled", cfg.data.unlabeled), ("train.stages", cfg.train.stages)):
        if value:
            raise ConfigError(f"{key} needs map-style datasets; a streamed run reads all its streams in one stage")
    if cfg.data.sampling != "proportional":
        raise ConfigError(
            f"data.sampling={cfg.data.sampling} needs map-style datasets; streams are mixed shard by shard, in "
            "proportion to their rows (data.sampling=proportional)"
        )


def streaming_stage(cfg: PretrainConfig, labeled: SegmentationSamples, info: distributed.DistInfo) -> Stage:
    stream = StreamingSegmentation(
        labeled,
        batch_size=cfg.train.batch_size,
        rank=info.rank,
        world_size=info.world_size,
        num_workers=cfg.data.num_workers,
        seed=cfg.train.seed,
    )
    if stream.steps_per_epoch == 0:
        raise ConfigError(
            f"the streams hold {len(labeled)} rows, fewer than one batch of {cfg.train.batch_size} per process "
            f"({info.world_size}): lower train.batch_size or add rows"
        )
    return Stage(stream, labeled, None, stream.steps_per_epoch, cfg.train.epochs)


# ---------------------------------------------------------------- model


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


def build_model(cfg: PretrainConfig, label_space: LabelSpace, info: distributed.DistInfo):
    """(method on the device, the module the loop calls): init, SyncBN, momentum copy, channels_last, DDP, compile."""
    try:
        method = build_method(
            cfg.method.name,
            label_space=label_space,
            arch=cfg.method.arch,
            output_stride=cfg.method.output_stride,
            embed_dim=cfg.method.embed_dim,
            head_hidden_dim=cfg.method.head_hidden_dim or None,
            head_output_norm=cfg.method.head_output_norm,
            **checked_method_options(cfg),
        )
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


# ---------------------------------------------------------------- run


def default_output(cfg: PretrainConfig) -> Path:
    return Path("runs") / cfg.name


def write_plots(run_dir: Path, method: nn.Module, label_space: LabelSpace, logger: RunLogger) -> None:
    if (run_dir / METRICS_NAME).exists():
        plot_loss_curves(run_dir / METRICS_NAME, run_dir / "loss_curves.png")
    memory = getattr(method, "memory", None)
    if memory is not None and hasattr(memory, "prototypes") and int((memory.counts > 0).sum()) > 0:
        plot_prototype_similarity(
            memory.prototypes.cpu(), memory.counts.cpu(), label_space.class_names, run_dir / "prototype_similarity.png"
        )
    logger.message(f"plots written to {run_dir}")


def report_prototype_regime(method: nn.Module, label_space: LabelSpace, logger: RunLogger) -> None:
    """One line on where the prototypes ended between their anchors and pure class means."""
    memory = getattr(method, "memory", None)
    if memory is None or not hasattr(memory, "anchor_share"):
        return
    if not memory.anchors:
        logger.message("prototypes: class means of the momentum embeddings from the first step (no anchors)")
        return
    regime = prototype_regime(
        {ANCHOR_SHARE_KEY: memory.anchor_share, COUNTS_KEY: memory.counts}, label_space.to_dict(), most=3
    )
    medians = ", ".join(f"{name} {share:.2f}" for name, share in regime["median_anchor_share"].items())
    most = ", ".join(f"{name} {share:.2f}" for name, share in regime["most_anchored"])
    logger.message(
        f"anchor share of the prototypes (1 = random anchor, 0 = class mean): median {medians}; most: {most}"
    )


def export_backbone(cfg: PretrainConfig, run_dir: Path) -> Path:
    """Export ``last.pth`` under ``export.tag``, else the recipe name. A paper recipe's name is kept only for a
    completed run of it (``<name>-partial`` for a shortened one); a run that changed the recipe (other data,
    epochs, ...) is exported without a tag, and the reason is printed."""
    from mdp_hub.export import export
    from mdp_hub.provenance import RecipeClaimError

    source, out_dir = run_dir / "last.pth", run_dir / "export"
    if cfg.export.tag:
        try:
            return export(source, out_dir, tag=cfg.export.tag)
        except RecipeClaimError as reason:
            raise ConfigError(f"export.tag: {reason}") from None
    try:
        return export(source, out_dir, tag=cfg.name)
    except RecipeClaimError as reason:
        print(f"exporting without a weight tag: {reason}", file=sys.stderr)
        return export(source, out_dir, tag=None)


@dataclass
class Schedule:
    """Steps of the whole run: epoch lengths over the stages, the stage of each epoch, learning-rate scale."""

    epoch_lengths: list[int]
    epoch_stage: list[tuple[Stage, int]]
    total_steps: int
    base_lr: float
    warmup_steps: int


def build_schedule(cfg: PretrainConfig, stages: list[Stage], info: distributed.DistInfo) -> Schedule:
    epoch_lengths = [stage.steps_per_epoch for stage in stages for _ in range(stage.epochs)]
    epoch_stage = [(stage, epoch) for stage in stages for epoch in range(stage.epochs)]
    total_steps = sum(epoch_lengths)
    if cfg.train.max_steps > 0:
        total_steps = min(total_steps, cfg.train.max_steps)
    global_batch = cfg.train.batch_size * info.world_size
    base_lr = scaled_lr(cfg.optim.lr, global_batch, cfg.optim.lr_reference_batch)
    warmup_steps = round(cfg.optim.warmup_epochs * stages[0].steps_per_epoch)
    return Schedule(epoch_lengths, epoch_stage, total_steps, base_lr, warmup_steps)


class StageEpochs:
    """``(epoch, skip) -> batches`` of the stage that epoch belongs to, resumable mid-epoch."""

    def __init__(self, cfg: PretrainConfig, schedule: Schedule, info: distributed.DistInfo):
        self.cfg, self.schedule, self.pin_memory = cfg, schedule, info.device.type == "cuda"

    def __call__(self, epoch: int, skip: int):
        stage, _ = self.schedule.epoch_stage[epoch]
        return epoch_loader(
            stage.dataset,
            stage.sampler,
            batch_size=self.cfg.train.batch_size,
            epoch=epoch,
            skip=skip,
            seed=self.cfg.train.seed,
            num_workers=self.cfg.data.num_workers,
            pin_memory=self.pin_memory,
        )


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


def checkpoint_extras(cfg: PretrainConfig, label_space: LabelSpace) -> dict:
    """What a pretraining checkpoint stores beside the engine's state (read by export and by resume checks)."""
    return {
        "kind": "pretrain",
        "arch": cfg.method.arch,
        "backbone_prefix": BACKBONE_PREFIX,
        "config": config_lib.to_dict(cfg),
        "label_space": label_space.to_dict(),
        "data_config": {
            "mean": list(cfg.data.mean),
            "std": list(cfg.data.std),
            "crop_size": [cfg.data.crop_size, cfg.data.crop_size],
        },
    }


def build_trainer(
    cfg: PretrainConfig,
    run_dir: Path,
    info: distributed.DistInfo,
    method: nn.Module,
    model: nn.Module,
    schedule: Schedule,
    extras: dict,
    logger: RunLogger,
    probe: LearningProbe | None,
) -> Trainer:
    optimizer = build_optimizer(
        method, cfg.optim.name, schedule.base_lr, cfg.optim.weight_decay, cfg.optim.momentum, tuple(cfg.optim.betas)
    )
    total_steps = schedule.total_steps
    return Trainer(
        module=method,
        model=model,
        optimizer=optimizer,
        scaler=make_grad_scaler(cfg.train.amp, info.device),
        lr_at=functools.partial(
            warmup_cosine,
            total_steps=total_steps,
            warmup_steps=schedule.warmup_steps,
            base_lr=schedule.base_lr,
            min_lr=cfg.optim.min_lr_ratio * schedule.base_lr,
        ),
        iterate_epoch=StageEpochs(cfg, schedule, info),
        config=LoopConfig(
            total_steps=total_steps,
            epoch_lengths=schedule.epoch_lengths,
            amp=cfg.train.amp,
            clip_grad_norm=cfg.optim.clip_grad_norm,
            channels_last=cfg.train.channels_last,
            log_every=cfg.train.log_every,
            checkpoint_every=cfg.train.checkpoint_every,
            snapshot_every=cfg.train.snapshot_every,
            keep_snapshots=cfg.train.keep_snapshots,
            probe_every=cfg.train.probe_every,
        ),
        run_dir=run_dir,
        dist_info=info,
        checkpoint_extras=lambda: extras,
        after_step=functools.partial(update_momentum_encoder, method, cfg, total_steps),
        logger=logger,
        probe=probe,
        gradient_groups=gradient_groups(method),
        counters=schedule.epoch_stage[0][0].labeled.skip_counters(info.is_main) if cfg.data.skip_bad_samples else None,
    )


def prepare_process(cfg: PretrainConfig, info: distributed.DistInfo) -> None:
    """Threads, determinism, seeds, and where photometric jitter runs."""
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    distributed.seed_everything(cfg.train.seed, info.rank)
    if cfg.data.photometric_on == "auto":  # resolved before the config is saved, so the run records what ran
        cfg.data.photometric_on = "device" if info.device.type == "cuda" else "worker"
    scale_memory_window(cfg, info)


def scale_memory_window(cfg: PretrainConfig, info: distributed.DistInfo) -> None:
    """``method.options.window`` at this run's global batch when it was given for ``window_reference_batch``.

    Resolved before the config is saved (the window that ran, reference 0), so a saved config reruns as it ran.
    """
    reference = cfg.method.window_reference_batch
    if reference <= 0:
        return
    cfg.method.window_reference_batch = 0
    if "window" not in method_options(cfg.method.name):
        return  # a recipe's reference for a method without a prototype window (e.g. a baseline set with --set)
    window = cfg.method.options.get("window", method_options(cfg.method.name)["window"])
    global_batch = cfg.train.batch_size * info.world_size
    cfg.method.options["window"] = max(1, round(window * global_batch / reference))


def record_start(
    cfg: PretrainConfig,
    run_dir: Path,
    info: distributed.DistInfo,
    label_space: LabelSpace,
    trainer: Trainer,
    schedule: Schedule,
    start: int,
) -> None:
    """Write the run's config and label space and say what runs."""
    if info.is_main:  # only now: a refused resume leaves the earlier run's files as they were
        config_lib.save_config(cfg, run_dir / "config.yaml")
        label_space.save(run_dir / "label_space.json")
    distributed.barrier()
    trainer.logger.message(
        f"{cfg.name}: {cfg.method.name} on {', '.join(label_space.dataset_names)} ({label_space.num_classes} "
        f"classes), {cfg.method.arch} OS{cfg.method.output_stride}, {info.world_size} process(es) x batch "
        f"{cfg.train.batch_size}, lr {schedule.base_lr:.4g}"
        + (f", prototype window {cfg.method.options['window']}" if "window" in cfg.method.options else "")
        + f", steps {start}->{schedule.total_steps}"
        + (f" (resumed from {trainer.checkpoints.last_path})" if start else "")
        + f"; run folder {run_dir}"
    )


def finish(cfg: PretrainConfig, run_dir: Path, method: nn.Module, label_space: LabelSpace, logger: RunLogger) -> None:
    """Plots, the prototypes' regime and the Hub-ready export of the finished run."""
    report_prototype_regime(method, label_space, logger)
    if cfg.train.plots:
        write_plots(run_dir, method, label_space, logger)
    if cfg.export.enabled:
        out_dir = export_backbone(cfg, run_dir)
        tag = json.loads((out_dir / CONFIG_FILENAME).read_text())["mdp"]["tag"]
        print(f"exported backbone to {out_dir} (weight tag: {tag})")
        print(f'timm.create_model("local-dir:{out_dir.resolve()}", pretrained=True)')


def train(cfg: PretrainConfig, run_dir: Path) -> int:
    """Run (or resume) pretraining into ``run_dir``; returns the process exit code."""
    info = distributed.init_distributed(cfg.train.device)
    prepare_process(cfg, info)
    lock = RunLock(run_dir, enabled=info.is_main)
    try:
        lock.acquire()
        label_space, stages = build_stages(cfg, info)
        method, model = build_model(cfg, label_space, info)
        if cfg.data.photometric_on == "device":
            model = on_device_views(cfg, label_space, model)
        schedule = build_schedule(cfg, stages, info)
        extras = checkpoint_extras(cfg, label_space)
        logger = RunLogger(run_dir, enabled=info.is_main, total_steps=schedule.total_steps)
        probe = build_probe(cfg, method, label_space)
        trainer = build_trainer(cfg, run_dir, info, method, model, schedule, extras, logger, probe)
        start = trainer.resume(expected={key: extras[key] for key in ("kind", "arch", "label_space")})
        record_start(cfg, run_dir, info, label_space, trainer, schedule, start)
        try:
            trainer.run()
        finally:
            logger.close()
        if info.is_main:
            finish(cfg, run_dir, method, label_space, logger)
        return 0
    finally:
        distributed.cleanup()
        lock.release(failed=sys.exc_info()[0] is not None)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m training.pretrain",
        formatter_class=HelpFormatter,
        description="MDP pretraining. No arguments: the synthetic CPU demo, ending with a timm-loadable export.",
    )
    parser.add_argument(
        "--recipe",
        default="demo",
        help="recipe name or YAML file (default: demo); the names are the files in "
        "training/recipes/, e.g. voc_ade20k_coco_200ep (docs/TRAINING.md lists them)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set optim.lr=0.01 --set method.options.tau=0.1",
    )
    parser.add_argument("--output", type=Path, default=None, help="run folder (default: runs/<recipe name>)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return parser.parse_args(argv)


@command("python -m training.pretrain")
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = config_lib.load_config(args.recipe, args.overrides)
    checked_method_options(cfg)
    if args.print_config:
        import yaml

        print(yaml.safe_dump(config_lib.to_dict(cfg), sort_keys=False))
        return 0
    return train(cfg, args.output or default_output(cfg))


if __name__ == "__main__":
    sys.exit(main())
