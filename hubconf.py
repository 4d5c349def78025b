"""torch.hub entrypoints for the MDP backbones (thin wrappers over ``timm.create_model``).

    torch.hub.load("<org>/mdp-hub", "mdp_resnet50", trust_repo=True)                   # architecture, random init
    torch.hub.load("<org>/mdp-hub", "mdp_resnet50", pretrained=True, trust_repo=True)  # default MDP weights
    torch.hub.load("/path/to/mdp-hub", "mdp_resnet50", source="local", weights="/path/to/export_folder")

Like torchvision and timm, a bare call builds the architecture with random weights; ``pretrained=True`` loads
the default tag's weights and ``weights=`` a tag (e.g. ``"voc_ade20k_200ep"``), an export folder or a weights
file (``.safetensors``, or ``.pth`` read with ``weights_only=True``). No MDP weights are published on the Hub
yet, so until they are (or are put into the local Hugging Face cache with ``mdp-hub install-cache``) a tag
raises ``mdp_hub.WeightsNotAvailableError`` naming the repository and the commands that produce the weights.
``**kwargs`` go to ``timm.create_model`` (``features_only=True``, ``out_indices=(1, 2, 3, 4)``,
``output_stride=8``, ``num_classes=21``, ...). Loading is strict: every backbone tensor must be present with
the right shape.
"""

# Import names of every package that ``import mdp_hub`` needs (torch.hub checks them before loading).
dependencies = ["torch", "torchvision", "timm", "huggingface_hub", "safetensors", "numpy", "PIL"]


def _create(model_name, pretrained, weights, kwargs):
    from pathlib import Path as _Path

    import timm as _timm

    import mdp_hub as _mdp_hub  # noqa: F401  (registers the mdp_* architectures)

    if weights is not None and pretrained is False:
        raise ValueError(f"{model_name}: weights={weights!r} was given with pretrained=False; drop one of them")
    if weights is None:
        return _timm.create_model(model_name, pretrained=bool(pretrained), **kwargs)
    location = _Path(weights).expanduser()
    looks_like_a_path = any(mark in str(weights) for mark in ("/", "\\")) or str(weights).startswith(("~", "."))
    if looks_like_a_path and not location.exists():  # a tag never holds a path separator
        raise FileNotFoundError(
            2, "no such export folder or weights file (weights= takes a tag, an export folder or a file)", str(location)
        )
    if location.is_dir():
        location = location / "model.safetensors"
    if location.suffix in (".safetensors", ".pth", ".pt", ".bin") or location.exists():
        overlay = dict(kwargs.pop("pretrained_cfg_overlay", None) or {}, file=str(location))
        return _timm.create_model(model_name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
    return _timm.create_model(f"{model_name}.{weights}", pretrained=True, **kwargs)


def mdp_resnet50(*, pretrained=None, weights=None, **kwargs):
    """MDP ResNet-50, the paper's backbone (headless, standard 7x7 stem, timm/torchvision key names).

    Random weights unless ``pretrained=True`` or ``weights=`` is given (module docstring). Default tag
    ``voc_ade20k_coco_200ep``: MDP on PASCAL VOC aug + ADE20K + COCO-Stuff, 200 epochs from
    random init; the paper reports 77.79 mIoU on VOC, 42.69 on ADE20K and 80.64 on Cityscapes after
    fine-tuning (supervised ImageNet R-50: 75.63 / 39.36).
    """
    return _create("mdp_resnet50", pretrained, weights, kwargs)


def mdp_resnet101(*, pretrained=None, weights=None, **kwargs):
    """MDP ResNet-101 (headless, timm/torchvision key names); same recipe tags as ``mdp_resnet50``."""
    return _create("mdp_resnet101", pretrained, weights, kwargs)


def mdp_resnet18(*, pretrained=None, weights=None, **kwargs):
    """MDP ResNet-18 (headless), the backbone of the trainer's CPU demo; same recipe tags as ``mdp_resnet50``."""
    return _create("mdp_resnet18", pretrained, weights, kwargs)


def mdp_prototype_segmenter(*, weights, restrict_to=None, output_stride=None, revision=None):
    """MDP backbone + projection head + class prototypes as a segmenter before any fine-tuning.

    ``weights`` (required: the prototypes only exist after MDP pretraining): an export folder with
    ``mdp_prototypes.safetensors``, an MDP pretraining checkpoint, a Hub repo
    ``ORG/NAME`` or ``mdp_resnet50[.tag]``. ``segmenter.segment(image)`` gives labels over the pretraining label
    space (global ids), or local ids of one dataset with ``restrict_to="voc"`` etc. (``mdp_hub.PrototypeSegmenter``).
    """
    from mdp_hub.segmenter import PrototypeSegmenter as _PrototypeSegmenter

    return _PrototypeSegmenter.from_pretrained(
        weights, restrict_to=restrict_to, output_stride=output_stride, revision=revision
    )
