"""Exports in Hugging Face transformers, offline: AutoModel / TimmWrapper, AutoBackbone / TimmBackbone, and UperNet
with the export as its timm backbone, from an export folder and from a Hub repo in the local cache."""

import torch
from test_hub_load import assert_same_weights, exported, offline  # noqa: F401  (fixtures)
from transformers import (
    AutoBackbone,
    AutoModel,
    TimmBackbone,
    TimmBackboneConfig,
    TimmWrapperModel,
    UperNetConfig,
    UperNetForSemanticSegmentation,
)

from mdp_hub import install_export

REPO = "someone/mdp_resnet18.custom"
OUT_INDICES = (1, 2, 3, 4)


def assert_backbone_weights(backbone, expected):
    """The timm tensors inside a transformers ``TimmBackbone`` equal the export's, under their timm names."""
    weights = {key.removeprefix("_backbone."): value for key, value in backbone.state_dict().items()}
    assert all(torch.equal(weights[key], value) for key, value in expected.items())


def test_automodel_loads_an_export_folder_as_timm_wrapper(exported, offline):  # noqa: F811
    folder, expected = exported
    for model in (AutoModel.from_pretrained(folder), TimmWrapperModel.from_pretrained(folder)):
        assert type(model).__name__ == "TimmWrapperModel"
        assert_same_weights(model.timm_model, expected)
        out = model.eval()(torch.randn(2, 3, 64, 64))
        assert out.last_hidden_state.shape == (2, 512, 2, 2) and out.pooler_output.shape == (2, 512)


def test_automodel_and_timm_backbone_load_a_hub_repo_from_the_offline_cache(exported, offline):  # noqa: F811
    folder, expected = exported
    install_export(folder, REPO)
    assert_same_weights(AutoModel.from_pretrained(REPO).timm_model, expected)
    backbone = TimmBackbone.from_pretrained(f"hf-hub:{REPO}", out_indices=OUT_INDICES)
    assert backbone.channels == [64, 128, 256, 512]
    assert_backbone_weights(backbone, expected)


def test_auto_backbone_gives_the_four_feature_maps(exported, offline):  # noqa: F811
    folder, expected = exported
    config = TimmBackboneConfig(backbone=f"local-dir:{folder}", out_indices=OUT_INDICES)
    backbone = AutoBackbone.from_config(config, pretrained=True).eval()
    assert_backbone_weights(backbone, expected)
    maps = backbone(torch.randn(1, 3, 64, 64)).feature_maps
    assert [tuple(m.shape) for m in maps] == [(1, 64, 16, 16), (1, 128, 8, 8), (1, 256, 4, 4), (1, 512, 2, 2)]


def test_upernet_segments_with_the_export_as_timm_backbone(exported, offline, tmp_path):  # noqa: F811
    folder, expected = exported
    install_export(folder, REPO)
    backbone_config = TimmBackboneConfig(backbone=f"hf-hub:{REPO}", out_indices=OUT_INDICES)
    model = UperNetForSemanticSegmentation(
        UperNetConfig(backbone_config=backbone_config, num_labels=5, hidden_size=32, use_auxiliary_head=False)
    )
    # transformers builds a config's backbone with random weights; the pretrained one replaces it
    model.backbone = AutoBackbone.from_config(backbone_config, pretrained=True)
    assert model.backbone.channels == [64, 128, 256, 512]
    logits = model.eval()(torch.randn(1, 3, 64, 64)).logits
    assert logits.shape == (1, 5, 64, 64) and torch.isfinite(logits).all()
    # the weights travel with the segmentation model through save_pretrained / from_pretrained
    model.save_pretrained(tmp_path / "upernet")
    reloaded = UperNetForSemanticSegmentation.from_pretrained(tmp_path / "upernet").eval()
    assert_backbone_weights(reloaded.backbone, expected)
    saved = model.state_dict()
    assert all(torch.equal(saved[key], value) for key, value in reloaded.state_dict().items())
