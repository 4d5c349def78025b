"""``python -m training.mine``: the confidence threshold, the generic folder format the data layer reads back,
the unification map into the pretraining classes, and bad input."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from prototype_checkpoints import LABEL_SPACE, make_export, write_image

from mdp_hub import PrototypeSegmenter
from training.data import LabelSpace, build_segmentation_dataset
from training.data.readers import FolderReader
from training.mdp.mining import threshold_labels
from training.mine import main


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("mine")
    _, _, checkpoint, folder = make_export(root)
    images = root / "unlabeled"
    write_image(images / "a.png", seed=3)
    write_image(images / "nested" / "b.jpg", seed=4, height=40, width=56)
    return checkpoint, folder, images, PrototypeSegmenter.from_pretrained(folder)


def test_threshold_labels_keeps_confident_pixels_only():
    labels = torch.tensor([[0, 1, 2], [3, -1, 4]])
    scores = torch.tensor([[0.9, 0.5, 0.49], [0.2, 0.95, 0.5]])
    assert threshold_labels(labels, scores, 0.5).tolist() == [[0, 1, 255], [255, 255, 4]]
    assert threshold_labels(labels, scores, 0.5).dtype == torch.uint8


def test_miner_writes_thresholded_masks_in_the_generic_folder_format(tiny, tmp_path, capsys):
    _, folder, images, segmenter = tiny
    first = segmenter.segment(images / "a.png")
    threshold = float(first.scores.median())  # about half the pixels of the first image on each side
    out = tmp_path / "mined"
    assert (
        main(["--model", str(folder), "--images", str(images), "--out", str(out), "--threshold", str(threshold)]) == 0
    )

    assert (out / "classes.txt").read_text().splitlines() == list(LABEL_SPACE.class_names)
    kept_total = pixels_total = 0
    for relative in ("a.png", "nested/b.jpg"):
        assert (out / "images" / relative).read_bytes() == (images / relative).read_bytes()
        result = segmenter.segment(images / relative)
        mask = np.asarray(Image.open((out / "masks" / relative).with_suffix(".png")))
        below = (result.scores < threshold).numpy()
        assert (mask[below] == 255).all()
        assert np.array_equal(mask[~below], result.labels.numpy()[~below])
        kept_total += int((~below).sum())
        pixels_total += mask.size
    assert 0 < kept_total < pixels_total
    printed = capsys.readouterr().out
    assert f"kept {kept_total} of {pixels_total} pixels" in printed
    summary = json.loads((out / "pseudo_labels.json").read_text())
    assert (summary["kept_pixels"], summary["pixels"], summary["num_images"]) == (kept_total, pixels_total, 2)

    # the data layer reads it back: local ids, 255 -> -1
    dataset = build_segmentation_dataset(f"folder:{out}", train=False, mean=segmenter.mean, std=segmenter.std)
    assert len(dataset) == 2 and list(dataset.class_names) == list(LABEL_SPACE.class_names)
    item = dataset[0]
    mask = np.asarray(Image.open(out / "masks" / "a.png")).astype(np.int64)
    assert torch.equal(item["mask"], torch.from_numpy(np.where(mask == 255, -1, mask)))

    # with the unification map, the mined classes merge into the pretraining classes they came from
    unify = json.loads((out / "unify_map.json").read_text())
    assert unify["mined/ade20k/sky"] == "ade20k/sky"
    reader = FolderReader(out)
    space = LabelSpace(
        [*[(d.name, d.class_names) for d in LABEL_SPACE.datasets], (reader.dataset_name, reader.class_names)],
        unify_map=unify,
    )
    assert space.num_classes == LABEL_SPACE.num_classes
    assert space.dataset_class_ids("mined").tolist() == list(range(LABEL_SPACE.num_classes))


def test_miner_restricted_to_one_dataset_and_threshold_extremes(tiny, tmp_path):
    checkpoint, _, images, segmenter = tiny
    out = tmp_path / "voc_only"
    assert (
        main(
            [
                "--model",
                str(checkpoint),
                "--images",
                str(images),
                "--out",
                str(out),
                "--dataset",
                "voc",
                "--threshold",
                "0",
            ]
        )
        == 0
    )
    assert (out / "classes.txt").read_text().splitlines() == ["background", "cat", "dog"]
    mask = np.asarray(Image.open(out / "masks" / "a.png"))
    assert np.array_equal(mask, segmenter.segment(images / "a.png", restrict_to="voc_aug").labels.numpy())
    assert json.loads((out / "unify_map.json").read_text())["voc_only/cat"] == "voc_aug/cat"
    everything_dropped = tmp_path / "none_kept"
    assert (
        main(
            ["--model", str(checkpoint), "--images", str(images), "--out", str(everything_dropped), "--threshold", "1"]
        )
        == 0
    )
    assert (np.asarray(Image.open(everything_dropped / "masks" / "a.png")) == 255).all()


def test_miner_bad_input_gets_clear_errors(tiny, tmp_path, capsys):
    _, folder, images, _ = tiny
    assert (
        main(["--model", str(folder), "--images", str(images), "--out", str(tmp_path / "o"), "--threshold", "1.5"]) == 2
    )
    assert "--threshold 1.5: must be a probability in [0, 1]" in capsys.readouterr().err
    broken = tmp_path / "broken"
    write_image(broken / "good.png")
    (broken / "zz_fake.jpg").write_text("not a jpeg")
    assert main(["--model", str(folder), "--images", str(broken), "--out", str(tmp_path / "o2")]) == 2
    assert f"{broken / 'zz_fake.jpg'}: image is truncated or corrupt" in capsys.readouterr().err
    # a failed run leaves --out as it found it (here: absent; below: empty), so the same command can run again
    assert not (tmp_path / "o2").exists() and not list(tmp_path.glob(".o2.mining-*"))
    (tmp_path / "o4").mkdir()
    assert main(["--model", str(folder), "--images", str(broken), "--out", str(tmp_path / "o4")]) == 2
    assert list((tmp_path / "o4").iterdir()) == [] and not list(tmp_path.glob(".o4.mining-*"))
    (tmp_path / "o3").mkdir()
    (tmp_path / "o3" / "keep.txt").write_text("user data")
    assert main(["--model", str(folder), "--images", str(images), "--out", str(tmp_path / "o3")]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (tmp_path / "o3" / "keep.txt").read_text() == "user data"
