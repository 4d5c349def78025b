"""Untrusted weights: tampered model.safetensors refused on every mdp_hub load path, code-carrying pickles refused
without running, exports free of pickles. Counted figures: ``TAMPER_ROUTES`` and ``PICKLE_ROUTES``."""

import importlib.util
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

from mdp_hub import CheckpointError, PrototypeSegmenter, install_export
from mdp_hub.checkpoint_io import load_file as load_weights_file
from mdp_hub.convert import convert
from mdp_hub.export import export
from training.engine.checkpoint import CheckpointError as TrainCheckpointError
from training.engine.checkpoint import load_checkpoint
from training.seg.models import resolve_init

from test_hub_load import offline  # noqa: F401  (fixture: HF offline, private empty cache)
from prototype_checkpoints import build_method_with_prototypes, save_checkpoint

REPO_DIR = Path(__file__).resolve().parents[1]
TAG = "voc_ade20k_200ep"
PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")  # a raw pickle (protocol >= 2) and torch.save's zip container


class _TouchesAFile:
    """Unpickling this object would create a file: proves whether code ran during loading."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _hubconf():
    spec = importlib.util.spec_from_file_location("mdp_hubconf_reliability", REPO_DIR / "hubconf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tamper(weights: Path) -> None:
    """Change one weight by a tiny amount and rewrite a valid safetensors file: only the checksum can tell."""
    tensors = load_file(str(weights))
    tensors["conv1.weight"][0, 0, 0, 0] += 1e-3
    save_file(tensors, str(weights), metadata={"format": "pt"})


def _via_hub_cache(folder: Path, cache: Path):
    repo = timm.get_pretrained_cfg(f"mdp_resnet18.{TAG}").hf_hub_id
    snapshot = install_export(folder, repo)
    return snapshot, lambda: timm.create_model(f"mdp_resnet18.{TAG}", pretrained=True)


# route name -> (where the weights to tamper live, the load) for an export folder
TAMPER_ROUTES = {
    "timm pretrained_cfg_overlay file": lambda folder, cache: (folder, lambda: timm.create_model(
        "mdp_resnet18", pretrained=True, pretrained_cfg_overlay=dict(file=str(folder / "model.safetensors")))),
    "timm registered tag from the Hub cache": _via_hub_cache,
    "torch.hub entrypoint with an export folder": lambda folder, cache: (
        folder, lambda: _hubconf().mdp_resnet18(weights=str(folder))),
    "PrototypeSegmenter export folder": lambda folder, cache: (
        folder, lambda: PrototypeSegmenter.from_pretrained(folder)),
    "PrototypeSegmenter Hub repo": lambda folder, cache: (
        install_export(folder, "someone/mdp_resnet18.custom"),
        lambda: PrototypeSegmenter.from_pretrained("someone/mdp_resnet18.custom")),
    "convert export folder": lambda folder, cache: (
        folder, lambda: convert(folder, "torchvision", cache.parent / "converted.pth")),
    "fine-tuning init from an export folder": lambda folder, cache: (folder, lambda: resolve_init(str(folder), None)),
}


@pytest.fixture(scope="module")
def export_source(tmp_path_factory):
    checkpoint = tmp_path_factory.mktemp("ckpt") / "last.pth"
    method, _ = build_method_with_prototypes()
    save_checkpoint(method, checkpoint)
    return checkpoint


@pytest.mark.parametrize("route", sorted(TAMPER_ROUTES))
def test_tampered_weights_are_refused_naming_the_recorded_checksum(route, export_source, offline, tmp_path):
    folder = export(export_source, tmp_path / "export", tag="tiny_run")
    weights_dir, load = TAMPER_ROUTES[route](folder, offline)
    load()  # the intact export loads on this route
    _tamper(Path(weights_dir) / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"model\.safetensors: sha256 [0-9a-f]{64} differs from [0-9a-f]{64} "
                                              r"recorded in .*config\.json.*refusing to load"):
        load()


def _evil_pth(folder: Path, marker: Path) -> Path:
    path = folder / "evil.pth"
    torch.save({"state_dict": timm.create_model("resnet18", num_classes=0).state_dict(),
                "payload": _TouchesAFile(marker)}, path)
    return path


PICKLE_ROUTES = {
    "mdp_hub.checkpoint_io.load_file": (lambda path: load_weights_file(path), CheckpointError),
    "training checkpoint resume": (lambda path: load_checkpoint(path), TrainCheckpointError),
    "mdp-hub export": (lambda path: export(path, path.parent / "out"), CheckpointError),
    "mdp-hub convert": (lambda path: convert(path, "torchvision", path.parent / "c.pth"), CheckpointError),
    "fine-tuning init": (lambda path: resolve_init(str(path), "resnet18"), CheckpointError),
    "timm pretrained_cfg_overlay file": (lambda path: timm.create_model(
        "mdp_resnet18", pretrained=True, pretrained_cfg_overlay=dict(file=str(path))), CheckpointError),
}


@pytest.mark.parametrize("route", sorted(PICKLE_ROUTES))
def test_pickle_carrying_code_is_refused_without_running_it(route, tmp_path, offline):
    marker = tmp_path / "code_ran"
    path = _evil_pth(tmp_path, marker)
    load, error = PICKLE_ROUTES[route]
    with pytest.raises(error, match="evil.pth"):
        load(path)
    assert not marker.exists(), f"{route} executed code from the pickle"


def test_exports_contain_no_pickles(export_source, tmp_path):
    folder = export(export_source, tmp_path / "export", tag="tiny_run")
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["README.md", "config.json", "mdp_prototypes.safetensors", "model.safetensors"]
    for path in folder.iterdir():
        head = path.read_bytes()[:4]
        assert not head.startswith(PICKLE_MAGIC), f"{path.name} starts like a pickle"
        if path.suffix == ".safetensors":
            load_file(str(path))  # parses as safetensors: an 8-byte header length then JSON, no code
