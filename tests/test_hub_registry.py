"""timm registration: names, tags, truthful pretrained cfgs, configurable org, feature extraction."""

import os
import subprocess
import sys

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.models import _registry as timm_registry

import mdp_hub  # registers the models
from mdp_hub import catalog, install_export
from mdp_hub.cli import main
from mdp_hub.export import export


def test_every_arch_registers_every_recipe_tag_with_the_paper_default_first():
    registered = set(timm.list_models("mdp_*", include_tags=True))
    for name in ("mdp_resnet18", "mdp_resnet50", "mdp_resnet101"):
        assert {f"{name}.{r.tag}" for r in catalog.RECIPES} <= registered
        assert timm.models.get_pretrained_cfg(name).tag == "voc_ade20k_coco_200ep"
    assert "mdp_resnet50" in timm.list_models("mdp_*") and timm.list_models(module="mdp_resnet")
    assert not any(name.startswith("mdp_") for name in timm.list_models(module="resnet"))


LISTING = "import timm, mdp_hub; print(timm.list_pretrained('mdp_*'), timm.is_model_pretrained('mdp_resnet18'))"


def pretrained_listing_at_import(cache):
    env = dict(os.environ, HF_HUB_CACHE=str(cache), HF_HUB_OFFLINE="1")
    return subprocess.run(
        [sys.executable, "-c", LISTING], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()


def test_timm_lists_as_pretrained_only_tags_whose_weights_are_published_or_cached(tmp_path, monkeypatch):
    assert pretrained_listing_at_import(tmp_path / "cache") == "[] False"  # nothing is published yet
    torch.manual_seed(0)
    save_file(timm.create_model("resnet18", num_classes=0).state_dict(), str(tmp_path / "w.safetensors"))
    folder = export(tmp_path / "w.safetensors", tmp_path / "export")
    # install_export lists the tag in this process too: start from an empty listing (other tests installed weights
    # before) and keep this one from leaking into later tests
    monkeypatch.setattr(timm_registry, "_model_has_pretrained", set())
    default = f"mdp_resnet18.{catalog.DEFAULT_TAG}"
    install_export(folder, catalog.repo_id("mdp_resnet18", catalog.DEFAULT_TAG), cache_dir=tmp_path / "cache")
    assert timm.list_pretrained("mdp_*") == [default] and timm.is_model_pretrained("mdp_resnet18")
    assert pretrained_listing_at_import(tmp_path / "cache") == f"['{default}'] True"
    assert len(mdp_hub.list_weights(cache_dir=tmp_path / "cache")) == 33  # the catalogue lists every tag


def test_pretrained_cfg_fields_are_truthful():
    cfg = timm.models.get_pretrained_cfg("mdp_resnet50.in1k_voc_ade20k_200ep")
    assert cfg.hf_hub_id == f"{catalog.hub_org()}/mdp_resnet50.in1k_voc_ade20k_200ep"
    assert cfg.num_classes == 0 and cfg.input_size == (3, 512, 512) and cfg.crop_pct == 1.0
    assert cfg.mean == (0.485, 0.456, 0.406) and cfg.std == (0.229, 0.224, 0.225)
    assert cfg.license == "apache-2.0" and cfg.paper_ids == "arXiv:2106.04121"
    assert "ImageNet-1k supervised init" in cfg.description and "200 epochs" in cfg.description


def test_unknown_tag_is_rejected():
    with pytest.raises(RuntimeError, match="Invalid pretrained tag"):
        timm.create_model("mdp_resnet50.imagenet", pretrained=False)
    with pytest.raises(KeyError, match="unknown MDP weight tag 'imagenet'"):
        catalog.split_name("mdp_resnet50.imagenet")


def test_models_are_plain_timm_resnets_with_features_and_output_stride():
    with torch.device("meta"):
        ours = timm.create_model("mdp_resnet101")
        theirs = timm.create_model("resnet101", num_classes=0)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    model = timm.create_model("mdp_resnet18", features_only=True, out_indices=(1, 2, 3, 4), output_stride=16)
    assert model.feature_info.channels() == [64, 128, 256, 512]
    assert model.feature_info.reduction() == [4, 8, 16, 16]
    assert [f.shape[-1] for f in model(torch.randn(1, 3, 64, 64))] == [16, 8, 4, 4]
    config = timm.data.resolve_model_data_config(timm.create_model("mdp_resnet18"))
    assert config["input_size"] == (3, 512, 512) and config["interpolation"] == "bilinear"


def test_org_comes_from_the_environment():
    code = "import timm, mdp_hub; print(timm.models.get_pretrained_cfg('mdp_resnet50.voc_200ep').hf_hub_id)"
    env = dict(os.environ, MDP_HUB_ORG="acme-lab")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "acme-lab/mdp_resnet50.voc_200ep"


def test_catalog_holds_the_papers_numbers_for_resnet50_only():
    assert catalog.RECIPES[0].tag == catalog.DEFAULT_TAG == "voc_ade20k_coco_200ep"
    assert catalog.paper_miou("mdp_resnet50", "voc_ade20k_coco_200ep") == {
        "voc": 77.79,
        "ade20k": 42.69,
        "cityscapes": 80.64,
        "coco_stuff": 38.37,
    }
    assert catalog.paper_miou("mdp_resnet50", "in1k_voc_ade20k_100ep") == {"voc": 75.70, "ade20k": 41.57}
    assert catalog.paper_miou("mdp_resnet101", "voc_ade20k_coco_200ep") == {}
    assert len({r.tag for r in catalog.RECIPES}) == len(catalog.RECIPES)


def test_cli_list_shows_tags_recipes_miou_and_cache_state(capsys, tmp_path):
    assert main(["list", "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| mdp_resnet50.voc_ade20k_coco_200ep "))
    assert "COCO-Stuff 164k" in row and "| 200 |" in row and "PASCAL 77.79" in row and row.endswith("| no | no |")
