"""Tiny MDP pretraining checkpoints and exports for the prototype segmenter and miner tests (not a test module).

The checkpoint holds the real ``build_method("mdp")`` state dict around a random resnet18, with prototypes set
from the method's own embeddings so that predictions are meaningful, in the format of docs/ARCHITECTURE.md.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from mdp_hub.export import export
from training.data import LabelSpace
from training.mdp import build_method

MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]
LABEL_SPACE = LabelSpace([("voc_aug", ["background", "cat", "dog"]), ("ade20k", ["wall", "sky", "floor", "tree"])])
EMBED_DIM = 8
OUTPUT_STRIDE = 16
UNSEEN_CLASS = 6  # "ade20k/tree": its prototype stays zero (never seen in pretraining)


def striped_image(height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
    """uint8 RGB ``[H, W, 3]``: three vertical colour bands with a little noise."""
    rng = np.random.default_rng(seed)
    image = np.zeros((height, width, 3), dtype=np.float32)
    colours = np.array([[220, 40, 40], [40, 200, 60], [50, 60, 210]], dtype=np.float32)
    for band, colour in enumerate(colours):
        image[:, band * width // 3 : (band + 1) * width // 3] = colour
    return (image + rng.normal(0, 8, image.shape)).clip(0, 255).astype(np.uint8)


def build_method_with_prototypes(label_space: LabelSpace = LABEL_SPACE, seed: int = 0, dataset_centring=False):
    """The real MDP method (resnet18), BN statistics from a forward pass, prototypes = mean embeddings of
    the striped image's regions / random directions; ``UNSEEN_CLASS`` stays uninitialised. With
    ``dataset_centring``, each dataset's mean embedding is a random vector of length about 0.3."""
    torch.manual_seed(seed)
    method = build_method(
        "mdp",
        label_space=label_space,
        arch="resnet18",
        output_stride=OUTPUT_STRIDE,
        embed_dim=EMBED_DIM,
        head_hidden_dim=16,
        dataset_centring=dataset_centring,
    )
    if dataset_centring:
        method.dataset_means.copy_(0.3 * F.normalize(torch.randn_like(method.dataset_means), dim=1))
        method.dataset_means_initialised.fill_(True)
    image = torch.from_numpy(striped_image()).permute(2, 0, 1).float() / 255
    batch = ((image - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None])[None]
    method.encoder.train()
    with torch.no_grad():
        method.encoder(batch.repeat(2, 1, 1, 1))  # non-trivial BN running statistics
    method.eval()
    with torch.no_grad():
        embeddings = method.encoder(batch)[0]  # [D, h, w]
        width = embeddings.shape[-1]
        prototypes = F.normalize(torch.randn(label_space.num_classes, EMBED_DIM), dim=1)
        for band, cls in enumerate((1, 5, 4)):  # voc_aug/cat, ade20k/floor, ade20k/sky
            region = embeddings[:, :, band * width // 3 : (band + 1) * width // 3]
            prototypes[cls] = F.normalize(region.mean(dim=(1, 2)), dim=0)
        prototypes[UNSEEN_CLASS] = 0
        method.memory.prototypes.copy_(prototypes)
        method.memory.counts.copy_((prototypes.norm(dim=1) > 0).long() * 10)
    return method, batch


def save_checkpoint(method, path, label_space: LabelSpace = LABEL_SPACE, *, tau: float = 0.1) -> None:
    """A pretraining checkpoint (docs/ARCHITECTURE.md) around ``method.state_dict()``."""
    torch.save(
        {
            "format": "mdp-hub/train-checkpoint",
            "format_version": 1,
            "kind": "pretrain",
            "arch": "resnet18",
            "backbone_prefix": "encoder.backbone.",
            "model": method.state_dict(),
            "optimizer": {"state": {}, "param_groups": []},
            "scaler": None,
            "step": 10,
            "epoch": 1,
            "rng": {"torch": torch.get_rng_state()},
            "config": {
                "name": "tiny",
                "method": {
                    "name": "mdp",
                    "arch": "resnet18",
                    "output_stride": OUTPUT_STRIDE,
                    "embed_dim": EMBED_DIM,
                    "options": {"tau": tau},
                },
            },
            "label_space": label_space.to_dict(),
            "data_config": {"mean": MEAN, "std": STD, "crop_size": [48, 48]},
        },
        path,
    )


def make_export(tmp_path, label_space: LabelSpace = LABEL_SPACE, dataset_centring: bool = False):
    """(method, normalised striped batch [1, 3, 48, 64], checkpoint path, export folder)."""
    method, batch = build_method_with_prototypes(label_space, dataset_centring=dataset_centring)
    checkpoint = tmp_path / "last.pth"
    save_checkpoint(method, checkpoint, label_space)
    folder = export(checkpoint, tmp_path / "export", tag="tiny")
    return method, batch, checkpoint, folder


def write_image(path, seed: int = 0, height: int = 48, width: int = 64):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(striped_image(height, width, seed)).save(path)
    return path
