"""Untrusted weights: tampered model.safetensors refused on every mdp_hub load path, code-carrying pickles refused
without running, exports free of pickles. Counted figures: ``TAMPER_ROUTES`` and ``PICKLE_ROUTES``."""

import importlib.util
import json
from pathlib import Path

import pytest
import timm
import torch
from prototype_checkpoints import build_method_with_prototypes, save_checkpoint
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from test_hub_load import offline  # noqa: F401  (fixture: HF offline, private empty cache)

from mdp_hub import CheckpointError, PrototypeSegmenter, install_export
from mdp_hub.checkpoint_io import load_file as load_weights_file
from mdp_hub.convert import convert
from mdp_hub.export import export
from mdp_hub.integrity import class_names_sha256, sha256_file, verify_export_files
from mdp_hub.publish import plan_upload
from training.engine.checkpoint import CheckpointError as TrainCheckpointError
from training.engine.checkpoint import load_checkpoint
from training.pretraining.model import load_pretrained_backbone
from training.seg.models import resolve_init

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


def _rewrite(path: Path, change) -> None:
    """Apply ``change`` to the tensors of ``path`` and rewrite it as a valid safetensors file with the same
    metadata: only a checksum can tell."""
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(str(path))
    change(tensors)
    save_file(tensors, str(path), metadata=metadata)


def _change_one_weight(folder: Path) -> None:
    _rewrite(folder / "model.safetensors", lambda t: t["conv1.weight"][0, 0, 0, :1].add_(1e-3))


def _swap_two_prototypes(folder: Path) -> None:  # the first class's pixels would be named after the second's
    def swap(tensors):
        tensors["prototypes"][[0, 1]] = tensors["prototypes"][[1, 0]]

    _rewrite(folder / "mdp_prototypes.safetensors", swap)


def _swap_two_class_names(folder: Path) -> None:  # "bus" printed where the model sees a "car"
    config = json.loads((folder / "config.json").read_text())
    names = config["mdp"]["label_space"]["class_names"]
    names[0], names[1] = names[1], names[0]
    (folder / "config.json").write_text(json.dumps(config))


def _rotate_one_datasets_class_names(folder: Path) -> None:  # "aeroplane 91%" reported as "bicycle 91%"
    config = json.loads((folder / "config.json").read_text())
    names = config["mdp"]["label_space"]["datasets"][0]["class_names"]
    names.append(names.pop(0))
    (folder / "config.json").write_text(json.dumps(config, indent=2))


def _change_the_normalisation(folder: Path) -> None:  # every prediction made on differently scaled pixels
    config = json.loads((folder / "config.json").read_text())
    config["pretrained_cfg"]["mean"][0] += 0.1
    (folder / "config.json").write_text(json.dumps(config, indent=2))


_CONFIG_REFUSAL = r"config\.json: what it says is not what mdp_prototypes\.safetensors was exported with"
# what is changed -> (the change, the refusal); each is a valid file of its kind
TAMPERS = {
    "one weight": (
        _change_one_weight,
        r"model\.safetensors: sha256 [0-9a-f]{64} differs from [0-9a-f]{64} "
        r"recorded in .*config\.json",
    ),
    "two prototype rows swapped": (
        _swap_two_prototypes,
        r"mdp_prototypes\.safetensors: sha256 [0-9a-f]{64} "
        r"differs from [0-9a-f]{64} recorded in .*config\.json",
    ),
    "two class names swapped": (_swap_two_class_names, _CONFIG_REFUSAL),
    "one dataset's class names rotated": (_rotate_one_datasets_class_names, _CONFIG_REFUSAL),
    "the normalisation mean changed": (_change_the_normalisation, _CONFIG_REFUSAL),
}


def _via_hub_cache(folder: Path, cache: Path):
    repo = timm.get_pretrained_cfg(f"mdp_resnet18.{TAG}").hf_hub_id
    snapshot = install_export(folder, repo)
    return snapshot, lambda: timm.create_model(f"mdp_resnet18.{TAG}", pretrained=True)


# route name -> (where the weights to tamper live, the load) for an export folder
TAMPER_ROUTES = {
    "timm pretrained_cfg_overlay file": lambda folder, cache: (
        folder,
        lambda: timm.create_model(
            "mdp_resnet18", pretrained=True, pretrained_cfg_overlay=dict(file=str(folder / "model.safetensors"))
        ),
    ),
    "timm registered tag from the Hub cache": _via_hub_cache,
    "torch.hub entrypoint with an export folder": lambda folder, cache: (
        folder,
        lambda: _hubconf().mdp_resnet18(weights=str(folder)),
    ),
    "PrototypeSegmenter export folder": lambda folder, cache: (
        folder,
        lambda: PrototypeSegmenter.from_pretrained(folder),
    ),
    "PrototypeSegmenter Hub repo": lambda folder, cache: (
        install_export(folder, "someone/mdp_resnet18.custom"),
        lambda: PrototypeSegmenter.from_pretrained("someone/mdp_resnet18.custom"),
    ),
    "convert export folder": lambda folder, cache: (
        folder,
        lambda: convert(folder, "torchvision", cache.parent / "converted.pth"),
    ),
    "fine-tuning init from an export folder": lambda folder, cache: (folder, lambda: resolve_init(str(folder), None)),
    "pretraining init.pretrained": lambda folder, cache: (
        folder,
        lambda: load_pretrained_backbone(
            timm.create_model("resnet18", num_classes=0, global_pool=""), str(folder / "model.safetensors")
        ),
    ),
    "mdp-hub install-cache": lambda folder, cache: (folder, lambda: install_export(folder, "someone/copy")),
    "mdp-hub push (and --dry-run)": lambda folder, cache: (folder, lambda: plan_upload(folder, "someone/copy")),
    "mdp-hub verify": lambda folder, cache: (folder, lambda: verify_export_files(folder)),
}
# the routes that read the prototypes and class names (the others read the backbone only)
PROTOTYPE_ROUTES = (
    "PrototypeSegmenter export folder",
    "PrototypeSegmenter Hub repo",
    "mdp-hub install-cache",
    "mdp-hub push (and --dry-run)",
    "mdp-hub verify",
)
TAMPER_CASES = [
    (tamper, route)
    for tamper in TAMPERS
    for route in sorted(TAMPER_ROUTES)
    if tamper == "one weight" or route in PROTOTYPE_ROUTES
]


@pytest.fixture(scope="module")
def export_source(tmp_path_factory):
    checkpoint = tmp_path_factory.mktemp("ckpt") / "last.pth"
    method, _ = build_method_with_prototypes()
    save_checkpoint(method, checkpoint)
    return checkpoint


@pytest.mark.parametrize("tamper, route", TAMPER_CASES)
def test_a_tampered_export_file_is_refused_naming_the_record(tamper, route, export_source, offline, tmp_path):
    folder = export(export_source, tmp_path / "export", tag="tiny_run")
    files_dir, load = TAMPER_ROUTES[route](folder, offline)
    load()  # the intact export loads on this route
    change, refusal = TAMPERS[tamper]
    change(Path(files_dir))
    with pytest.raises(CheckpointError, match=refusal):
        load()


def _evil_pth(folder: Path, marker: Path) -> Path:
    path = folder / "evil.pth"
    torch.save(
        {"state_dict": timm.create_model("resnet18", num_classes=0).state_dict(), "payload": _TouchesAFile(marker)},
        path,
    )
    return path


PICKLE_ROUTES = {
    "mdp_hub.checkpoint_io.load_file": (lambda path: load_weights_file(path), CheckpointError),
    "training checkpoint resume": (lambda path: load_checkpoint(path), TrainCheckpointError),
    "mdp-hub export": (lambda path: export(path, path.parent / "out"), CheckpointError),
    "mdp-hub convert": (lambda path: convert(path, "torchvision", path.parent / "c.pth"), CheckpointError),
    "fine-tuning init": (lambda path: resolve_init(str(path), "resnet18"), CheckpointError),
    "timm pretrained_cfg_overlay file": (
        lambda path: timm.create_model("mdp_resnet18", pretrained=True, pretrained_cfg_overlay=dict(file=str(path))),
        CheckpointError,
    ),
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


def test_an_export_older_than_the_config_digest_is_still_checked_for_its_class_names(export_source, tmp_path):
    folder = export(export_source, tmp_path / "export", tag="tiny_run")
    # as exports were written before the whole config.json was covered: the class names' sha256 only
    prototypes, config_path = folder / "mdp_prototypes.safetensors", folder / "config.json"
    config = json.loads(config_path.read_text())
    save_file(
        load_file(str(prototypes)),
        str(prototypes),
        metadata={"class_names_sha256": class_names_sha256(config["mdp"]["label_space"]["class_names"])},
    )
    config["mdp"]["files"]["mdp_prototypes.safetensors"] = sha256_file(prototypes)
    config_path.write_text(json.dumps(config, indent=2))
    PrototypeSegmenter.from_pretrained(folder)
    _change_the_normalisation(folder)  # not covered by the older record
    PrototypeSegmenter.from_pretrained(folder)
    _swap_two_class_names(folder)
    with pytest.raises(CheckpointError, match=r"config\.json: what it says \(its class names\) is not what"):
        PrototypeSegmenter.from_pretrained(folder)
