"""Measured downstream numbers reach the exported model card's model-index."""

import json

import timm
import torch
import yaml

from mdp_hub.export import export
from training.seg.evaluation import HUB_METRICS_JSON, write_results
from training.seg.metrics import confusion_matrix, metrics_from_confusion


def test_hub_metrics_json_feeds_export_model_index(tmp_path):
    target = torch.tensor([0, 0, 1, 1, 2, 2, -1])
    pred = torch.tensor([0, 0, 1, 0, 2, 2, 1])
    metrics = metrics_from_confusion(confusion_matrix(pred, target, 3), ["road", "car", "sky"])
    info = {
        "dataset": "cityscapes",
        "split": "val",
        "step": 40000,
        "arch": "resnet18",
        "head": "deeplabv3",
        "mode": "whole",
        "flip": False,
    }
    write_results(tmp_path / "eval", metrics, info)
    entry = json.loads((tmp_path / "eval" / HUB_METRICS_JSON).read_text())
    assert entry["mIoU"] == round(metrics.miou, 2) == 72.22  # (2/3 + 1/2 + 1) / 3

    backbone = timm.create_model("resnet18", num_classes=0)
    checkpoint = {
        "format": "mdp-hub/train-checkpoint",
        "format_version": 1,
        "kind": "finetune",
        "arch": "resnet18",
        "backbone_prefix": "backbone.",
        "model": {f"backbone.{k}": v for k, v in backbone.state_dict().items()},
        "step": 40000,
    }
    torch.save(checkpoint, tmp_path / "last.pth")
    out = export(tmp_path / "last.pth", tmp_path / "export", metrics=entry)
    card = (out / "README.md").read_text()
    front_matter = yaml.safe_load(card.split("---")[1])
    results = front_matter["model-index"][0]["results"]
    assert [r["metrics"][0]["value"] for r in results] == [72.22]
    assert results[0]["dataset"]["name"] == "cityscapes"
