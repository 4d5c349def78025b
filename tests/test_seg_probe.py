"""Linear probe on frozen features and nearest-prototype probe of an MDP-style checkpoint, on a tiny dataset."""

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from test_finetune_roundtrip import CLASSES, make_shapes_dataset

from mdp_hub.errors import CheckpointError
from training.data.datasets import build_segmentation_dataset
from training.data.label_space import LabelSpace
from training.mdp.model import DenseProjectionHead, Encoder, create_backbone
from training.seg.config import EvalConfig
from training.seg.evaluation import evaluate_dataset
from training.seg.probe import linear_probe_from_init, prototype_probe_from_checkpoint, train_linear_probe

NORM = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
EVAL = EvalConfig(test_scale=[], overlays=0)
ARCH = "resnet18"


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = make_shapes_dataset(tmp_path_factory.mktemp("probe") / "shapes", seed=1, train_images=12, val_images=6)
    train = build_segmentation_dataset(
        f"folder:{root}:train", train=True, crop_size=32, base_size=None, scale_range=(1.0, 1.0), **NORM
    )
    val = build_segmentation_dataset(f"folder:{root}:val", train=False, **NORM)
    return train, val


def test_linear_probe_learns_on_frozen_backbone(shapes):
    train, val = shapes
    torch.manual_seed(0)
    probe = linear_probe_from_init("scratch", train.num_classes, arch=ARCH)
    frozen = {k: v.clone() for k, v in probe.backbone.state_dict().items()}
    train_linear_probe(probe, train, steps=40, batch_size=4, lr=0.5, device=torch.device("cpu"))
    assert all(torch.equal(frozen[k], v) for k, v in probe.backbone.state_dict().items())  # BN stats too
    metrics = evaluate_dataset(probe, val, EVAL, device=torch.device("cpu"))
    assert metrics.miou > 40.0  # "background" everywhere scores ~27


def test_linear_probe_init_is_strict(tmp_path):
    path = tmp_path / "r34.safetensors"
    save_file(timm.create_model("resnet34", num_classes=0).state_dict(), str(path))
    with pytest.raises(CheckpointError, match="weights do not fit"):
        linear_probe_from_init(str(path), 3, arch=ARCH)


def pretrain_checkpoint(encoder, prototypes, counts, label_space):
    model = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
    model.update({"memory.prototypes": prototypes, "memory.counts": counts})
    return {
        "format": "mdp-hub/train-checkpoint",
        "format_version": 1,
        "kind": "pretrain",
        "arch": ARCH,
        "backbone_prefix": "encoder.backbone.",
        "model": model,
        "step": 1,
        "config": {"method": {"name": "mdp", "output_stride": 8}},
        "label_space": label_space.to_dict(),
        "data_config": {"mean": NORM["mean"], "std": NORM["std"], "crop_size": [32, 32]},
    }


def test_nearest_prototype_probe(shapes, tmp_path):
    train, val = shapes
    torch.manual_seed(0)
    encoder = Encoder(create_backbone(ARCH, 8), DenseProjectionHead(512, 32, 16)).eval()
    # Prototypes = mean embedding of each class over the training images, as the memory would hold them.
    sums, counts = torch.zeros(3, 16), torch.zeros(3)
    with torch.no_grad():
        for index in range(len(train)):
            item = train[index]
            embedding = F.interpolate(encoder(item["image"][None]), size=(32, 32), mode="bilinear")[0]
            for label in range(3):
                where = item["mask"] == label
                sums[label] += embedding[:, where].sum(dim=1)
                counts[label] += where.sum()
    label_space = LabelSpace([("voc_aug", ["background", "cat"]), ("shapes", CLASSES)])
    prototypes = torch.cat([torch.randn(2, 16), sums / counts[:, None]])
    path = tmp_path / "last.pth"
    torch.save(pretrain_checkpoint(encoder, prototypes, torch.tensor([5, 0, 7, 7, 7]), label_space), path)

    probe = prototype_probe_from_checkpoint(path, "shapes")
    assert torch.equal(probe.seen, torch.tensor([True, True, True]))
    metrics = evaluate_dataset(probe, val, EVAL, device=torch.device("cpu"))
    # A random encoder with class-mean prototypes: constant "background" scores mIoU ~27 and mAcc 33.3.
    assert metrics.macc > 60.0 and metrics.miou > 33.0

    # A class whose prototype was never updated (count 0) is never predicted.
    torch.save(pretrain_checkpoint(encoder, prototypes, torch.tensor([5, 0, 7, 0, 7]), label_space), path)
    metrics = evaluate_dataset(prototype_probe_from_checkpoint(path, "shapes"), val, EVAL, device=torch.device("cpu"))
    assert metrics.iou[1] == 0.0 and metrics.acc[1] == 0.0

    with pytest.raises(ValueError, match="not in the pretraining label space"):
        prototype_probe_from_checkpoint(path, "cityscapes")
