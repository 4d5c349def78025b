"""The data of a pretraining run: its datasets, the stages they are read in, and the schedule of steps."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import Dataset

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
from training.data.hub_streaming import StreamingSegmentation, is_streaming
from training.data.wrappers import ConcatWithIndex, DatasetSubset, LabeledWithFlag, UnlabeledAsPretrain
from training.engine import distributed
from training.engine.data import epoch_loader, steps_per_epoch
from training.engine.optim import scaled_lr


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
