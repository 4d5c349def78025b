"""Heads, output shapes and every init path of the downstream model, each loading strictly."""

import json

import pytest
import timm
import torch
from safetensors.torch import save_file

from mdp_hub.errors import CheckpointError, UserError
from training.seg.models import SegModelConfig, build_segmentation_model, create_segmentation_model

ARCH = "resnet18"


def small_config(**overrides):
    return SegModelConfig(**{"arch": ARCH, "head_channels": 16, "aux_channels": 8, **overrides})


@pytest.fixture(scope="module")
def source_backbone():
    """A headless resnet18 with recognisable (non-default) weights."""
    torch.manual_seed(3)
    model = timm.create_model(ARCH, num_classes=0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_()
    return model


def assert_backbone_equals(model, source):
    loaded = model.backbone.state_dict()
    for key, value in source.state_dict().items():
        assert torch.equal(loaded[key], value), key


@pytest.mark.parametrize("head", ["deeplabv3", "fcn"])
def test_heads_output_stride_8_and_aux(head):
    model = build_segmentation_model(small_config(head=head, aux_head=True), num_classes=5, arch=ARCH)
    image = torch.randn(2, 3, 48, 64)
    out = model(image)
    assert out["out"].shape == (2, 5, 48, 64) and out["aux"].shape == (2, 5, 48, 64)
    assert [f.shape[-1] for f in model.backbone(image)] == [8, 8]
    model.eval()
    assert set(model(image)) == {"out"}
    keys = model.state_dict().keys()
    assert any(k.startswith("backbone.layer4.") for k in keys)
    assert any(k.startswith("decode_head.") for k in keys) and any(k.startswith("auxiliary_head.") for k in keys)


def test_output_stride_16_changes_strides_not_weights():
    os8 = build_segmentation_model(small_config(), num_classes=5, arch=ARCH)
    os16 = build_segmentation_model(small_config(output_stride=16), num_classes=5, arch=ARCH)
    image = torch.randn(2, 3, 64, 64)
    assert [f.shape[-1] for f in os16.backbone(image)] == [4, 4]
    assert os16(image)["out"].shape == (2, 5, 64, 64)
    assert {k: v.shape for k, v in os8.state_dict().items()} == {k: v.shape for k, v in os16.state_dict().items()}
    with pytest.raises(ValueError, match="output_stride must be 8 or 16, got 32"):
        build_segmentation_model(small_config(output_stride=32), num_classes=5, arch=ARCH)


def test_aspp_matches_mmseg_layout():
    model = build_segmentation_model(SegModelConfig(), num_classes=3, arch=ARCH)
    head = model.decode_head
    assert [branch[0].dilation[0] for branch in head.branches] == [1, 12, 24, 36]
    assert head.bottleneck[0].out_channels == 512 and head.dropout.p == 0.1


def test_scratch_needs_no_weights():
    model, arch = create_segmentation_model(small_config(), num_classes=4, init="scratch")
    assert arch == ARCH


def test_plain_safetensors_state_dict(tmp_path, source_backbone):
    path = tmp_path / "backbone.safetensors"
    save_file(source_backbone.state_dict(), str(path))
    model, _ = create_segmentation_model(small_config(), num_classes=4, init=str(path))
    assert_backbone_equals(model, source_backbone)


def test_plain_state_dict_with_classifier_and_no_arch_is_an_error(tmp_path, source_backbone):
    full = timm.create_model(ARCH)
    path = tmp_path / "full.pth"
    torch.save(full.state_dict(), path)
    model, _ = create_segmentation_model(small_config(), num_classes=4, init=str(path))  # fc.* dropped
    with pytest.raises(ValueError, match="set model.arch"):
        create_segmentation_model(small_config(arch=None), num_classes=4, init=str(path))


def test_training_checkpoint(tmp_path, source_backbone):
    model_state = {f"encoder.backbone.{k}": v for k, v in source_backbone.state_dict().items()}
    model_state["memory.prototypes"] = torch.zeros(3, 8)
    checkpoint = {
        "format": "mdp-hub/train-checkpoint",
        "format_version": 1,
        "kind": "pretrain",
        "arch": ARCH,
        "backbone_prefix": "encoder.backbone.",
        "model": model_state,
        "step": 10,
    }
    path = tmp_path / "last.pth"
    torch.save(checkpoint, path)
    model, arch = create_segmentation_model(small_config(arch=None), num_classes=4, init=str(path))
    assert arch == ARCH
    assert_backbone_equals(model, source_backbone)
    checkpoint["arch"] = "resnet34"
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointError, match="weights do not fit"):
        create_segmentation_model(small_config(arch=None), num_classes=4, init=str(path))


def test_export_folder_and_local_dir(tmp_path, source_backbone):
    folder = tmp_path / "export"
    timm.models.save_for_hf(source_backbone, str(folder), safe_serialization=True)
    assert json.loads((folder / "config.json").read_text())["architecture"] == ARCH
    for init in (str(folder), f"local-dir:{folder}"):
        model, arch = create_segmentation_model(small_config(arch=None), num_classes=4, init=init)
        assert arch == ARCH
        assert_backbone_equals(model, source_backbone)


def test_wrong_architecture_is_a_clear_error(tmp_path):
    other = timm.create_model("resnet34", num_classes=0)
    path = tmp_path / "r34.safetensors"
    save_file(other.state_dict(), str(path))
    with pytest.raises(CheckpointError, match=r"init='.*r34.safetensors': weights do not fit .*unexpected"):
        create_segmentation_model(small_config(), num_classes=4, init=str(path))
    folder = tmp_path / "r34"
    timm.models.save_for_hf(other, str(folder), safe_serialization=True)
    # a user error (one line from the fine-tuning command), not a bug's traceback
    with pytest.raises(UserError, match="disagrees .* drop --set model.arch or set it to"):
        create_segmentation_model(small_config(), num_classes=4, init=str(folder))


def test_missing_file_and_missing_export_parts(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        create_segmentation_model(small_config(), num_classes=4, init=str(tmp_path / "nope.pth"))
    with pytest.raises(FileNotFoundError, match="config.json"):
        create_segmentation_model(small_config(), num_classes=4, init=str(tmp_path))
