"""Every load path, offline: Hub cache, hf-hub:, local-dir:, file overlay, torch.hub; strictness and errors."""

import ast
import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

import mdp_hub
from mdp_hub import CheckpointError, WeightsNotAvailableError, install_export, is_cached
from mdp_hub.export import export

REPO_DIR = Path(__file__).resolve().parents[1]
TAG = "voc_ade20k_200ep"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """An export folder of random resnet18 weights and its expected tensors."""
    root = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    weights = root / "resnet18.safetensors"
    save_file(timm.create_model("resnet18", num_classes=0).state_dict(), str(weights))
    folder = export(weights, root / "mdp_resnet18", tag="random_weights")  # installed below under registered tags
    return folder, load_file(str(folder / "model.safetensors"))


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network: HF offline mode (set after import, so patch the constant too) and an empty private cache."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    cache = tmp_path / "hf_cache"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def assert_same_weights(model, expected):
    state = model.state_dict()
    assert set(state) == set(expected)
    for key, value in expected.items():
        assert torch.equal(state[key], value), key


def registered_repo(name):
    return timm.get_pretrained_cfg(name).hf_hub_id


def test_registered_name_loads_from_prefilled_hub_cache(exported, offline):
    folder, expected = exported
    repo = registered_repo(f"mdp_resnet18.{TAG}")
    assert not is_cached(f"mdp_resnet18.{TAG}")
    install_export(folder, repo)
    assert is_cached(f"mdp_resnet18.{TAG}") and is_cached(repo)
    model = timm.create_model(f"mdp_resnet18.{TAG}", pretrained=True)
    assert_same_weights(model, expected)
    assert model.num_classes == 0 and model.pretrained_cfg["tag"] == TAG


def test_registered_name_with_explicit_cache_dir_features_and_output_stride(exported, offline, tmp_path):
    folder, expected = exported
    install_export(folder, registered_repo(f"mdp_resnet18.{TAG}"), cache_dir=tmp_path / "other_cache")
    model = timm.create_model(
        f"mdp_resnet18.{TAG}",
        pretrained=True,
        cache_dir=tmp_path / "other_cache",
        features_only=True,
        out_indices=(1, 2, 3, 4),
        output_stride=8,
    )
    assert model.feature_info.channels() == [64, 128, 256, 512]
    assert model.feature_info.reduction() == [4, 8, 8, 8]
    features = model(torch.randn(1, 3, 64, 64))
    assert [tuple(f.shape[-2:]) for f in features] == [(16, 16), (8, 8), (8, 8), (8, 8)]
    assert torch.equal(model.state_dict()["layer4.1.conv2.weight"], expected["layer4.1.conv2.weight"])


def test_new_head_keeps_every_backbone_tensor(exported, offline):
    folder, expected = exported
    install_export(folder, registered_repo(f"mdp_resnet18.{TAG}"))
    model = timm.create_model(f"mdp_resnet18.{TAG}", pretrained=True, num_classes=21)
    assert model.fc.out_features == 21
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in expected.items())


def test_vanilla_timm_hf_hub_and_local_dir(exported, offline):
    folder, expected = exported
    install_export(folder, "someone/mdp_resnet18.custom")
    from_hub = timm.create_model("hf-hub:someone/mdp_resnet18.custom", pretrained=True)
    assert from_hub.pretrained_cfg["architecture"] == "resnet18"
    assert_same_weights(from_hub, expected)
    from_dir = timm.create_model(f"local-dir:{folder}", pretrained=True, features_only=True)
    assert torch.equal(from_dir.state_dict()["conv1.weight"], expected["conv1.weight"])
    config = timm.data.resolve_model_data_config(from_hub)
    assert config["input_size"] == (3, 512, 512) and config["crop_pct"] == 1.0
    assert config["mean"] == pytest.approx((0.485, 0.456, 0.406))


def test_pretrained_cfg_overlay_file(exported, offline):
    folder, expected = exported
    model = timm.create_model(
        "mdp_resnet18", pretrained=True, pretrained_cfg_overlay=dict(file=str(folder / "model.safetensors"))
    )
    assert_same_weights(model, expected)


def test_torch_hub_local_with_tag_path_and_folder(exported, offline):
    folder, expected = exported
    install_export(folder, registered_repo(f"mdp_resnet18.{TAG}"))
    by_tag = torch.hub.load(str(REPO_DIR), "mdp_resnet18", source="local", weights=TAG)
    by_file = torch.hub.load(str(REPO_DIR), "mdp_resnet18", source="local", weights=str(folder / "model.safetensors"))
    by_folder = torch.hub.load(
        str(REPO_DIR), "mdp_resnet18", source="local", weights=str(folder), features_only=True, out_indices=(4,)
    )
    for model in (by_tag, by_file):
        assert_same_weights(model, expected)
    assert by_folder.feature_info.channels() == [512]
    untrained = torch.hub.load(str(REPO_DIR), "mdp_resnet50", source="local", pretrained=False)
    assert untrained.num_features == 2048
    with pytest.raises(ValueError, match="pretrained=False"):
        torch.hub.load(str(REPO_DIR), "mdp_resnet18", source="local", pretrained=False, weights=TAG)


def load_hubconf():
    spec = importlib.util.spec_from_file_location("mdp_hubconf", REPO_DIR / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    return hubconf


def test_hubconf_exposes_only_documented_entrypoints():
    hubconf = load_hubconf()
    public = sorted(n for n in dir(hubconf) if callable(getattr(hubconf, n)) and not n.startswith("_"))
    assert public == ["mdp_prototype_segmenter", "mdp_resnet101", "mdp_resnet18", "mdp_resnet50"]
    assert "77.79" in hubconf.mdp_resnet50.__doc__


def third_party_imports(paths):
    """Top-level names of the non-standard-library modules imported anywhere in ``paths`` (Python files)."""
    names = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"__future__", "mdp_hub"}


# Imported by mdp_hub only inside the functions that need them, never on the torch.hub path.
OPTIONAL_IMPORTS = {
    "gradio": "mdp-hub demo (the demo extra)",
    "training": "mdp-hub demo / segment of a fine-tuned checkpoint, whose decode heads live in training/",
}


def test_hubconf_dependencies_cover_every_package_mdp_hub_imports():
    hubconf = load_hubconf()
    paths = [REPO_DIR / "hubconf.py", *sorted((REPO_DIR / "mdp_hub").rglob("*.py"))]
    needed = third_party_imports(paths) - set(OPTIONAL_IMPORTS)
    assert needed <= set(hubconf.dependencies), sorted(needed - set(hubconf.dependencies))
    assert {"torchvision", "PIL"} <= needed  # what the scan must see for the list to be complete


def test_bare_torch_hub_load_in_a_fresh_interpreter_returns_the_architecture(tmp_path):
    code = (
        "import sys, torch\n"
        f"model = torch.hub.load({str(REPO_DIR)!r}, 'mdp_resnet50', source='local')\n"
        "print(type(model).__name__, model.num_features, model.num_classes)\n"
        f"torch.hub.load({str(REPO_DIR)!r}, 'mdp_prototype_segmenter', source='local')\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "empty_cache"), OMP_NUM_THREADS="1")
    env.pop("PYTHONPATH", None)  # the repository reaches the interpreter only through torch.hub's source="local"
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    assert result.stdout.splitlines()[:1] == ["ResNet 2048 0"], result.stderr[-2000:]
    # the segmenter has no random-weights form: a bare call names the missing argument instead of a download
    assert "missing 1 required keyword-only argument: 'weights'" in result.stderr


def test_unpublished_weights_give_one_sentence_with_the_fix(offline):
    repo = registered_repo("mdp_resnet50")
    with pytest.raises(WeightsNotAvailableError) as info:
        timm.create_model("mdp_resnet50", pretrained=True)
    message = str(info.value)
    assert repo in message and "python -m training.pretrain --recipe voc_ade20k_coco_200ep" in message
    assert "mdp-hub push" in message and "\n" not in message and message.count(". ") == 0
    assert info.value.__cause__ is None and (info.value.__context__ is None or info.value.__suppress_context__)


def test_missing_truncated_or_unsafe_overlay_files_are_named(exported, offline, tmp_path):
    missing = tmp_path / "nowhere" / "model.safetensors"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        timm.create_model("mdp_resnet18", pretrained=True, pretrained_cfg_overlay=dict(file=str(missing)))
    _, expected = exported
    truncated = tmp_path / "truncated.pth"
    torch.save(expected, truncated)
    truncated.write_bytes(truncated.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match=r"truncated\.pth: cannot read weights"):
        timm.create_model("mdp_resnet18", pretrained=True, pretrained_cfg_overlay=dict(file=str(truncated)))
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"weights": expected, "code": print}, unsafe)  # a pickled global: refused by weights_only=True
    with pytest.raises(CheckpointError, match=r"unsafe\.pth: cannot read weights .*weights_only=True"):
        timm.create_model("mdp_resnet18", pretrained=True, pretrained_cfg_overlay=dict(file=str(unsafe)))


@pytest.mark.parametrize("num_classes", [0, 21])
def test_missing_backbone_tensor_is_an_error_even_with_a_new_head(exported, offline, tmp_path, num_classes):
    _, expected = exported
    partial = dict(expected)
    del partial["layer3.0.conv1.weight"]
    path = tmp_path / "partial.safetensors"
    save_file(partial, str(path))
    with pytest.raises(CheckpointError, match=r"partial\.safetensors.*missing 1 tensor.*layer3\.0\.conv1\.weight"):
        timm.create_model(
            "mdp_resnet18", pretrained=True, num_classes=num_classes, pretrained_cfg_overlay=dict(file=str(path))
        )


def test_unexpected_tensor_and_wrong_architecture_are_errors(exported, offline, tmp_path):
    _, expected = exported
    extra = dict(expected, **{"fc.weight": torch.zeros(10, 512), "fc.bias": torch.zeros(10)})
    save_file(extra, str(tmp_path / "extra.safetensors"))
    with pytest.raises(CheckpointError, match=r"extra\.safetensors.*unexpected 2 tensor"):
        timm.create_model(
            "mdp_resnet18", pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "extra.safetensors"))
        )
    with pytest.raises(CheckpointError, match=r"resnet18-weights.*do not fit mdp_resnet50"):
        save_file(expected, str(tmp_path / "resnet18-weights.safetensors"))
        timm.create_model(
            "mdp_resnet50",
            pretrained=True,
            pretrained_cfg_overlay=dict(file=str(tmp_path / "resnet18-weights.safetensors")),
        )


def test_corrupt_cached_weights_name_the_repo(exported, offline):
    folder, _ = exported
    snapshot = install_export(folder, registered_repo("mdp_resnet18.voc_100ep"))
    weights = snapshot / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="mdp_resnet18.voc_100ep"):
        timm.create_model("mdp_resnet18.voc_100ep", pretrained=True)


def test_list_weights_reports_cache_state(exported, offline):
    folder, _ = exported
    install_export(folder, registered_repo(f"mdp_resnet18.{TAG}"))
    rows = {row.name: row for row in mdp_hub.list_weights()}
    assert rows[f"mdp_resnet18.{TAG}"].cached and not rows[f"mdp_resnet50.{TAG}"].cached
    assert rows["mdp_resnet50.voc_ade20k_coco_200ep"].paper_miou["voc"] == 77.79
    assert rows["mdp_resnet18.voc_ade20k_coco_200ep"].paper_miou == {}


def test_prefetch_offline_names_the_repo(offline):
    with pytest.raises(
        WeightsNotAvailableError,
        match="'mdp-hub/mdp_resnet50.voc_200ep' is not in the local cache and HF_HUB_OFFLINE is set",
    ):
        mdp_hub.prefetch("mdp-hub/mdp_resnet50.voc_200ep")


def test_unpublished_tags_fail_at_once_without_the_network(monkeypatch, tmp_path):
    """Online, with an empty cache: without network access the Hub client would retry for ~50 s; an unpublished
    tag must not touch the network at all (a resolver that raises proves it)."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf_cache"))

    def no_network(*args, **kwargs):
        raise AssertionError("the network was used")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    for load in (
        lambda: timm.create_model("mdp_resnet18.voc_200ep", pretrained=True),
        lambda: mdp_hub.prefetch("mdp_resnet50.voc_100ep"),
        lambda: mdp_hub.PrototypeSegmenter.from_pretrained("mdp_resnet50"),
    ):
        with pytest.raises(WeightsNotAvailableError, match="no weights are published for mdp_resnet.* yet"):
            load()


def test_torch_hub_names_a_missing_weights_path(tmp_path):
    missing = tmp_path / "no_such_export"
    with pytest.raises(FileNotFoundError, match="no such export folder or weights file") as caught:
        torch.hub.load(str(REPO_DIR), "mdp_resnet18", source="local", weights=str(missing))
    assert caught.value.filename == str(missing)
