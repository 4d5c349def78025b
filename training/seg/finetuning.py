"""A fine-tuning run from a resolved config: datasets, segmentation model, MMSeg's poly schedule on the shared
engine, validation during the run and the final scores."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

from training.config import ConfigError, save_config, to_dict
from training.data.datasets import build_segmentation_dataset
from training.data.device_augment import BatchPhotometric, DeviceViews
from training.data.doctor import check_reader
from training.data.errors import BadSampleError
from training.data.hub_streaming import is_streaming
from training.data.label_space import LabelSpace
from training.data.specs import parse_spec
from training.data.transforms import PhotometricConfig
from training.engine import distributed
from training.engine.checkpoint import CheckpointManager, load_checkpoint
from training.engine.data import epoch_loader
from training.engine.logger import RunLogger
from training.engine.loop import LoopConfig, Trainer
from training.engine.numerics import make_grad_scaler
from training.engine.run_lock import RunLock
from training.seg.config import FinetuneConfig, resolve_data_spec
from training.seg.evaluation import evaluate_dataset, write_results
from training.seg.losses import segmentation_cross_entropy
from training.seg.metrics import SegmentationMetrics
from training.seg.models import build_segmentation_model, create_segmentation_model

BACKBONE_PREFIX = "backbone."


# MMSeg's PhotoMetricDistortion in torchvision terms: brightness +-32/255, contrast and saturation x[0.5, 1.5],
# hue +-18 degrees, applied with probability 0.5; no grayscale or blur.
MMSEG_PHOTOMETRIC = PhotometricConfig(
    brightness=32 / 255, contrast=0.5, saturation=0.5, hue=18 / 360, color_jitter_p=0.5, grayscale_p=0.0, blur_p=0.0
)


def poly_lr(step: int, total_steps: int, base_lr: float, min_lr: float, power: float) -> float:
    """MMSeg's ``PolyLR``: ``(base_lr - min_lr) * (1 - step / total_steps) ** power + min_lr``."""
    return (base_lr - min_lr) * (1 - min(step, total_steps) / total_steps) ** power + min_lr


class InfiniteBatches:
    """MMSeg's ``InfiniteSampler`` as one endless epoch: pass ``p`` over the data is a ``DistributedSampler``
    permutation seeded with ``p``, so the batch at any step is fixed and a resumed run sees the same data."""

    def __init__(self, dataset, *, batch_size: int, num_workers: int, seed: int, pin_memory: bool):
        self.dataset = dataset
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.seed = seed
        self.sampler = DistributedSampler(
            dataset, num_replicas=distributed.get_world_size(), rank=distributed.get_rank(), shuffle=True, seed=seed
        )
        self.steps_per_pass = len(self.sampler) // batch_size
        if self.steps_per_pass == 0:
            raise ConfigError(
                f"data.train has {len(dataset)} images, fewer than one batch of {batch_size} per "
                "process: lower train.batch_size or add images"
            )

    def __call__(self, epoch: int, skip: int):
        """Batches from step ``skip`` on (the loop's single epoch is the whole run, so ``epoch`` is always 0)."""
        data_pass, offset = divmod(skip, self.steps_per_pass)
        while True:
            # epoch_loader seeds the DataLoader from (seed, pass), not from the global RNG, so starting in the
            # middle of a pass (resume) leaves the augmentation draws of the restored RNG state untouched.
            yield from epoch_loader(
                self.dataset,
                self.sampler,
                batch_size=self.batch_size,
                epoch=data_pass,
                skip=offset,
                seed=self.seed,
                num_workers=self.num_workers,
                pin_memory=self.pin_memory,
            )
            data_pass, offset = data_pass + 1, 0


def build_datasets(config: FinetuneConfig):
    """(train set, val set); ``data.photometric_on`` must be resolved (``worker`` or ``device``)."""
    data = config.data
    for key in ("train", "val"):
        if is_streaming(getattr(data, key)):
            raise ConfigError(
                f"data.{key}={getattr(data, key)}: fine-tuning reads hf: datasets map-style (random access, "
                "validation passes); remove stream=true"
            )
    train_set = build_segmentation_dataset(
        resolve_data_spec(data.train, train=True),
        train=True,
        crop_size=data.crop_size,
        mean=data.mean,
        std=data.std,
        scale_range=tuple(data.scale_range),
        cat_max_ratio=data.cat_max_ratio,
        base_size=data.base_size or None,
        photometric=MMSEG_PHOTOMETRIC,
        photometric_on=data.photometric_on,
        skip_bad_samples=data.skip_bad_samples,
        index_cache=data.index_cache,
    )
    val_spec = resolve_data_spec(data.val, train=False)
    val_set = build_segmentation_dataset(
        val_spec, train=False, mean=data.mean, std=data.std, index_cache=data.index_cache
    )
    if list(train_set.class_names) != list(val_set.class_names):
        raise ConfigError(
            f"data.train={data.train!r} and data.val={data.val!r} have different classes "
            f"({train_set.num_classes} vs {val_set.num_classes}); they must be one dataset's splits"
        )
    check_validation_samples(val_set, val_spec)
    return train_set, val_set


def check_validation_samples(val_set, spec: str) -> None:
    """Decode every validation sample now: a broken one would otherwise stop the run at its first validation,
    after hours of training (a pass over the data without the model, a fraction of one validation's time)."""
    errors = check_reader(val_set.reader, parse_spec(spec))["errors"]
    if errors:
        more = f" (and {len(errors) - 1} more: python -m training.data check {spec})" if len(errors) > 1 else ""
        raise BadSampleError(
            errors[0]["file"],
            f"{errors[0]['problem']}{more}; validation data is checked "
            "before training starts: fix or remove the sample",
        )


def segmentation_losses(
    logits: dict[str, torch.Tensor], mask: torch.Tensor, config: FinetuneConfig
) -> dict[str, torch.Tensor]:
    """``{"loss", "loss_decode"[, "loss_aux"]}`` from the model's ``{"out"[, "aux"]}`` logits ``[B, K, H, W]``
    and the mask ``[B, H, W]`` (local ids, -1 ignore); the auxiliary term is already weighted."""
    avg_non_ignore = config.optim.avg_non_ignore
    losses = {"loss_decode": segmentation_cross_entropy(logits["out"], mask, avg_non_ignore=avg_non_ignore)}
    if "aux" in logits:
        losses["loss_aux"] = config.model.aux_weight * segmentation_cross_entropy(
            logits["aux"], mask, avg_non_ignore=avg_non_ignore
        )
    losses["loss"] = sum(losses.values())
    return losses


def finetune(config: FinetuneConfig, run_dir: Path) -> SegmentationMetrics:
    """Fine-tune (or resume the run in ``run_dir``) and return the final validation metrics."""
    run_dir = Path(run_dir)
    dist_info = distributed.init_distributed(config.train.device)
    lock = RunLock(run_dir, enabled=dist_info.is_main)
    try:
        lock.acquire()
        return _finetune(config, run_dir, dist_info)
    finally:
        distributed.cleanup()
        lock.release(failed=sys.exc_info()[0] is not None)


def _finetune(config: FinetuneConfig, run_dir: Path, dist_info: distributed.DistInfo) -> SegmentationMetrics:
    _prepare_process(config, dist_info)
    train_set, val_set = build_datasets(config)
    label_space = LabelSpace([(train_set.reader.dataset_name, train_set.class_names)])
    last = CheckpointManager(run_dir).resume_path()
    # A resumed run takes every weight from last.pth: build the architecture only, skip the (maybe remote) init.
    resumed = load_checkpoint(last, kind="finetune") if last is not None else None
    model, wrapped, arch = _build_model(config, train_set.num_classes, resumed, dist_info)
    train_cfg = config.train
    logger = RunLogger(run_dir, enabled=dist_info.is_main, total_steps=train_cfg.iterations)
    validation = _Validation(model, val_set, config, dist_info.device, logger)
    extras = functools.partial(_checkpoint_extras, config, arch, label_space, validation)
    trainer = _build_trainer(config, model, wrapped, train_set, run_dir, dist_info, logger, validation, extras)
    try:
        step = trainer.resume(expected={"kind": "finetune", "arch": arch, "label_space": label_space.to_dict()})
        if dist_info.is_main:
            save_config(config, run_dir / "config.yaml")
            logger.message(
                f"fine-tuning {arch} + {config.model.head} from {config.init!r} on {config.data.train} "
                f"({train_set.num_classes} classes), step {step}/{train_cfg.iterations}"
            )
        previous = (resumed or {}).get("metrics") or {}
        if step > 0 and validation.due(step) and previous.get("step") != step:
            validation.run(step)  # the run stopped after this step's checkpoint, before its validation ended
        trainer.run()
        metrics = validation.metrics if validation.step == trainer.step else validation.run(trainer.step)
        if dist_info.is_main:
            _write_final_results(config, run_dir, trainer, val_set, arch, metrics)
    finally:
        logger.close()
    return metrics


def _prepare_process(config: FinetuneConfig, dist_info: distributed.DistInfo) -> None:
    """Threads, the per-process batch check, seeds, and where photometric jitter runs."""
    train_cfg = config.train
    if train_cfg.threads > 0:
        torch.set_num_threads(train_cfg.threads)
    if train_cfg.batch_size % dist_info.world_size:
        raise ConfigError(
            f"train.batch_size={train_cfg.batch_size} (global) is not divisible by the {dist_info.world_size} processes"
        )
    distributed.seed_everything(train_cfg.seed, dist_info.rank)
    if config.data.photometric_on == "auto":  # resolved before the config is saved, so the run records what ran
        config.data.photometric_on = "device" if dist_info.device.type == "cuda" else "worker"


def _build_model(
    config: FinetuneConfig, num_classes: int, resumed: dict | None, dist_info: distributed.DistInfo
) -> tuple[torch.nn.Module, torch.nn.Module, str]:
    """The segmentation model on its device, the module that runs forward (DDP-wrapped when distributed), arch."""
    device = dist_info.device
    if resumed is not None:
        arch = resumed["arch"]
        model = build_segmentation_model(config.model, num_classes, arch)
    else:
        model, arch = create_segmentation_model(config.model, num_classes, config.init)
    model.to(device)
    if dist_info.distributed and device.type == "cuda" and config.train.sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    wrapped = model
    if dist_info.distributed:
        wrapped = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return model, wrapped, arch


class _Validation:
    """Validation every ``train.eval_every`` steps and at the end; remembers the last result and its step."""

    def __init__(
        self, model: torch.nn.Module, val_set, config: FinetuneConfig, device: torch.device, logger: RunLogger
    ):
        self.model, self.val_set, self.config, self.device, self.logger = model, val_set, config, device, logger
        self.metrics: SegmentationMetrics | None = None
        self.step: int | None = None

    def due(self, step: int) -> bool:
        train_cfg = self.config.train
        return step == train_cfg.iterations or (train_cfg.eval_every > 0 and step % train_cfg.eval_every == 0)

    def run(self, step: int) -> SegmentationMetrics:
        config, device = self.config, self.device
        # validation must not move the training's random streams (its DataLoader draws a seed), so that skipping
        # or repeating it on a resume changes nothing
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            result = evaluate_dataset(
                self.model,
                self.val_set,
                config.eval,
                device=device,
                amp=config.train.amp,
                mean=config.data.mean,
                std=config.data.std,
            )
        self.logger.log(step, {"mIoU": result.miou, "mAcc": result.macc, "aAcc": result.aacc}, prefix="val")
        self.logger.message(f"step {step}: val mIoU {result.miou:.2f}  mAcc {result.macc:.2f}  aAcc {result.aacc:.2f}")
        self.metrics, self.step = result, step
        return result

    def after_checkpoint(self, step: int) -> None:
        if self.due(step):
            self.run(step)


def _checkpoint_extras(config: FinetuneConfig, arch: str, label_space: LabelSpace, validation: _Validation) -> dict:
    """What a fine-tuning checkpoint stores beside the engine's state."""
    metrics = validation.metrics
    return {
        "kind": "finetune",
        "arch": arch,
        "backbone_prefix": BACKBONE_PREFIX,
        "config": to_dict(config),
        "label_space": label_space.to_dict(),
        "data_config": {
            "mean": list(config.data.mean),
            "std": list(config.data.std),
            "crop_size": list(config.data.crop_size),
        },
        "metrics": {**metrics.to_dict(), "step": validation.step} if metrics is not None else None,
    }


class _SegmentationStep:
    """Batch -> loss terms of the segmentation model."""

    def __init__(self, model: torch.nn.Module, config: FinetuneConfig):
        self.model, self.config = model, config

    def __call__(self, batch: dict) -> dict[str, torch.Tensor]:
        return segmentation_losses(self.model(batch["image"]), batch["mask"], self.config)


def _loss_step(config: FinetuneConfig, wrapped: torch.nn.Module, train_set) -> torch.nn.Module:
    """batch -> losses; with on-device views, workers send uint8 crops and local ids and jitter and ids are made
    here."""
    compute_losses = _SegmentationStep(wrapped, config)
    if config.data.photometric_on != "device":
        return compute_losses
    return DeviceViews(
        compute_losses,
        BatchPhotometric(MMSEG_PHOTOMETRIC, config.data.mean, config.data.std),
        label_tables=train_set.label_tables,
        views=1,
    )


def _build_trainer(
    config: FinetuneConfig,
    model: torch.nn.Module,
    wrapped: torch.nn.Module,
    train_set,
    run_dir: Path,
    dist_info: distributed.DistInfo,
    logger: RunLogger,
    validation: _Validation,
    checkpoint_extras,
) -> Trainer:
    """SGD with MMSeg's poly schedule over ``train.iterations`` on an endless stream of training batches."""
    train_cfg, device = config.train, dist_info.device
    # MMSeg applies weight decay to every parameter (no paramwise_cfg in the R-50-D8 configs).
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.optim.lr, momentum=config.optim.momentum, weight_decay=config.optim.weight_decay
    )
    batches = InfiniteBatches(
        train_set,
        batch_size=train_cfg.batch_size // dist_info.world_size,
        num_workers=config.data.num_workers,
        seed=train_cfg.seed,
        pin_memory=device.type == "cuda",
    )
    return Trainer(
        module=model,
        model=_loss_step(config, wrapped, train_set),
        optimizer=optimizer,
        scaler=make_grad_scaler(train_cfg.amp, device),
        lr_at=functools.partial(
            poly_lr,
            total_steps=train_cfg.iterations,
            base_lr=config.optim.lr,
            min_lr=config.optim.min_lr,
            power=config.optim.power,
        ),
        iterate_epoch=batches,
        config=LoopConfig(
            total_steps=train_cfg.iterations,
            epoch_lengths=[train_cfg.iterations],
            amp=train_cfg.amp,
            log_every=train_cfg.log_every,
            checkpoint_every=train_cfg.checkpoint_every,
            snapshot_every=train_cfg.eval_every,
            keep_snapshots=train_cfg.keep_snapshots,
        ),
        run_dir=run_dir,
        dist_info=dist_info,
        checkpoint_extras=checkpoint_extras,
        after_checkpoint=validation.after_checkpoint,
        logger=logger,
        counters=train_set.skip_counters(dist_info.is_main) if config.data.skip_bad_samples else None,
    )


def _write_final_results(
    config: FinetuneConfig, run_dir: Path, trainer: Trainer, val_set, arch: str, metrics: SegmentationMetrics
) -> None:
    info = {
        "checkpoint": str(trainer.checkpoints.last_path),
        "data": config.data.val,
        "dataset": val_set.reader.dataset_name,
        "split": val_set.reader.split,
        "step": trainer.step,
        "arch": arch,
        "head": config.model.head,
        "init": config.init,
        "mode": config.eval.mode,
        "flip": config.eval.flip,
        "test_scale": config.eval.test_scale,
    }
    write_results(run_dir / "eval", metrics, info)
