"""Conversion to torchvision, MMSegmentation and detectron2 formats."""

import pickle

import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file

from mdp_hub import CheckpointError, convert
from mdp_hub.cli import main
from mdp_hub.convert import to_detectron2_name


@pytest.fixture(scope="module")
def resnet50_weights(tmp_path_factory):
    """The one ResNet-50 of this suite: random headless timm weights as model.safetensors."""
    torch.manual_seed(0)
    model = timm.create_model("resnet50", num_classes=0).eval()
    path = tmp_path_factory.mktemp("r50") / "model.safetensors"
    save_file(model.state_dict(), str(path))
    return path, model


def test_torchvision_file_loads_with_only_fc_missing_and_same_outputs(resnet50_weights, tmp_path):
    src, timm_model = resnet50_weights
    out = convert(src.parent, "torchvision", tmp_path / "tv.pth")
    state_dict = torch.load(out, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state_dict.values())
    with torch.device("meta"):  # skip the random init: every tensor but fc is assigned from the file
        tv = torchvision.models.resnet50(weights=None).eval()
    result = tv.load_state_dict(state_dict, strict=False, assign=True)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and result.unexpected_keys == []
    tv.fc = torch.nn.Identity()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(tv(images), timm_model(images), rtol=0, atol=1e-5)


def test_mmseg_file_is_a_plain_tensor_dict_in_resnet_names(resnet50_weights, tmp_path):
    src, timm_model = resnet50_weights
    state_dict = torch.load(convert(src, "mmseg", tmp_path / "mmseg.pth"), weights_only=True)
    assert set(state_dict) == set(timm_model.state_dict())
    assert "layer1.0.downsample.0.weight" in state_dict and not any(k.startswith("stem.") for k in state_dict)


def test_detectron2_names_and_values(resnet50_weights, tmp_path):
    src, timm_model = resnet50_weights
    assert main(["convert", str(src), "--to", "detectron2", str(tmp_path / "d2.pkl")]) == 0
    with open(tmp_path / "d2.pkl", "rb") as handle:
        payload = pickle.load(handle)  # our own file, written a line above
    assert payload["matching_heuristics"] is True and payload["__author__"] == "mdp-hub"
    weights = payload["model"]
    expected = {k: v for k, v in timm_model.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert len(weights) == len(expected)
    for name, value in expected.items():
        assert (weights[to_detectron2_name(name)] == value.numpy()).all(), name
    assert {
        "stem.conv1.weight",
        "stem.conv1.norm.running_var",
        "res2.0.shortcut.weight",
        "res2.0.shortcut.norm.bias",
        "res5.2.conv3.norm.weight",
        "res3.1.conv2.weight",
    } <= set(weights)


def test_convert_refuses_unknown_format_and_wrong_architecture(tmp_path):
    partial = {k: v for k, v in timm.create_model("resnet18", num_classes=0).state_dict().items() if "layer4" not in k}
    save_file(partial, str(tmp_path / "partial.safetensors"))
    with pytest.raises(CheckpointError, match="partial.safetensors: the tensors match none"):
        convert(tmp_path / "partial.safetensors", "torchvision", tmp_path / "out.pth")
    assert not (tmp_path / "out.pth").exists()
    with pytest.raises(ValueError, match="unknown format 'onnx'"):
        convert(tmp_path / "partial.safetensors", "onnx", tmp_path / "out.onnx")
