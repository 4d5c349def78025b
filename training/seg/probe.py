"""Fast signals of representation quality without fine-tuning: a linear probe and a nearest-prototype probe.

* Linear probe: the backbone is frozen (eval mode, no gradients); a 1x1 conv on its last feature map (output
  stride 8) is trained with cross-entropy, then the frozen backbone + classifier is scored like any model.
* Nearest-prototype probe (MDP pretraining checkpoints): every pixel embedding of the pretrained encoder
  (backbone + dense projection head, L2-normalised) takes the class of the most similar prototype in the
  checkpoint's memory, among the classes of the evaluated dataset. No training at all; it measures exactly what
  the pretraining objective optimised. The dataset must be one of the pretraining label space's datasets.

    python -m training.seg.probe linear --init runs/mdp/last.pth --train SPEC --val SPEC [--steps 500]
    python -m training.seg.probe prototype --checkpoint runs/mdp/last.pth --data SPEC
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from mdp_hub.catalog import IMAGENET_MEAN, IMAGENET_STD
from mdp_hub.heads import load_dense_projection_head
from training.data.datasets import build_segmentation_dataset
from training.data.label_space import LabelSpace
from training.engine.checkpoint import load_checkpoint
from training.mdp.model import Encoder, create_backbone
from training.seg.config import EvalConfig, resolve_data_spec
from training.seg.evaluation import evaluate_dataset, write_results
from training.seg.losses import segmentation_cross_entropy
from training.seg.metrics import SegmentationMetrics
from training.seg.models import create_backbone as create_feature_backbone
from training.seg.models import load_backbone_weights, resolve_init


class LinearProbe(nn.Module):
    """Frozen backbone + trainable 1x1 conv. ``forward(image [B, 3, H, W])`` -> ``{"out": [B, K, H, W]}``."""

    def __init__(self, backbone: nn.Module, num_classes: int):
        super().__init__()
        self.backbone = backbone.requires_grad_(False)
        self.classifier = nn.Conv2d(backbone.feature_info.channels()[-1], num_classes, 1)

    def train(self, mode: bool = True) -> "LinearProbe":
        super().train(mode)
        self.backbone.eval()  # frozen means frozen BN statistics too
        return self

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            features = self.backbone(image)[-1]
        logits = self.classifier(features)
        return {"out": F.interpolate(logits, size=image.shape[-2:], mode="bilinear", align_corners=False)}


def train_linear_probe(
    probe: LinearProbe, train_set, *, steps: int, batch_size: int, lr: float, device: torch.device, num_workers: int = 0
) -> LinearProbe:
    """SGD (momentum 0.9) with a poly-decayed lr on the classifier only, for ``steps`` batches."""
    probe.to(device).train()
    optimizer = torch.optim.SGD(probe.classifier.parameters(), lr=lr, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=steps, power=0.9)
    loader = DataLoader(train_set, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=num_workers)
    if len(loader) == 0:
        raise ValueError(f"probe training set has {len(train_set)} images, fewer than a batch of {batch_size}")
    step = 0
    while step < steps:
        for batch in loader:
            logits = probe(batch["image"].to(device))["out"]
            loss = segmentation_cross_entropy(logits, batch["mask"].to(device), avg_non_ignore=True)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            if step == steps:
                break
    return probe.eval()


def linear_probe_from_init(init: str, num_classes: int, arch: str | None = None) -> LinearProbe:
    """A linear probe on the backbone named by ``init`` (any ``--init`` of fine-tuning), loaded strictly."""
    arch, state_dict = resolve_init(init, arch)
    probe = LinearProbe(create_feature_backbone(arch), num_classes)
    if state_dict is not None:
        load_backbone_weights(probe, state_dict, init)
    return probe


class NearestPrototype(nn.Module):
    """Cosine similarity of each pixel embedding to ``prototypes`` ``[K, D]`` (one per class of the dataset).

    ``forward(image [B, 3, H, W])`` -> ``{"out": [B, K, H, W]}`` similarities, argmax = nearest prototype.
    """

    def __init__(self, encoder: Encoder, prototypes: torch.Tensor, seen: torch.Tensor):
        super().__init__()
        self.encoder = encoder
        self.register_buffer("prototypes", F.normalize(prototypes.float(), dim=1))
        self.register_buffer("seen", seen.bool())  # [K]; a never-updated (zero) prototype must never win

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        embeddings = self.encoder(image)  # [B, D, h, w], unit length
        similarity = torch.einsum("bdhw,kd->bkhw", embeddings, self.prototypes)
        similarity = F.interpolate(similarity, size=image.shape[-2:], mode="bilinear", align_corners=False)
        return {"out": similarity.masked_fill(~self.seen.view(1, -1, 1, 1), float("-inf"))}


def prototype_probe_from_checkpoint(path: str | Path, dataset_name: str) -> NearestPrototype:
    """The nearest-prototype classifier of an MDP pretraining checkpoint for one of its datasets.

    The encoder is rebuilt from the shapes in the checkpoint (backbone ``arch``, projection head widths) and
    loaded strictly; only classes whose prototype was ever updated can be predicted.
    """
    checkpoint = load_checkpoint(Path(path), kind="pretrain")
    model = checkpoint["model"]
    if "memory.prototypes" not in model or "encoder.head.proj.weight" not in model:
        raise ValueError(
            f"{path}: no class prototypes / dense projection head: the nearest-prototype probe "
            f"needs a checkpoint of a prototype method (mdp), not {checkpoint['config']['method']['name']!r}"
        )
    label_space = LabelSpace.from_dict(checkpoint["label_space"])
    if dataset_name not in label_space.dataset_names:
        raise ValueError(
            f"{path}: dataset {dataset_name!r} is not in the pretraining label space "
            f"{list(label_space.dataset_names)}; use the linear probe or fine-tuning for new datasets"
        )
    backbone = create_backbone(checkpoint["arch"], checkpoint["config"]["method"]["output_stride"])
    head_state = {k[len("encoder.head.") :]: v for k, v in model.items() if k.startswith("encoder.head.")}
    encoder = Encoder(backbone, load_dense_projection_head(head_state, backbone.num_features, source=str(path)))
    encoder_state = {k[len("encoder.") :]: v for k, v in model.items() if k.startswith("encoder.")}
    encoder.load_state_dict(encoder_state, strict=True)
    class_ids = label_space.dataset_class_ids(dataset_name)
    seen = model["memory.counts"][class_ids] > 0
    return NearestPrototype(encoder, model["memory.prototypes"][class_ids], seen).eval()


def _write(metrics: SegmentationMetrics, output: Path, info: dict) -> None:
    json_path, _ = write_results(output, metrics, info)
    print(
        f"{info['probe']} probe: mIoU {metrics.miou:.2f}  mAcc {metrics.macc:.2f}  aAcc {metrics.aacc:.2f} "
        f"-> {json_path}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.seg.probe", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="probe", required=True)
    linear = sub.add_parser("linear", help="train a 1x1 conv on frozen features")
    linear.add_argument("--init", required=True, help="any fine-tuning --init (timm name, export, checkpoint)")
    linear.add_argument("--arch", default=None, help="timm architecture for scratch / plain state dicts")
    linear.add_argument("--train", required=True, help="training dataset spec (or 'synthetic')")
    linear.add_argument("--val", required=True, help="evaluation dataset spec (or 'synthetic')")
    linear.add_argument("--steps", type=int, default=500)
    linear.add_argument("--batch-size", type=int, default=8)
    linear.add_argument("--lr", type=float, default=0.1)
    linear.add_argument("--crop", type=int, nargs=2, default=[512, 512])
    proto = sub.add_parser("prototype", help="nearest class prototype of an MDP pretraining checkpoint")
    proto.add_argument("--checkpoint", required=True, type=Path)
    proto.add_argument("--data", required=True, help="evaluation split of one of the pretraining datasets")
    for command in (linear, proto):
        command.add_argument("--output", type=Path, required=True)
        command.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    norm = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
    eval_config = EvalConfig(test_scale=[], overlays=0)
    if args.probe == "linear":
        train_set = build_segmentation_dataset(
            resolve_data_spec(args.train, train=True), train=True, crop_size=args.crop, **norm
        )
        val_set = build_segmentation_dataset(resolve_data_spec(args.val, train=False), train=False, **norm)
        probe = linear_probe_from_init(args.init, train_set.num_classes, args.arch)
        train_linear_probe(probe, train_set, steps=args.steps, batch_size=args.batch_size, lr=args.lr, device=device)
        info = {"probe": "linear", "init": args.init, "data": args.val, "steps": args.steps}
    else:
        checkpoint = load_checkpoint(args.checkpoint, kind="pretrain")
        norm = {"mean": checkpoint["data_config"]["mean"], "std": checkpoint["data_config"]["std"]}
        val_set = build_segmentation_dataset(resolve_data_spec(args.data, train=False), train=False, **norm)
        probe = prototype_probe_from_checkpoint(args.checkpoint, val_set.reader.dataset_name)
        info = {"probe": "prototype", "checkpoint": str(args.checkpoint), "data": args.data}
    metrics = evaluate_dataset(probe.to(device), val_set, eval_config, device=device)
    _write(metrics, args.output, {**info, "dataset": val_set.reader.dataset_name, "split": val_set.reader.split})
    return 0


if __name__ == "__main__":
    sys.exit(main())
