"""Export: training checkpoint / state dict -> Hub folder; determinism, round trip, card, prototypes, CLI."""

import hashlib
import json
import os
import re

import huggingface_hub
import pytest
import timm
import torch
import yaml
from safetensors.torch import load_file, save_file

from mdp_hub import CheckpointError, PrototypesNotFoundError, catalog, install_export, load_prototypes
from mdp_hub.cli import main
from mdp_hub.export import export
from mdp_hub.model_card import CardInfo, render_card
from mdp_hub.provenance import RecipeClaimError

CLASS_NAMES = ["voc/background", "voc/cat", "ade20k/wall", "ade20k/sky", "ade20k/floor"]
LABEL_SPACE = {
    "format": "mdp-hub/label-space",
    "format_version": 1,
    "ignore_index": -1,
    "num_classes": 5,
    "datasets": [
        {"name": "voc", "offset": 0, "class_names": ["background", "cat"]},
        {"name": "ade20k", "offset": 2, "class_names": ["wall", "sky", "floor"]},
    ],
    "unify_map": {},
    "class_names": CLASS_NAMES,
}


TAG = "voc_ade20k_200ep"  # the recipe the checkpoints below record a run of (VOC aug + ADE20K, 200 epochs)


def run_config(name=TAG, epochs=200, max_steps=0):
    return {
        "name": name,
        "method": {"name": "mdp", "options": {}},
        "train": {"epochs": epochs, "max_steps": max_steps},
        "data": {"datasets": ["voc_aug:/data/VOCdevkit/VOC2012", "ade20k:/data/ADEChallengeData2016"], "unlabeled": []},
        "init": {"pretrained": ""},
    }


def training_checkpoint(path, *, with_prototypes=True, seed=0, steps_done=120, config=None):
    """A pretraining checkpoint in the format of docs/ARCHITECTURE.md around a random timm resnet18: a run of the
    TAG recipe (120 steps, 200 epochs) that did ``steps_done`` steps."""
    config = config or run_config()
    epochs = config["train"]["epochs"]
    torch.manual_seed(seed)
    backbone = timm.create_model("resnet18", num_classes=0).state_dict()
    model = {f"encoder.backbone.{k}": v for k, v in backbone.items()}
    model.update({f"momentum_encoder.backbone.{k}": v.clone() for k, v in backbone.items()})
    model["memory.counts"] = torch.ones(5)
    if with_prototypes:
        model["encoder.head.0.weight"] = torch.randn(8, 512, 1, 1)
        model["encoder.head.0.bias"] = torch.randn(8)
        model["memory.prototypes"] = torch.nn.functional.normalize(torch.randn(5, 8), dim=1)
    torch.save(
        {
            "format": "mdp-hub/train-checkpoint",
            "format_version": 1,
            "kind": "pretrain",
            "arch": "resnet18",
            "backbone_prefix": "encoder.backbone.",
            "model": model,
            "optimizer": {"state": {}, "param_groups": []},
            "scaler": None,
            "step": steps_done,
            "epoch": 3,
            "rng": {"torch": torch.get_rng_state()},
            "progress": {
                "steps_done": steps_done,
                "epochs_completed": steps_done * epochs // 120,
                "run_steps": steps_done,
                "schedule_steps": 120,
                "schedule_epochs": epochs,
            },
            "config": config,
            "label_space": LABEL_SPACE,
            "data_config": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "crop_size": [64, 64]},
        },
        path,
    )
    return backbone, model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "last.pth"
    backbone, model = training_checkpoint(path)
    return path, backbone, model


def test_export_folder_loads_in_vanilla_timm_with_every_tensor_equal(checkpoint, tmp_path):
    path, backbone, _ = checkpoint
    out = export(path, tmp_path / "out", tag=TAG, metrics={"dataset": "ADE20K", "mIoU": 40.5})
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "config.json",
        "mdp_prototypes.safetensors",
        "model.safetensors",
    ]
    stored = load_file(str(out / "model.safetensors"))
    assert set(stored) == set(backbone) and not any(k.startswith("fc.") for k in stored)
    assert all(torch.equal(stored[k], v) for k, v in backbone.items())
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "resnet18" and config["num_classes"] == 0
    cfg = config["pretrained_cfg"]
    assert (
        cfg["input_size"] == [3, 64, 64] and cfg["paper_ids"] == "arXiv:2106.04121" and cfg["license"] == "apache-2.0"
    )
    assert config["mdp"]["tag"] == TAG and config["mdp"]["source"]["step"] == 120
    model = timm.create_model(f"local-dir:{out}", pretrained=True)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in backbone.items())


def test_export_is_deterministic(checkpoint, tmp_path):
    path, _, _ = checkpoint
    first = export(path, tmp_path / "a", tag=TAG, metrics={"dataset": "VOC", "mIoU": 70.0})
    second = export(path, tmp_path / "b", tag=TAG, metrics={"dataset": "VOC", "mIoU": 70.0})
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in second.iterdir())
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_model_card_metadata_and_checksum(checkpoint, tmp_path):
    path, _, _ = checkpoint
    out = export(
        path,
        tmp_path / "out",
        tag=TAG,
        metrics=[{"dataset": "ADE20K", "mIoU": 41.0}, {"dataset": "PASCAL VOC", "mIoU": 71.5, "split": "val"}],
    )
    card = (out / "README.md").read_text()
    _, header, body = card.split("---\n", 2)
    meta = yaml.safe_load(header)
    assert meta["library_name"] == "timm" and meta["license"] == "apache-2.0"
    assert {"image-feature-extraction", "timm", "semantic-segmentation"} <= set(meta["tags"])
    results = meta["model-index"][0]["results"]
    assert [r["metrics"][0]["value"] for r in results] == [41.0, 71.5]
    assert results[0]["dataset"]["type"] == "scene_parse_150"
    sha = hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()
    assert sha in body and json.loads((out / "config.json").read_text())["mdp"]["weights_sha256"] == sha
    assert "the paper's numbers" not in body  # the paper trained ResNet-50 only
    assert "@article{shi2021mdp" in body and f"hf-hub:{catalog.hub_org()}/mdp_resnet18.{TAG}" in body


def test_card_quotes_the_papers_numbers_only_for_resnet50():
    info = CardInfo(
        model_name="mdp_resnet50",
        arch="resnet50",
        tag="voc_ade20k_coco_200ep",
        repo_id="o/mdp_resnet50.voc_ade20k_coco_200ep",
        sha256="0" * 64,
        params_m=23.5,
        input_size=(3, 512, 512),
        mean=(0.5,) * 3,
        std=(0.2,) * 3,
        training_text="t",
    )
    body = render_card(info).split("---\n", 2)[2]
    assert "No downstream evaluation of these weights" in body
    assert "**the paper's numbers**" in body and "| ADE20K | 42.69 | 39.36 |" in body
    assert "| Cityscapes | 80.64 | n/a |" in body


def test_prototypes_are_exported_and_never_change_model_safetensors(checkpoint, tmp_path):
    path, _, model = checkpoint
    bare = tmp_path / "bare.pth"
    training_checkpoint(bare, with_prototypes=False)
    with_protos = export(path, tmp_path / "with", tag=TAG)
    without = export(bare, tmp_path / "without", tag=TAG)
    assert (with_protos / "model.safetensors").read_bytes() == (without / "model.safetensors").read_bytes()
    head, prototypes, names, label_space = load_prototypes(with_protos)
    assert names == CLASS_NAMES and label_space == LABEL_SPACE
    assert torch.equal(prototypes, model["memory.prototypes"])
    assert set(head) == {"0.weight", "0.bias"} and torch.equal(head["0.weight"], model["encoder.head.0.weight"])
    with pytest.raises(PrototypesNotFoundError, match="backbone-only export"):
        load_prototypes(without)
    # re-exporting a checkpoint without prototypes into the same folder removes the stale file
    export(bare, with_protos, tag=TAG)
    assert not (with_protos / "mdp_prototypes.safetensors").exists()


def test_load_prototypes_from_an_offline_hub_repo(checkpoint, tmp_path, monkeypatch):
    path, _, model = checkpoint
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    install_export(export(path, tmp_path / "out"), "someone/mdp_resnet18.demo", cache_dir=tmp_path / "cache")
    _, prototypes, names, _ = load_prototypes("someone/mdp_resnet18.demo", cache_dir=tmp_path / "cache")
    assert names == CLASS_NAMES and torch.equal(prototypes, model["memory.prototypes"])


def test_plain_state_dict_export_infers_arch_and_drops_classifier(tmp_path):
    torch.manual_seed(1)
    classifier = timm.create_model("resnet18", num_classes=10).state_dict()
    torch.save({"state_dict": {f"module.{k}": v for k, v in classifier.items()}}, tmp_path / "ddp.pth")
    out = export(tmp_path / "ddp.pth", tmp_path / "out")
    stored = load_file(str(out / "model.safetensors"))
    assert set(stored) == set(classifier) - {"fc.weight", "fc.bias"}
    assert json.loads((out / "config.json").read_text())["mdp"]["tag"] is None


def test_export_rejects_bad_input_with_the_file_named(tmp_path):
    wrong = {k: v for k, v in timm.create_model("resnet18", num_classes=0).state_dict().items() if "layer4" not in k}
    save_file(wrong, str(tmp_path / "wrong.safetensors"))
    with pytest.raises(CheckpointError, match=r"wrong\.safetensors.*match none of the supported architectures"):
        export(tmp_path / "wrong.safetensors", tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        export(tmp_path / "missing.pth", tmp_path / "out")
    with pytest.raises(ValueError, match="unknown keys.*top1"):
        export(tmp_path / "wrong.safetensors", tmp_path / "out", metrics={"dataset": "VOC", "mIoU": 1.0, "top1": 2})
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    save_file(timm.create_model("resnet18", num_classes=0).state_dict(), str(tmp_path / "ok.safetensors"))
    with pytest.raises(FileExistsError, match="notes.txt"):
        export(tmp_path / "ok.safetensors", tmp_path / "busy")
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"


def test_cli_export_and_error_exit(checkpoint, tmp_path, capsys):
    path, _, _ = checkpoint
    assert (
        main(
            ["export", str(path), str(tmp_path / "out"), "--tag", TAG, "--metrics", '{"dataset": "VOC", "mIoU": 69.0}']
        )
        == 0
    )
    assert "model.safetensors" in capsys.readouterr().out
    assert main(["export", str(tmp_path / "nope.pth"), str(tmp_path / "x")]) == 2
    assert "nope.pth: no such weights file" in capsys.readouterr().err


def test_a_run_stopped_before_the_end_of_its_recipe_is_exported_as_partial(tmp_path):
    training_checkpoint(tmp_path / "short.pth", steps_done=40, config=run_config(max_steps=40))
    out = export(tmp_path / "short.pth", tmp_path / "out", tag=TAG)
    mdp = json.loads((out / "config.json").read_text())["mdp"]
    assert mdp["tag"] == f"{TAG}-partial" and mdp["recipe"]["tag"] == TAG and mdp["recipe_completed"] is False
    run = mdp["run"]
    assert (run["steps_done"], run["schedule_steps"], run["schedule_epochs"], run["completed"]) == (40, 120, 200, False)
    assert run["dataset_keys"] == ["voc", "ade20k"] and run["max_steps"] == 40
    cfg = json.loads((out / "config.json").read_text())["pretrained_cfg"]
    recipe = catalog.RECIPES_BY_TAG[TAG]
    assert cfg["tag"] == f"{TAG}-partial" and cfg["description"] != recipe.description
    assert "40 of 120 steps" in cfg["description"] and "capped by train.max_steps=40" in cfg["description"]
    meta_text, body = (out / "README.md").read_text().split("---\n", 2)[1:]
    assert yaml.safe_load(meta_text)["model_name"] == f"mdp_resnet18.{TAG}-partial"
    assert "partial run of the `voc_ade20k_200ep` recipe" in body and "not the finished recipe" in body
    assert "40 of 120 steps, 66 of 200 epochs, not completed" in body
    assert "the paper's numbers" not in body and f"**Pretraining recipe:** {recipe.description}" not in body


@pytest.mark.parametrize(
    "config, tag, reason",
    [
        (
            run_config(name="demo"),
            TAG,
            "the run's recipe is 'demo'; export without --tag or with a tag of your own (e.g. --tag demo)",
        ),
        (run_config(epochs=2), TAG, "it was scheduled for 2 epochs, not 200"),
        (run_config(), "voc_200ep", "it trained on voc, ade20k, not PASCAL VOC 2012 (aug)"),
        (dict(run_config(), data={"datasets": ["synthetic"], "unlabeled": []}), TAG, "the synthetic benchmark"),
        (dict(run_config(), init={"pretrained": "resnet18.a1_in1k"}), f"{TAG}-partial", "its init is resnet18.a1_in1k"),
    ],
)
def test_a_recipe_tag_is_refused_for_another_run_naming_the_difference(tmp_path, config, tag, reason):
    training_checkpoint(tmp_path / "other.pth", config=config)
    with pytest.raises(RecipeClaimError, match=re.escape(reason)):
        export(tmp_path / "other.pth", tmp_path / "out", tag=tag)
    assert not (tmp_path / "out").exists()


def test_a_plain_state_dict_claims_no_recipe_and_any_custom_tag_is_kept(tmp_path, capsys):
    save_file(timm.create_model("resnet18", num_classes=0).state_dict(), str(tmp_path / "w.safetensors"))
    assert main(["export", str(tmp_path / "w.safetensors"), str(tmp_path / "out"), "--tag", "voc_200ep"]) == 2
    error = capsys.readouterr().err
    assert "w.safetensors: tag 'voc_200ep' names the paper recipe" in error and "plain state dict" in error
    assert len(error.strip().splitlines()) == 1
    out = export(tmp_path / "w.safetensors", tmp_path / "out", tag="my_run")
    mdp = json.loads((out / "config.json").read_text())["mdp"]
    assert mdp["tag"] == "my_run" and mdp["recipe"] is None and mdp["run"] is None


def test_every_shipped_file_has_a_recorded_checksum_and_mdp_hub_verify_checks_them(checkpoint, tmp_path, capsys):
    path, _, _ = checkpoint
    out = export(path, tmp_path / "out", tag="tiny_run")
    mdp = json.loads((out / "config.json").read_text())["mdp"]
    for name in ("model.safetensors", "mdp_prototypes.safetensors"):
        assert mdp["files"][name] == hashlib.sha256((out / name).read_bytes()).hexdigest()
    assert main(["verify", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed == [
        "mdp_prototypes.safetensors: sha256 ok",
        "model.safetensors: sha256 ok",
        "config.json: what it says is what mdp_prototypes.safetensors was exported with",
        "README.md: not checksummed",
        f"{out}: intact",
    ]
    (out / "model.safetensors").write_bytes((out / "model.safetensors").read_bytes()[:-1] + b" ")
    assert main(["verify", str(out)]) == 2
    assert "model.safetensors: sha256" in capsys.readouterr().err


def test_exported_files_are_readable_like_any_other_file(checkpoint, tmp_path):
    path, _, _ = checkpoint
    previous = os.umask(0o022)
    try:
        out = export(path, tmp_path / "out", tag="tiny_run")
    finally:
        os.umask(previous)
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in out.iterdir()} == {
        name: "0o644" for name in ("README.md", "config.json", "mdp_prototypes.safetensors", "model.safetensors")
    }
