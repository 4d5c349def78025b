"""segmentation_models_pytorch builds and runs MDP encoders through its timm universal encoder."""

import huggingface_hub
import pytest
import timm
import torch
from safetensors.torch import save_file

import mdp_hub

smp = pytest.importorskip("segmentation_models_pytorch")


def test_unet_with_tu_mdp_resnet50_builds_and_runs():
    model = smp.Unet("tu-mdp_resnet50", encoder_weights=None, classes=3).eval()
    assert model.encoder.out_channels == [3, 64, 256, 512, 1024, 2048]
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 3, 64, 64)


def test_deeplab_encoder_gets_the_cached_mdp_weights(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    save_file(timm.create_model("resnet18", num_classes=0).state_dict(), str(tmp_path / "w.safetensors"))
    folder = mdp_hub.export(tmp_path / "w.safetensors", tmp_path / "out", tag="random_weights")
    mdp_hub.install_export(folder, timm.models.get_pretrained_cfg("mdp_resnet18.voc_200ep").hf_hub_id)
    model = smp.DeepLabV3Plus("tu-mdp_resnet18.voc_200ep", encoder_weights=True, encoder_output_stride=16, classes=2)
    expected = timm.create_model("local-dir:" + str(folder), pretrained=True).state_dict()
    encoder_state = model.encoder.model.state_dict()
    assert all(torch.equal(encoder_state[k], expected[k]) for k in encoder_state)
    assert smp.encoders.get_preprocessing_params("tu-mdp_resnet18.voc_200ep")["mean"] == [0.485, 0.456, 0.406]
