"""Safe reading: pickles with code, truncated files, missing files, wrappers and prefixes, strict verification."""

from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from mdp_hub.checkpoint_io import (
    load_file,
    load_into,
    match_architecture,
    read_backbone_state_dict,
    strip_wrapper_prefixes,
)
from mdp_hub.errors import CheckpointError


class _TouchesAFile:
    """Unpickling this object would create a file: proves whether code ran during loading."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.fixture(scope="module")
def resnet18_state():
    torch.manual_seed(0)
    return timm.create_model("resnet18", num_classes=0).state_dict()


def test_pickle_with_code_is_refused_without_running_it(tmp_path, resnet18_state):
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": dict(resnet18_state), "payload": _TouchesAFile(marker)}, path)
    with pytest.raises(CheckpointError, match=r"evil\.pth: refused to unpickle.*weights_only=True"):
        load_file(path)
    assert not marker.exists()


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_truncated_files_are_named(tmp_path, resnet18_state, suffix):
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file(resnet18_state, str(path))
    else:
        torch.save(resnet18_state, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=rf"weights\{suffix}: not a readable .*truncated or corrupt"):
        load_file(path)


def test_missing_and_unsupported_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.safetensors: no such weights file"):
        load_file(tmp_path / "absent.safetensors")
    (tmp_path / "weights.npz").write_bytes(b"PK")
    with pytest.raises(CheckpointError, match="weights.npz: unsupported weights file type"):
        load_file(tmp_path / "weights.npz")
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="list.pth: expected a dict"):
        load_file(tmp_path / "list.pth")


def test_wrappers_and_prefixes_are_stripped(tmp_path, resnet18_state):
    wrapped = {f"module._orig_mod.backbone.{k}": v for k, v in resnet18_state.items()}
    wrapped["module.decode_head.conv_seg.weight"] = torch.zeros(3, 8, 1, 1)
    torch.save({"state_dict": wrapped, "meta": {"epoch": 3}}, tmp_path / "finetuned.pth")
    backbone = read_backbone_state_dict(tmp_path / "finetuned.pth")
    assert set(backbone) == set(resnet18_state)
    assert all(torch.equal(backbone[k], v) for k, v in resnet18_state.items())
    compiled_submodule = strip_wrapper_prefixes({"encoder.backbone._orig_mod.conv1.weight": torch.zeros(1)})
    assert list(compiled_submodule) == ["encoder.backbone.conv1.weight"]
    with pytest.raises(CheckpointError, match="two entries map to 'a'"):
        strip_wrapper_prefixes({"a": torch.zeros(1), "module.a": torch.zeros(1)})


def test_training_checkpoint_uses_its_declared_prefix(tmp_path, resnet18_state):
    model = {f"encoder.backbone.{k}": v for k, v in resnet18_state.items()}
    model.update({f"momentum_encoder.backbone.{k}": torch.zeros_like(v) for k, v in resnet18_state.items()})
    torch.save(
        {
            "format": "mdp-hub/train-checkpoint",
            "arch": "resnet18",
            "backbone_prefix": "encoder.backbone.",
            "model": model,
        },
        tmp_path / "last.pth",
    )
    backbone = read_backbone_state_dict(tmp_path / "last.pth")
    assert all(torch.equal(backbone[k], v) for k, v in resnet18_state.items())
    torch.save({"format": "mdp-hub/train-checkpoint", "model": model}, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError, match="broken.pth: training checkpoint without backbone_prefix"):
        read_backbone_state_dict(tmp_path / "broken.pth")


def test_non_tensor_values_are_refused(tmp_path):
    torch.save({"conv1.weight": torch.zeros(1), "epoch": 3}, tmp_path / "mixed.pth")
    with pytest.raises(CheckpointError, match="mixed.pth: expected only tensors.*epoch"):
        read_backbone_state_dict(tmp_path / "mixed.pth")


def test_load_into_is_strict_and_names_the_file(tmp_path, resnet18_state):
    save_file(resnet18_state, str(tmp_path / "r18.safetensors"))
    model = load_into(timm.create_model("resnet18", num_classes=0), tmp_path / "r18.safetensors")
    assert torch.equal(model.conv1.weight, resnet18_state["conv1.weight"])
    with torch.device("meta"):
        resnet50 = timm.create_model("resnet50", num_classes=0)
    with pytest.raises(CheckpointError, match=r"r18\.safetensors: weights do not fit ResNet: missing .*shape mismatch"):
        load_into(resnet50, tmp_path / "r18.safetensors")


def test_match_architecture(resnet18_state):
    assert match_architecture(resnet18_state, ["resnet50", "resnet18"], source="x") == "resnet18"
    partial = {k: v for k, v in resnet18_state.items() if not k.startswith("layer4")}
    with pytest.raises(CheckpointError, match="x: the tensors match none.*closest is resnet18: missing"):
        match_architecture(partial, ["resnet18", "resnet50"], source="x")
