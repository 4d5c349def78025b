"""A pretraining run from a resolved config: set-up, trainer, resume, the finished run's plots and export."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import torch
from torch import nn

from mdp_hub.integrity import CONFIG_FILENAME
from mdp_hub.prototypes import ANCHOR_SHARE_KEY, COUNTS_KEY, prototype_regime
from training import config as config_lib
from training.config import ConfigError, PretrainConfig
from training.data import (
    LabelSpace,
)
from training.engine import distributed
from training.engine.logger import METRICS_NAME, RunLogger
from training.engine.loop import LoopConfig, Trainer
from training.engine.numerics import make_grad_scaler
from training.engine.optim import build_optimizer, warmup_cosine
from training.engine.plots import plot_loss_curves, plot_prototype_similarity
from training.engine.run_lock import RunLock
from training.mdp import method_options
from training.mdp.probe import LearningProbe
from training.pretraining.model import (
    BACKBONE_PREFIX,
    build_model,
    build_probe,
    gradient_groups,
    on_device_views,
    update_momentum_encoder,
)
from training.pretraining.stages import Schedule, StageEpochs, build_schedule, build_stages


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
