"""PrototypeSegmenter: export/load round trip of prototypes and names, restriction to one dataset, overlays
written by ``mdp-hub segment`` as valid PNGs, and clear errors for bad input."""

from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from prototype_checkpoints import LABEL_SPACE, MEAN, STD, UNSEEN_CLASS, make_export, write_image

from mdp_hub import PrototypeSegmenter, PrototypesNotFoundError, install_export
from mdp_hub import segmenter as segmenter_module
from mdp_hub.cli import main
from mdp_hub.export import export
from mdp_hub.label_space import dataset_class_ids
from mdp_hub.segmenter import NotAnImageError, class_colour, open_image
from training.data import LabelSpace


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    method, batch, checkpoint, folder = make_export(tmp_path_factory.mktemp("segmenter"))
    return method, batch, checkpoint, folder, PrototypeSegmenter.from_pretrained(folder)


def reference_logits(method, batch, tau=0.1):
    """Global logits [1, C, H, W] computed from the training-side encoder and memory."""
    with torch.no_grad():
        similarity = torch.einsum("bdhw,cd->bchw", method.encoder(batch), method.memory.normalised()) / tau
    logits = F.interpolate(similarity, size=batch.shape[-2:], mode="bilinear", align_corners=False)
    return logits.masked_fill(~method.memory.seen[None, :, None, None], float("-inf"))


def assert_nearest_prototype(labels, logits, margin=1e-3):
    """``labels`` are the argmax of ``logits`` [B, K, H, W] wherever that argmax is not a near-tie.

    The segmenter (timm backbone of the export, einsum over one dataset's prototypes) and the reference (training
    encoder, all prototypes) reach the same logits through different kernels: 2e-6 apart on the restricted
    logits here, and the rounding depends on the CPU. This untrained model has near-ties (gaps down to 2e-6), so
    only pixels whose best class leads by more than ``margin`` (500x that) are compared; they must be most pixels.
    """
    top = logits.topk(2, dim=1)
    decided = top.values[:, 0] - top.values[:, 1] > margin
    assert decided.float().mean() > 0.5
    assert torch.equal(labels[decided], top.indices[:, 0][decided])


def test_export_round_trip_keeps_prototypes_names_head_and_preprocessing(tiny):
    method, batch, checkpoint, folder, segmenter = tiny
    from_checkpoint = PrototypeSegmenter.from_pretrained(checkpoint)
    for loaded in (segmenter, from_checkpoint):
        assert loaded.class_names == list(LABEL_SPACE.class_names)
        assert loaded.dataset_names == ["voc_aug", "ade20k"]
        assert torch.equal(loaded.prototypes, method.memory.normalised())
        assert loaded.available.tolist() == method.memory.seen.tolist()
        head = method.encoder.head.state_dict()
        assert all(torch.equal(value, head[key]) for key, value in loaded.head.state_dict().items())
        assert (loaded.mean, loaded.std, loaded.tau) == (tuple(MEAN), tuple(STD), 0.1)
        assert not loaded.training
        with torch.no_grad():
            assert torch.allclose(loaded.embed(batch), method.encoder(batch), atol=1e-5)
    # preprocessing from the export's pretrained cfg
    image = torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8)
    expected = (image.float() / 255 - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    assert torch.allclose(segmenter.preprocess(image), expected, atol=1e-6)


def test_predictions_are_the_nearest_prototype_in_global_ids(tiny):
    method, batch, checkpoint, _, segmenter = tiny
    result = segmenter.predict(batch)
    logits = reference_logits(method, batch)
    assert result.dataset is None and result.id_space == "global"
    assert result.labels.shape == result.scores.shape == (1, 48, 64)
    assert_nearest_prototype(result.labels, logits)
    # logits ~10 apart by a few float32 ulps (1e-6 each) move a softmax probability by at most half as much
    assert torch.allclose(result.scores, logits.softmax(dim=1).amax(dim=1), atol=1e-5)
    assert not (result.labels == UNSEEN_CLASS).any()
    assert len(result.labels.unique()) > 1
    assert torch.equal(PrototypeSegmenter.from_pretrained(checkpoint).predict(batch).labels, result.labels)


def test_restriction_gives_local_ids_of_one_dataset(tiny):
    method, batch, _, folder, segmenter = tiny
    logits = reference_logits(method, batch)
    voc = segmenter.predict(batch, restrict_to="voc")  # unique prefix of voc_aug
    assert (voc.dataset, voc.id_space, voc.class_names) == ("voc_aug", "local", ["background", "cat", "dog"])
    assert_nearest_prototype(voc.labels, logits[:, 0:3])
    assert torch.allclose(voc.scores, logits[:, 0:3].softmax(dim=1).amax(dim=1), atol=1e-5)
    ade = segmenter.predict(batch, restrict_to="ade20k")
    assert_nearest_prototype(ade.labels, logits[:, 3:7])
    assert not (ade.labels == UNSEEN_CLASS - 3).any()  # ade20k/tree has no prototype
    # the default restriction chosen at load time, overridable per call
    restricted = PrototypeSegmenter.from_pretrained(folder, restrict_to="ade20k")
    assert torch.equal(restricted.predict(batch).labels, ade.labels)
    assert torch.equal(restricted.predict(batch, restrict_to=None).labels, segmenter.predict(batch).labels)
    with pytest.raises(ValueError, match="no such dataset; the label space has voc_aug, ade20k"):
        segmenter.predict(batch, restrict_to="cityscapes")


def test_logits_upsampled_a_class_at_a_time_give_the_same_labels_and_scores(tiny, monkeypatch):
    method, batch, _, _, segmenter = tiny
    monkeypatch.setattr(segmenter_module, "LOGITS_BUDGET", 48 * 64)  # one class of [1, 48, 64] logits at a time
    result = segmenter.predict(batch)
    logits = reference_logits(method, batch)
    assert_nearest_prototype(result.labels, logits)
    assert torch.allclose(result.scores, logits.softmax(dim=1).amax(dim=1), atol=1e-5)
    assert result.network_size == (48, 64) and not result.downscaled


def test_a_large_input_is_downscaled_for_the_network_and_labelled_at_full_size(tiny, monkeypatch):
    method, batch, _, _, segmenter = tiny
    monkeypatch.setattr(segmenter, "max_network_pixels", 48 * 64)
    large = F.interpolate(batch, size=(192, 256), mode="bilinear", align_corners=False)
    result = segmenter.predict(large)
    assert result.downscaled and result.network_size == (48, 64)
    assert result.labels.shape == result.scores.shape == (1, 192, 256)
    seen = F.interpolate(large, size=(48, 64), mode="bilinear", antialias=True, align_corners=False)
    with torch.no_grad():
        similarity = torch.einsum("bdhw,cd->bchw", method.encoder(seen), method.memory.normalised()) / 0.1
    logits = F.interpolate(similarity, size=(192, 256), mode="bilinear", align_corners=False)
    assert_nearest_prototype(result.labels, logits.masked_fill(~method.memory.seen[None, :, None, None], -torch.inf))


@pytest.mark.parametrize(
    "unify_map",
    [
        {"ade20k/wall": "voc_aug/background"},
        {"voc_aug/dog": "ade20k/floor"},
        {"voc_aug/cat": "ade20k/tree", "ade20k/wall": "voc_aug/dog"},
    ],
)
def test_dataset_class_ids_follow_the_unification_map(unify_map):
    space = LabelSpace([(d.name, d.class_names) for d in LABEL_SPACE.datasets], unify_map=unify_map)
    for name in space.dataset_names:
        assert dataset_class_ids(space.to_dict(), name) == space.dataset_class_ids(name).tolist()


def test_segment_cli_writes_overlays_with_a_legend_as_valid_pngs(tiny, tmp_path, capsys):
    _, _, _, folder, segmenter = tiny
    first = write_image(tmp_path / "in" / "first.png", seed=1)
    second = write_image(tmp_path / "in" / "second.jpg", seed=2, height=40, width=52)
    out = tmp_path / "overlays"
    assert (
        main(["segment", str(first), str(second), "--model", str(folder), "--out", str(out), "--dataset", "voc"]) == 0
    )
    printed = capsys.readouterr().out
    for source in (first, second):
        target = out / f"{source.stem}.png"
        with Image.open(target) as png:
            png.verify()
        with Image.open(target) as png:
            assert png.format == "PNG" and png.mode == "RGB"
            panel = np.asarray(png)
        original = np.asarray(open_image(source))
        height, width = original.shape[:2]
        assert panel.shape[0] >= height and panel.shape[1] > 2 * width
        assert np.array_equal(panel[:height, :width], original)
        result = segmenter.segment(source, restrict_to="voc_aug")
        colours = np.array([class_colour(name) for name in result.class_names])[result.labels.numpy()]
        blend = (original * 0.5 + colours * 0.5).round()
        assert np.abs(panel[:height, width : 2 * width].astype(float) - blend).max() <= 1
        assert str(target) in printed
        for index in result.labels.unique().tolist():
            assert result.class_names[index] in printed
        assert not (panel[:, 2 * width :] == 255).all()  # the legend is drawn


def test_segment_cli_says_when_it_downscaled_and_draws_the_overlay_at_full_size(tiny, tmp_path, monkeypatch, capsys):
    folder = tiny[3]
    monkeypatch.setattr(segmenter_module, "MAX_NETWORK_PIXELS", 48 * 64)
    image = write_image(tmp_path / "large.png", height=192, width=256)
    assert main(["segment", str(image), "--model", str(folder), "--out", str(tmp_path / "o")]) == 0
    assert "(a 256x192 image: the network saw it downscaled to 64x48, labels are at full size)" in (
        capsys.readouterr().out
    )
    with Image.open(tmp_path / "o" / "large.png") as png:
        assert png.height >= 192 and png.width > 2 * 256


def test_bad_image_and_export_without_prototypes_get_clear_errors(tiny, tmp_path, capsys):
    method, _, checkpoint, folder, _ = tiny
    not_image = tmp_path / "notes.png"
    not_image.write_text("not a picture")
    good = write_image(tmp_path / "good.png")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:200])
    for bad in (not_image, truncated):
        with pytest.raises(NotAnImageError, match=str(bad)):
            open_image(bad)
    assert main(["segment", str(good), str(not_image), "--model", str(folder), "--out", str(tmp_path / "o")]) == 2
    assert f"{not_image}: not a readable image" in capsys.readouterr().err
    assert not (tmp_path / "o" / "good.png").exists()  # every file is checked before any overlay is written
    before = good.read_bytes()
    assert main(["segment", str(good), "--model", str(folder), "--out", str(tmp_path)]) == 2
    assert "would overwrite the input images" in capsys.readouterr().err and good.read_bytes() == before

    content = torch.load(checkpoint, weights_only=True)
    content["model"] = {k: v for k, v in content["model"].items() if not k.startswith(("memory.", "encoder.head."))}
    bare = tmp_path / "bare.pth"
    torch.save(content, bare)
    with pytest.raises(PrototypesNotFoundError, match=f"{bare}: a pretrain checkpoint without memory.prototypes"):
        PrototypeSegmenter.from_pretrained(bare)
    bare_export = export(bare, tmp_path / "bare_export")
    with pytest.raises(PrototypesNotFoundError, match="backbone-only export without mdp_prototypes.safetensors"):
        PrototypeSegmenter.from_pretrained(bare_export)
    assert main(["segment", str(good), "--model", str(bare_export), "--out", str(tmp_path / "o2")]) == 2
    assert f"{bare_export}: backbone-only export" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="no such export folder or checkpoint file"):
        PrototypeSegmenter.from_pretrained(tmp_path / "missing.pth")


def test_loads_from_an_offline_hub_repo_and_torch_hub(tiny, tmp_path, monkeypatch):
    _, batch, _, folder, segmenter = tiny
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    install_export(folder, "someone/mdp_resnet18.tiny", cache_dir=tmp_path / "cache")
    from_hub = PrototypeSegmenter.from_pretrained("someone/mdp_resnet18.tiny", cache_dir=tmp_path / "cache")
    assert from_hub.class_names == segmenter.class_names
    assert torch.equal(from_hub.predict(batch).labels, segmenter.predict(batch).labels)
    from_torch_hub = torch.hub.load(
        str(Path(__file__).parents[1]),
        "mdp_prototype_segmenter",
        source="local",
        weights=str(folder),
        restrict_to="voc",
    )
    assert from_torch_hub.restrict_to == "voc_aug"
    assert torch.equal(from_torch_hub.predict(batch).labels, segmenter.predict(batch, restrict_to="voc").labels)
