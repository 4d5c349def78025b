"""Readers of the photo datasets (CamVid, Oxford-IIIT Pet, Clothing Co-Parsing, MSRC-v2) on fixtures written in
their real formats: grayscale and trimap PNGs, .mat files (scipy.io.savemat), BMP photos and split lists."""

from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image
from test_data_readers import grid, local_mask, write_image, write_mask
from torchvision.datasets import OxfordIIITPet

from training.data import BadSampleError, DatasetLayoutError, open_reader
from training.data.__main__ import main
from training.data.classes import CCP_CLASSES


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def assert_samples_fail(reader, problems: list[str]) -> None:
    """Sample i of ``reader`` raises BadSampleError matching ``problems[i]``."""
    for index, problem in enumerate(problems):
        with pytest.raises(BadSampleError, match=problem):
            reader.load_pair(index)


def make_camvid(root: Path, masks: dict[str, dict[str, np.ndarray]]) -> Path:
    """SegNet's layout: ``<split>/<name>.png`` photos and ``<split>annot/<name>.png`` grayscale labels."""
    for split, items in masks.items():
        for name, mask in items.items():
            write_image(root / split / f"{name}.png", *mask.shape)
            write_mask(root / f"{split}annot" / f"{name}.png", mask)
    return root


def make_pets(base: Path, trainval: dict, test: dict) -> Path:
    """Oxford-IIIT Pet: ``images/<id>.jpg``, ``annotations/trimaps/<id>.png``, ``annotations/<split>.txt``."""
    for split, items in (("trainval", trainval), ("test", test)):
        for name, trimap in items.items():
            write_image(base / "images" / f"{name}.jpg", *trimap.shape)
            write_mask(base / "annotations" / "trimaps" / f"{name}.png", trimap)
        (base / "annotations" / f"{split}.txt").write_text("".join(f"{n} 1 1 1\n" for n in items))
    return base


def save_ccp_label_list(root: Path, names: list[str]) -> None:
    cells = np.empty((1, len(names)), dtype=object)
    cells[0, :] = names
    scipy.io.savemat(root / "label_list.mat", {"label_list": cells})


def make_ccp(root: Path, masks: dict[str, np.ndarray], label_list: bool = True) -> Path:
    """Clothing Co-Parsing: ``photos/<NNNN>.jpg`` + ``annotations/pixel-level/<NNNN>.mat`` ('groundtruth')."""
    (root / "annotations" / "pixel-level").mkdir(parents=True, exist_ok=True)
    for name, mask in masks.items():
        write_image(root / "photos" / f"{name}.jpg", *mask.shape)
        scipy.io.savemat(root / "annotations" / "pixel-level" / f"{name}.mat", {"groundtruth": mask})
    if label_list:
        save_ccp_label_list(root, ["null", *CCP_CLASSES[1:]])
    return root


def make_msrc(root: Path, items: dict[str, tuple[np.ndarray, list[int]]]) -> Path:
    """MSRC-v2: ``Images/<row>_<n>_s.bmp`` + ``newsegmentations_mats/<row>_<n>_s_GT.mat`` (newseg, newlabels)."""
    (root / "newsegmentations_mats").mkdir(parents=True, exist_ok=True)
    for name, (segments, labels) in items.items():
        write_image(root / "Images" / f"{name}.bmp", *segments.shape)
        scipy.io.savemat(
            root / "newsegmentations_mats" / f"{name}_GT.mat",
            {"newseg": segments, "newlabels": np.asarray([labels], dtype=np.uint8)},
        )
    return root


# ---- CamVid ------------------------------------------------------------------------------------------------------
def test_camvid_unlabelled_is_ignored_and_splits_are_folders(tmp_path):
    camvid = make_camvid(
        tmp_path / "CamVid",
        {"train": {"a": grid([0, 10, 11, 3])}, "val": {"b": grid([5, 5, 5, 5])}, "test": {"c": grid([1, 1, 11, 11])}},
    )
    assert local_mask(f"camvid:{camvid}") == [0, 10, 255, 3]
    assert local_mask(f"camvid:{camvid}:test") == [1, 1, 255, 255]
    assert [s.name for s in open_reader(f"camvid:{camvid}:trainval").samples] == ["a", "b"]
    assert open_reader(f"camvid:{camvid}", train=False).split == "val"
    with pytest.raises(DatasetLayoutError, match="unknown camvid split 'training'; choose one of train, val"):
        open_reader(f"camvid:{camvid}:training")


def test_camvid_value_past_unlabelled_names_the_file(tmp_path):
    camvid = make_camvid(tmp_path / "CamVid", {"train": {"a": grid([0, 12, 11, 3])}})
    with pytest.raises(BadSampleError, match=r"trainannot/a\.png: label values \[12\] outside .*11 = unlabelled"):
        open_reader(f"camvid:{camvid}").load_mask(0)


# ---- Oxford-IIIT Pet ---------------------------------------------------------------------------------------------
def test_pet_trimap_border_is_ignored_and_only_listed_images_are_read(tmp_path):
    pets = make_pets(
        tmp_path / "oxford-iiit-pet",
        trainval={"Abyssinian_1": grid([1, 2, 3, 1])},
        test={"beagle_7": grid([2, 2, 1, 3])},
    )
    scipy.io.savemat(pets / "images" / "Abyssinian_1.mat", {"x": np.zeros(2)})  # stray files in images/
    write_image(pets / "images" / "Abyssinian_9.jpg", 4, 4)
    reader = open_reader(f"oxford_pet:{pets}")
    assert reader.split == "trainval" and [s.name for s in reader.samples] == ["Abyssinian_1"]
    assert reader.load_mask(0)[0].tolist() == [1, 0, 255, 1] and reader.class_names == ("background", "pet")
    assert local_mask(f"oxford_pet:{pets}:val") == [0, 0, 1, 255]  # val is the test list
    for bad in (0, 4):
        write_mask(pets / "annotations" / "trimaps" / "Abyssinian_1.png", grid([1, bad, 3, 1]))
        with pytest.raises(BadSampleError, match=rf"trimaps/Abyssinian_1\.png: label values \[{bad}\] outside"):
            reader.load_mask(0)


def test_pet_images_stored_as_rgba_png_or_gif_under_jpg_names(tmp_path):
    pets = make_pets(
        tmp_path / "oxford-iiit-pet",
        trainval={"Abyssinian_5": grid([1, 2, 3, 2] * 2, 8), "Abyssinian_34": grid([1, 2, 3, 2] * 2, 8)},
        test={},
    )
    rgba = np.random.default_rng(1).integers(0, 256, (8, 8, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(pets / "images" / "Abyssinian_5.jpg", format="PNG")
    Image.fromarray(rgba[..., :3]).convert("P").save(pets / "images" / "Abyssinian_34.jpg", format="GIF")
    reader = open_reader(f"oxford_pet:{pets}")
    for index, name in enumerate(("Abyssinian_5", "Abyssinian_34")):
        expected = np.asarray(Image.open(pets / "images" / f"{name}.jpg").convert("RGB"))
        assert np.array_equal(reader.load_image(index).permute(1, 2, 0).numpy(), expected)


def test_pet_reader_reads_what_torchvision_reads(tmp_path):
    make_pets(
        tmp_path / "oxford-iiit-pet",
        trainval={"Abyssinian_1": grid([1, 2, 3, 1]), "beagle_2": grid([3, 3, 2, 1])},
        test={"pug_3": grid([2] * 4)},
    )
    lookup = {1: 1, 2: 0, 3: 255}
    for split in ("trainval", "test"):
        theirs = OxfordIIITPet(tmp_path, split=split, target_types="segmentation")
        ours = open_reader(f"oxford_pet:{tmp_path}:{split}")  # torchvision's root: the folder above
        assert len(ours) == len(theirs)
        for index in range(len(theirs)):
            image, trimap = theirs[index]
            assert np.array_equal(ours.load_image(index).permute(1, 2, 0).numpy(), np.asarray(image))
            expected = np.vectorize(lookup.get)(np.asarray(trimap))
            assert np.array_equal(ours.load_mask(index), expected)


# ---- Clothing Co-Parsing -----------------------------------------------------------------------------------------
def test_ccp_mat_ids_and_numbered_split(tmp_path):
    masks = {f"{n:04d}": grid([n, 0, 58, 19]) for n in range(1, 11)}
    ccp = make_ccp(tmp_path / "ccp", masks)
    names = {
        split: [s.name for s in open_reader(f"ccp:{ccp}:{split}").samples]
        for split in ("train", "val", "test", "trainval", "all")
    }
    assert names["train"] == ["0001", "0002", "0005", "0006", "0007", "0010"]  # n % 5 in {0, 1, 2}
    assert names["val"] == ["0003", "0008"] and names["test"] == ["0004", "0009"]
    assert names["trainval"] == sorted(names["train"] + names["val"]) and len(names["all"]) == 10
    assert local_mask(f"ccp:{ccp}:test") == [4, 0, 58, 19]
    assert open_reader(f"ccp:{ccp}").class_names[:3] == ("background", "accessories", "bag")


def test_ccp_bad_values_and_files_are_named(tmp_path):
    ccp = make_ccp(
        tmp_path / "ccp",
        {
            "0001": grid([0, 59, 1, 1]),
            "0002": grid([0, 255, 1, 1]),
            "0005": grid([1, 1, 1, 1]),
            "0006": grid([1, 1, 1, 1]),
            "0007": grid([1, 2, 1, 1]).astype(np.float64) + 0.5,
        },
    )
    labels = ccp / "annotations" / "pixel-level"
    truncate(labels / "0005.mat")
    scipy.io.savemat(labels / "0006.mat", {"labels": grid([1, 1, 1, 1])})
    reader = open_reader(f"ccp:{ccp}")
    expected = [
        r"0001\.mat: label values \[59\] outside the dataset's range \(0\.\.58",
        r"0002\.mat: label values \[255\] outside",  # CCP has no ignore value
        r"0005\.mat: \.mat label file is truncated or corrupt",
        r"0006\.mat: \.mat label file has no variable 'groundtruth' \(found: labels\)",
        r"0007\.mat: variable 'groundtruth' holds float64 values, not integer labels",
    ]
    assert_samples_fail(reader, expected)


def test_ccp_label_list_must_match_the_decoded_classes(tmp_path):
    ccp = make_ccp(tmp_path / "ccp", {"0001": grid([0, 1, 1, 1])})
    save_ccp_label_list(ccp, ["null", *CCP_CLASSES[2:], "extra"])
    with pytest.raises(DatasetLayoutError, match="label_list.mat: class list differs"):
        open_reader(f"ccp:{ccp}")
    (ccp / "label_list.mat").unlink()  # optional: the ids are decoded with the built-in list
    assert open_reader(f"ccp:{ccp}").num_classes == 59


# ---- MSRC-v2 -----------------------------------------------------------------------------------------------------
def test_msrc_segments_take_their_class_and_unlisted_segments_are_void(tmp_path):
    msrc = make_msrc(
        tmp_path / "MSRC_v2",
        {
            "1_1_s": (grid([1, 2, 3, 3]), [4, 2]),
            "1_3_s": (grid([1, 1, 2, 2]), [23, 7]),
            "2_4_s": (grid([1, 1, 1, 1]), [1]),
            "3_5_s": (grid([2, 1, 1, 1]), [19]),
        },
    )
    assert local_mask(f"msrc:{msrc}") == [3, 1, 255, 255]  # cow, grass, void
    assert local_mask(f"msrc:{msrc}:val") == [22, 22, 6, 6]  # boat, sky
    names = {split: [s.name for s in open_reader(f"msrc:{msrc}:{split}").samples] for split in ("train", "val", "test")}
    assert names == {"train": ["1_1_s", "3_5_s"], "val": ["1_3_s"], "test": ["2_4_s"]}  # by n in <row>_<n>_s
    assert open_reader(f"msrc:{msrc}").load_mask(1)[0].tolist() == [255, 18, 18, 18]


def test_msrc_bad_segments_classes_and_files_are_named(tmp_path):
    msrc = make_msrc(
        tmp_path / "MSRC_v2",
        {
            "1_1_s": (grid([0, 1, 1, 1]), [2]),
            "1_2_s": (grid([1, 2, 1, 1]), [24, 3]),
            "1_5_s": (grid([1, 1, 1, 1]), [2]),
            "1_6_s": (grid([1, 1, 1, 1]), [2]),
        },
    )
    truncate(msrc / "Images" / "1_5_s.bmp")
    truncate(msrc / "newsegmentations_mats" / "1_6_s_GT.mat")
    reader = open_reader(f"msrc:{msrc}")
    expected = [
        r"1_1_s_GT\.mat: label values \[0\] outside .*segment ids 1\.\.255",
        r"1_2_s_GT\.mat: 'newlabels' holds classes \[24\] outside 1\.\.23",
        r"1_5_s\.bmp: image is truncated or corrupt",
        r"1_6_s_GT\.mat: \.mat label file is truncated or corrupt",
    ]
    assert_samples_fail(reader, expected)
    with pytest.raises(DatasetLayoutError, match=r"notes\.bmp: unexpected file name in a msrc layout"):
        write_image(msrc / "Images" / "notes.bmp", 2, 2)
        open_reader(f"msrc:{msrc}")


# ---- the doctor names a corrupted file in each format ------------------------------------------------------------
def corrupt_camvid(root: Path) -> tuple[str, str]:
    make_camvid(root, {"train": {"good": grid([0, 1, 2, 3]), "bad": grid([0, 1, 2, 3])}})
    truncate(root / "trainannot" / "bad.png")
    return "camvid:{}:train", "trainannot/bad.png: mask is truncated or corrupt"


def corrupt_pets(root: Path) -> tuple[str, str]:
    make_pets(root, trainval={"good_1": grid([1, 2, 3, 2]), "bad_2": grid([1, 2, 3, 2])}, test={})
    truncate(root / "images" / "bad_2.jpg")
    return "oxford_pet:{}:trainval", "images/bad_2.jpg: image is truncated or corrupt"


def corrupt_ccp(root: Path) -> tuple[str, str]:
    make_ccp(root, {"0001": grid([0, 1, 2, 3]), "0002": grid([0, 1, 2, 3])})
    truncate(root / "annotations" / "pixel-level" / "0002.mat")
    return "ccp:{}:train", "pixel-level/0002.mat: .mat label file is truncated or corrupt"


def corrupt_msrc(root: Path) -> tuple[str, str]:
    make_msrc(root, {"1_1_s": (grid([1, 1, 2, 2]), [2]), "1_2_s": (grid([1, 1, 2, 2]), [2])})
    truncate(root / "Images" / "1_2_s.bmp")
    return "msrc:{}:train", "Images/1_2_s.bmp: image is truncated or corrupt"


@pytest.mark.parametrize("corrupt", [corrupt_camvid, corrupt_pets, corrupt_ccp, corrupt_msrc])
def test_check_command_names_the_corrupted_file(tmp_path, capsys, corrupt):
    spec, problem = corrupt(tmp_path / "data")
    assert main(["check", spec.format(tmp_path / "data")]) == 1
    out = capsys.readouterr().out
    assert "2 samples, 1 problems" in out and problem in out and "1 split(s) checked, 1 problem(s)" in out
