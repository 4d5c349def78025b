"""``hf:`` dataset specs: segmentation datasets in the formats the Hugging Face Hub ships (Parquet shards with a
dataset card and id2label.json; a ``save_to_disk`` folder with a ``ClassLabel`` mask), read through ``datasets``,
checked like every other reader, and trained on by pretraining and fine-tuning."""

import json

import numpy as np
import pytest
from hub_format_datasets import CLASSES, write_parquet_repo, write_saved_to_disk
from test_finetune_roundtrip import make_shapes_dataset

from training.data import BadSampleError, DatasetLayoutError
from training.data.__main__ import main as data_main
from training.data.errors import DatasetSpecError
from training.data.readers import open_reader
from training.data.specs import parse_spec
from training.engine.logger import read_metrics

datasets = pytest.importorskip("datasets", reason="the hf: reader needs the datasets library")


@pytest.fixture(autouse=True)
def private_datasets_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_datasets_cache")


@pytest.fixture
def parquet_repo(tmp_path):
    return write_parquet_repo(tmp_path / "shapes_parquet")


@pytest.fixture
def saved(tmp_path):
    return write_saved_to_disk(tmp_path / "shapes_saved")


def test_parquet_shards_with_id2label_and_a_saved_dataset_with_classlabel_read_like_any_dataset(parquet_repo, saved):
    for spec, columns in ((f"hf:{parquet_repo}", ("image", "label")), (f"hf:{saved}", ("photo", "segmentation"))):
        reader = open_reader(spec)
        assert (reader.split, len(reader), reader.class_names) == ("train", 6, CLASSES)
        assert (reader.image_column, reader.mask_column) == columns
        image, mask = reader.load_pair(2)
        assert image.shape == (3, 40, 40) and mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1, 2}
        assert len(open_reader(spec, train=False)) == 3  # the validation split ("val" is accepted too)
    assert len(open_reader(f"hf:{saved}:val")) == 3
    assert open_reader(f"hf:{saved}?name=my_shapes").dataset_name == "my_shapes"


def test_the_label_convention_options(tmp_path):
    shifted = write_parquet_repo(tmp_path / "ade_style", shift=1)  # 0 = other, classes stored as 1..3
    with pytest.raises(DatasetLayoutError, match=r"mask values \[3\] .* do not fit the 3 class names.*reduce_labels="):
        open_reader(f"hf:{shifted}")
    _, mask = open_reader(f"hf:{shifted}?reduce_labels=true").load_pair(0)
    assert set(np.unique(mask)) == {0, 1, 2}  # no pixel is 0 = "other" in these scenes
    _, remapped = open_reader(f"hf:{shifted}?remap=1:2,2:0,3:1").load_pair(0)
    assert np.array_equal(remapped, (mask + 2) % 3)
    _, ignored = open_reader(f"hf:{shifted}?reduce_labels=true&ignore_index=3").load_pair(0)
    assert set(np.unique(ignored)) <= {0, 1, 255} and (ignored == 255).any()


def test_missing_or_ambiguous_metadata_is_refused_with_one_clear_line(tmp_path, parquet_repo):
    bare = write_parquet_repo(tmp_path / "no_names", id2label=False)
    with pytest.raises(DatasetLayoutError, match="no class names: .*give them as \\?classes=FILE"):
        open_reader(f"hf:{bare}")
    names = tmp_path / "names.txt"
    names.write_text("\n".join(CLASSES) + "\n")
    assert open_reader(f"hf:{bare}?classes={names}").class_names == CLASSES
    with pytest.raises(DatasetSpecError, match=r"no column 'pixels' \(image=\); columns: image, label"):
        open_reader(f"hf:{parquet_repo}?image=pixels")
    with pytest.raises(DatasetSpecError, match=r"option\(s\) \['colour'\]: unknown"):
        open_reader(f"hf:{parquet_repo}?colour=1")
    with pytest.raises(DatasetSpecError, match="ade20k takes no options"):
        parse_spec("ade20k:/data/ADEChallengeData2016?reduce_labels=true")
    with pytest.raises(DatasetLayoutError, match="no split 'test'; it has train, validation"):
        open_reader(f"hf:{parquet_repo}:test")
    with pytest.raises(DatasetLayoutError, match="cannot be read as a Hugging Face dataset"):
        open_reader(f"hf:{tmp_path / 'nowhere'}")


def test_a_corrupt_row_is_named_by_source_split_and_row(tmp_path, capsys):
    repo = write_parquet_repo(tmp_path / "broken", corrupt_row=4)
    reader = open_reader(f"hf:{repo}")
    with pytest.raises(BadSampleError, match=rf"{repo}:train row 4: image is truncated or corrupt"):
        reader.load_pair(4)
    assert data_main(["check", f"hf:{repo}:train"]) == 1
    printed = capsys.readouterr().out
    assert f"ERROR {repo}:train row 4: image is truncated or corrupt" in printed
    assert "5 samples" not in printed and "classes present: 3 of 3" in printed


def _tiny_run(**sets) -> list[str]:
    values = {
        "data.crop_size": 32,
        "data.base_size": 40,
        "train.batch_size": 4,
        "train.log_every": 1,
        "train.plots": "false",
        "train.probe_every": 0,
        "export.enabled": "false",
        **sets,
    }
    return [f"--set={key}={value}" for key, value in values.items()]


def test_pretraining_on_two_hub_datasets_and_a_folder_dataset(parquet_repo, saved, tmp_path):
    from training.pretrain import main as pretrain_main

    folder = make_shapes_dataset(tmp_path / "folder_shapes", seed=1, train_images=6, val_images=2)
    specs = f"[hf:{parquet_repo},hf:{saved}?name=saved_shapes,folder:{folder}:train]"
    run = tmp_path / "run"
    sets = _tiny_run(**{"data.datasets": specs, "data.num_workers": 2, "train.max_steps": 3, "train.epochs": 2})
    assert pretrain_main(["--output", str(run), *sets]) == 0
    label_space = json.loads((run / "label_space.json").read_text())
    assert [d["name"] for d in label_space["datasets"]] == ["shapes_parquet", "saved_shapes", "folder_shapes"]
    assert label_space["class_names"][:3] == [f"shapes_parquet/{name}" for name in CLASSES]
    assert [row["step"] for row in read_metrics(run / "metrics.jsonl") if "loss" in row] == [1, 2, 3]


def test_fine_tuning_on_a_hub_dataset(parquet_repo, tmp_path):
    from training import finetune

    overrides = {
        "data.train": f"hf:{parquet_repo}:train",
        "data.val": f"hf:{parquet_repo}:validation",
        "data.crop_size": "[32, 32]",
        "data.base_size": 0,
        "data.num_workers": 0,
        "model.arch": "test_resnet",
        "model.head_channels": 16,
        "train.iterations": 3,
        "train.batch_size": 2,
        "train.eval_every": 0,
        "eval.test_scale": "[]",
        "eval.overlays": 0,
    }
    args = ["--recipe", "finetune_voc_aug", "--init", "scratch", "--output", str(tmp_path / "ft")]
    for key, value in overrides.items():
        args += ["--set", f"{key}={value}"]
    assert finetune.main(args) == 0
    results = json.loads((tmp_path / "ft" / "eval" / "results.json").read_text())
    assert set(results["per_class"]) == set(CLASSES)
