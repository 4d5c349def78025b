"""Readers of the real layouts on tiny fixtures, with exact local and global labels (0/255 edge cases)."""

from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from training.data import IGNORE_INDEX, BadSampleError, build_pretrain_dataset, open_reader, parse_spec
from training.data.classes import voc_colormap
from training.data.errors import DatasetLayoutError

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def write_image(path: Path, height: int, width: int, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def write_mask(path: Path, values: np.ndarray, palette: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    picture = Image.fromarray(values.astype(np.uint8), mode="L")
    if palette:
        picture = picture.convert("P")
        picture.putpalette(voc_colormap(256).flatten().tolist())
    picture.save(path)


def grid(values: list[int], height: int = 4) -> np.ndarray:
    """A ``[height, len(values)]`` mask whose columns hold ``values``."""
    return np.tile(np.asarray(values, dtype=np.uint8), (height, 1))


def make_voc(root: Path, train: dict, val: dict, aug: dict | None = None) -> Path:
    voc = root / "VOCdevkit" / "VOC2012"
    lists = voc / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    for split, items in (("train", train), ("val", val)):
        for name, mask in items.items():
            write_image(voc / "JPEGImages" / f"{name}.jpg", *mask.shape)
            write_mask(voc / "SegmentationClass" / f"{name}.png", mask, palette=True)
        (lists / f"{split}.txt").write_text("".join(f"{n}\n" for n in items))
    if aug is not None:
        for name, mask in aug.items():
            write_image(voc / "JPEGImages" / f"{name}.jpg", *mask.shape)
            write_mask(voc / "SegmentationClassAug" / f"{name}.png", mask)
        (lists / "aug.txt").write_text("".join(f"{n}\n" for n in aug))
    return voc


def make_ade(root: Path, masks: dict, split: str = "training") -> Path:
    ade = root / "ADEChallengeData2016"
    (ade / "images" / "validation").mkdir(parents=True, exist_ok=True)
    (ade / "annotations" / "validation").mkdir(parents=True, exist_ok=True)
    for name, mask in masks.items():
        write_image(ade / "images" / split / f"{name}.jpg", *mask.shape)
        write_mask(ade / "annotations" / split / f"{name}.png", mask)
    return ade


def make_coco164k(root: Path, masks: dict, suffix: str = ".png") -> Path:
    coco = root / "coco_stuff164k"
    for name, mask in masks.items():
        write_image(coco / "images" / "train2017" / f"{name}.jpg", *mask.shape)
        write_mask(coco / "annotations" / "train2017" / f"{name}{suffix}", mask)
    return coco


def make_cityscapes(root: Path, masks: dict, suffix: str = "_gtFine_labelIds.png") -> Path:
    city = root / "cityscapes"
    for name, mask in masks.items():
        write_image(city / "leftImg8bit" / "train" / "aachen" / f"{name}_leftImg8bit.png", *mask.shape)
        write_mask(city / "gtFine" / "train" / "aachen" / f"{name}{suffix}", mask)
    return city


def local_mask(spec: str, index: int = 0) -> list[int]:
    return open_reader(spec).load_mask(index)[0].tolist()


# ---- specs -------------------------------------------------------------------------------------------------
def test_parse_spec_splits_name_path_and_optional_split():
    assert parse_spec("voc_aug:/data/VOCdevkit/VOC2012") == parse_spec("voc_aug:/data/VOCdevkit/VOC2012")
    spec = parse_spec("ade20k:/data/ade/ADEChallengeData2016:validation")
    assert (spec.name, spec.path, spec.split) == ("ade20k", "/data/ade/ADEChallengeData2016", "validation")
    assert parse_spec("voc_aug:/data/VOC2012").split is None
    assert parse_spec("folder:/data/a:b/c").path == "/data/a:b/c"  # a ':' inside the path is not a split
    assert str(spec) == "ade20k:/data/ade/ADEChallengeData2016:validation"
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'"):
        parse_spec("imagenet:/data")
    with pytest.raises(ValueError, match="NAME:PATH"):
        parse_spec("voc_aug")


# ---- VOC ---------------------------------------------------------------------------------------------------
def test_voc_palette_png_keeps_indices_and_255_boundary(tmp_path):
    voc = make_voc(tmp_path, train={"a": grid([0, 15, 255, 20])}, val={"b": grid([7, 0, 0, 0])})
    assert local_mask(f"voc:{voc}:train") == [0, 15, 255, 20]
    assert Image.open(voc / "SegmentationClass" / "a.png").mode == "P"
    assert local_mask(f"voc:{voc}:val") == [7, 0, 0, 0]
    reader = open_reader(f"voc:{voc}", train=False)
    assert reader.split == "val" and reader.palette[15].tolist() == [192, 128, 128]


def test_voc_aug_combines_official_train_and_sbd_aug(tmp_path):
    voc = make_voc(
        tmp_path, train={"t": grid([0, 255, 1, 1])}, val={"v": grid([2, 2, 2, 2])}, aug={"s": grid([3, 3, 0, 0])}
    )
    reader = open_reader(f"voc_aug:{voc}")
    assert reader.split == "train_aug"
    assert {s.name: s.mask.parent.name for s in reader.samples} == {
        "t": "SegmentationClass",
        "s": "SegmentationClassAug",
    }
    assert [reader.load_mask(i)[0].tolist() for i in range(2)] == [[0, 255, 1, 1], [3, 3, 0, 0]]


def test_voc_value_outside_range_names_file(tmp_path):
    voc = make_voc(tmp_path, train={"bad": grid([0, 21, 1, 1])}, val={"v": grid([0, 0, 0, 0])})
    with pytest.raises(BadSampleError, match=r"bad\.png: label values \[21\] outside"):
        open_reader(f"voc:{voc}:train").load_mask(0)


def test_rgb_mask_is_rejected(tmp_path):
    voc = make_voc(tmp_path, train={"a": grid([0, 1, 1, 1])}, val={"v": grid([0, 0, 0, 0])})
    Image.open(voc / "SegmentationClass" / "a.png").convert("RGB").save(voc / "SegmentationClass" / "a.png")
    with pytest.raises(BadSampleError, match=r"a\.png: label image has mode 'RGB'"):
        open_reader(f"voc:{voc}:train").load_mask(0)


# ---- ADE20K ------------------------------------------------------------------------------------------------
def test_ade20k_reduce_zero_label(tmp_path):
    ade = make_ade(tmp_path, {"ADE_train_00000001": grid([0, 1, 150, 13])})
    assert local_mask(f"ade20k:{ade}") == [255, 0, 149, 12]
    assert open_reader(f"ade20k:{ade}:train").split == "training"


def test_ade20k_151_is_out_of_range(tmp_path):
    ade = make_ade(tmp_path, {"ADE_train_00000001": grid([0, 151, 1, 1])})
    with pytest.raises(BadSampleError, match=r"ADE_train_00000001\.png: label values \[151\]"):
        open_reader(f"ade20k:{ade}").load_mask(0)


# ---- COCO-Stuff ----------------------------------------------------------------------------------------------
def test_coco_stuff164k_raw_ids(tmp_path):
    # 0 person, 12 stop sign (after unused 11), 91 banner (first stuff), 181 wood, 255 unlabeled
    coco = make_coco164k(tmp_path, {"000000000001": grid([0, 12, 91, 181, 255])})
    assert local_mask(f"coco_stuff164k:{coco}") == [0, 11, 80, 170, 255]


@pytest.mark.parametrize("unused", [11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90])
def test_coco_stuff164k_unused_ids_are_errors(tmp_path, unused):
    coco = make_coco164k(tmp_path, {"000000000001": grid([0, unused, 1, 1])})
    with pytest.raises(BadSampleError, match=rf"000000000001\.png: label values \[{unused}\]"):
        open_reader(f"coco_stuff164k:{coco}").load_mask(0)


def test_coco_stuff164k_label_train_ids(tmp_path):
    coco = make_coco164k(tmp_path, {"000000000001": grid([0, 11, 170, 255])}, suffix="_labelTrainIds.png")
    assert local_mask(f"coco_stuff164k:{coco}") == [0, 11, 170, 255]
    make_coco164k(tmp_path, {"000000000002": grid([0, 171, 1, 1])}, suffix="_labelTrainIds.png")
    with pytest.raises(BadSampleError, match=r"000000000002_labelTrainIds\.png: label values \[171\]"):
        open_reader(f"coco_stuff164k:{coco}").load_mask(1)


def test_coco_stuff10k_mat_is_one_based(tmp_path):
    root = tmp_path / "coco_stuff10k"
    (root / "imageLists").mkdir(parents=True)
    (root / "imageLists" / "train.txt").write_text("COCO_train2014_000000000009\n")
    write_image(root / "images" / "COCO_train2014_000000000009.jpg", 4, 5)
    (root / "annotations").mkdir()
    labels = grid([0, 1, 13, 92, 182]).astype(np.uint16)
    scipy.io.savemat(root / "annotations" / "COCO_train2014_000000000009.mat", {"S": labels})
    assert local_mask(f"coco_stuff10k:{root}") == [255, 0, 11, 80, 170]
    scipy.io.savemat(root / "annotations" / "COCO_train2014_000000000009.mat", {"S": grid([0, 12, 1, 1, 1])})
    with pytest.raises(BadSampleError, match=r"\.mat: label values \[12\]"):  # 1-based street sign: unused
        open_reader(f"coco_stuff10k:{root}").load_mask(0)


def test_coco_stuff10k_converted_layout(tmp_path):
    root = tmp_path / "coco_stuff10k"
    write_image(root / "images" / "test2014" / "x.jpg", 4, 4)
    write_mask(root / "annotations" / "test2014" / "x_labelTrainIds.png", grid([0, 1, 171, 5]))
    assert local_mask(f"coco_stuff10k:{root}:val") == [255, 0, 170, 4]


# ---- Cityscapes ----------------------------------------------------------------------------------------------
def test_cityscapes_label_ids_to_train_ids(tmp_path):
    city = make_cityscapes(tmp_path, {"aachen_000000_000019": grid([0, 7, 26, 33, 1, 6, 23])})
    assert local_mask(f"cityscapes:{city}") == [255, 0, 13, 18, 255, 255, 10]
    make_cityscapes(tmp_path, {"aachen_000001_000019": grid([7, 34, 7, 7])})
    with pytest.raises(BadSampleError, match=r"aachen_000001_000019_gtFine_labelIds\.png: label values \[34\]"):
        open_reader(f"cityscapes:{city}").load_mask(1)


def test_cityscapes_label_train_ids_preferred(tmp_path):
    city = make_cityscapes(tmp_path, {"aachen_000000_000019": grid([7, 7, 7, 7])})
    make_cityscapes(tmp_path, {"aachen_000000_000019": grid([0, 18, 255, 5])}, suffix="_gtFine_labelTrainIds.png")
    reader = open_reader(f"cityscapes:{city}")
    assert reader.samples[0].encoding == "train_ids" and local_mask(f"cityscapes:{city}") == [0, 18, 255, 5]
    assert reader.palette.shape == (19, 3)


# ---- generic folder ------------------------------------------------------------------------------------------
def test_folder_format(tmp_path):
    root = tmp_path / "my_data"
    (root / "masks").mkdir(parents=True)
    (root / "classes.txt").write_text("road\ncar\n\ntree\n")
    write_image(root / "images" / "sub" / "a.jpg", 4, 4)
    write_mask(root / "masks" / "sub" / "a.png", grid([0, 2, 255, 1]))
    reader = open_reader(f"folder:{root}")
    assert reader.dataset_name == "my_data" and reader.class_names == ("road", "car", "tree")
    assert local_mask(f"folder:{root}") == [0, 2, 255, 1]
    write_mask(root / "masks" / "sub" / "a.png", grid([0, 3, 255, 1]))
    with pytest.raises(BadSampleError, match=r"a\.png: label values \[3\] outside the dataset's range \(0\.\.2"):
        open_reader(f"folder:{root}").load_mask(0)


def test_folder_without_class_file(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(DatasetLayoutError, match="classes.txt: class-name file not found"):
        open_reader(f"folder:{tmp_path}")


# ---- global ids in the concatenated space -------------------------------------------------------------------
def test_pretrain_dataset_global_ids_exact(tmp_path):
    voc = make_voc(
        tmp_path,
        train={"t": grid([0, 255, 20, 20] * 4, 16)},
        val={"v": grid([0] * 16, 16)},
        aug={"s": grid([5] * 16, 16)},
    )
    ade = make_ade(tmp_path, {"ADE_train_00000001": grid([0, 1, 150, 13] * 4, 16)})
    coco = make_coco164k(tmp_path, {"000000000001": grid([0, 12, 181, 255] * 4, 16)})
    specs = [f"voc_aug:{voc}", f"ade20k:{ade}", f"coco_stuff164k:{coco}"]
    dataset, space = build_pretrain_dataset(
        specs, crop_size=16, mean=MEAN, std=STD, scale_range=(1.0, 1.0), cat_max_ratio=1.0
    )
    assert space.num_classes == 342 and dataset.dataset_sizes == [2, 1, 1]
    assert dataset.dataset_ids.tolist() == [0, 0, 1, 2]
    expected = {0: {0, IGNORE_INDEX, 20}, 1: {5}, 2: {IGNORE_INDEX, 21, 170, 33}, 3: {171, 182, 341, IGNORE_INDEX}}
    for index, values in expected.items():
        item = dataset[index]
        assert item["mask"].dtype == torch.int64 and set(item["mask"].unique().tolist()) == values
        assert item["image"].shape == item["image_k"].shape == (3, 16, 16)
        assert int(item["dataset_id"]) == int(dataset.dataset_ids[index]) and int(item["index"]) == index
    # photometric_on=device: uint8 local ids from the worker, the same global ids after the device lookup
    from training.data.label_space import lookup_per_sample

    on_device, _ = build_pretrain_dataset(
        specs, crop_size=16, mean=MEAN, std=STD, scale_range=(1.0, 1.0), cat_max_ratio=1.0, photometric_on="device"
    )
    for index, values in expected.items():
        item = on_device[index]
        assert item["mask"].dtype == torch.uint8 and item["image"].dtype == torch.uint8
        ids = lookup_per_sample(on_device.label_tables, item["dataset_id"].view(1), item["mask"][None])[0]
        assert set(ids.unique().tolist()) == values


@pytest.mark.parametrize(
    "values, valid",
    [
        ([0, 5, 20, 255], True),
        ([255, 255], True),
        ([0], True),  # VOC-style: 0..20 and 255
        ([0, 21, 255], False),
        ([3, 254], False),
        ([254, 255], False),
        ([21], False),
    ],
)
def test_fast_label_checks_agree_with_counting_every_value(values, valid):
    """The max-based proof and the value-count fallback accept and reject exactly the same masks."""
    from training.data.readers import apply_table, identity_table, lookup_table, proven_valid

    mask = np.tile(np.asarray(values, dtype=np.uint8), (3, 1))
    table = identity_table(21)
    assert not proven_valid(mask, table) or valid  # a proof is never wrong
    if valid:
        assert np.array_equal(apply_table(mask, table, Path("m.png"), "0..20 and 255"), mask)
    else:
        with pytest.raises(BadSampleError, match=r"m\.png: label values \[\d+"):
            apply_table(mask, table, Path("m.png"), "0..20 and 255")
    gaps = lookup_table({0: 0, 1: 1, 3: 2, 255: 255})  # an encoding with an unused id (2), like COCO-Stuff raw
    with pytest.raises(BadSampleError, match=r"label values \[2\]"):
        apply_table(np.array([[0, 2, 3]], dtype=np.uint8), gaps, Path("m.png"), "")
    assert apply_table(np.array([[0, 3, 255]], dtype=np.uint8), gaps, Path("m.png"), "").tolist() == [[0, 2, 255]]
