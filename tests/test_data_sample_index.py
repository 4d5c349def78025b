"""The packed sample index, its cache on disk (invalidated when a folder changes) and one listing for all ranks."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.test_data_readers import grid, make_ade, make_voc
from training.data.datasets import open_readers
from training.data.errors import BadSampleError, DatasetLayoutError
from training.data.readers import SampleFiles, SegmentationReader
from training.data.sample_index import SampleIndex


def backdate(root: Path) -> None:
    """Every folder and file under ``root`` a minute old, as a dataset is when a run starts (a listing is only
    cached when nothing changed right before it)."""
    old = (Path(root).stat().st_mtime_ns - 60 * 10**9,) * 2
    for folder, _, files in os.walk(root):
        for name in files:
            os.utime(Path(folder) / name, ns=old)
        os.utime(folder, ns=old)


def test_the_index_gives_back_every_sample_as_listed(tmp_path):
    samples = [
        SampleFiles(tmp_path / "images" / "a b.jpg", tmp_path / "masks" / "a b.png", "a b", "raw"),
        SampleFiles(tmp_path / "images" / "é" / "c.jpg", None, "é/c", "train_ids"),
        SampleFiles(Path("/elsewhere/d.jpg"), tmp_path / "masks" / "d.png", "d", "raw"),
    ]
    index = SampleIndex.pack(tmp_path, samples)
    assert list(index) == samples and index[-1] == samples[-1] and index[1:] == samples[1:]
    assert list(index.select(np.array([True, False, True]))) == [samples[0], samples[2]]
    assert index.folders() == ["", "/elsewhere", "images", "images/é", "masks"]
    with pytest.raises(IndexError):
        index[3]
    # no per-sample Python objects: a handful of numpy arrays, whatever the split's size
    assert {type(value) for value in vars(index.images).values()} == {np.ndarray}


def _voc(tmp_path: Path) -> Path:
    voc = make_voc(tmp_path, train={"a": grid([0, 1]), "b": grid([2, 3])}, val={"c": grid([4, 5])})
    backdate(tmp_path)
    return voc


def _open(spec: str, cache: Path):
    readers, dropped = open_readers([spec], train=True, skip_bad_samples=True, index_cache=cache)
    return readers[0], dropped


def test_a_cached_listing_is_reused_until_its_folders_change(tmp_path, monkeypatch):
    voc, cache = _voc(tmp_path / "data"), tmp_path / "cache"
    first, _ = _open(f"voc:{voc}", cache)
    assert [s.name for s in first.samples] == ["a", "b"] and len(list(cache.glob("voc-*.npz"))) == 1

    listed = []
    monkeypatch.setattr(SegmentationReader, "missing_files", lambda self: listed.append(self) or [])
    again, _ = _open(f"voc:{voc}", cache)
    assert list(again.samples) == list(first.samples) and listed == []  # from the cache: nothing stat'ed
    monkeypatch.undo()

    (voc / "SegmentationClass" / "b.png").unlink()  # the mask folder's time changes
    changed, dropped = _open(f"voc:{voc}", cache)
    assert [s.name for s in changed.samples] == ["a"]
    assert [p.path for p in dropped] == [str(voc / "SegmentationClass" / "b.png")]

    (voc / "ImageSets" / "Segmentation" / "train.txt").write_text("a\n")  # a list file changes
    assert [s.name for s in _open(f"voc:{voc}", cache)[0].samples] == ["a"]


def test_a_listing_made_while_the_folder_changes_is_not_cached(tmp_path):
    voc, cache = make_voc(tmp_path, train={"a": grid([0, 1])}, val={"c": grid([4, 5])}), tmp_path / "cache"
    _open(f"voc:{voc}", cache)  # written just now: the listing may have raced the writes
    assert not list(cache.glob("*.npz"))
    _open(f"voc:{voc}", "off")
    assert not list(cache.glob("*.npz"))


def _rank(rank: int, init_file: str, voc: str, ade_missing: str, results: dict) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        if rank == 1:  # this rank must not look at the dataset's files to open it
            SegmentationReader.missing_files = lambda self: (_ for _ in ()).throw(AssertionError("rank 1 listed"))
        readers, dropped = open_readers([f"voc:{voc}"], train=True, skip_bad_samples=True, index_cache="off")
        results[rank] = ([s.image for s in readers[0].samples], [p.path for p in dropped], readers[0].listing_inputs)
        try:
            open_readers([f"ade20k:{ade_missing}"], train=True, skip_bad_samples=False, index_cache="off")
        except (DatasetLayoutError, BadSampleError) as error:
            results[f"error{rank}"] = (type(error).__name__, str(error))
    finally:
        dist.destroy_process_group()


def test_one_rank_lists_the_dataset_and_the_others_receive_it(tmp_path):
    voc = _voc(tmp_path / "data")
    (voc / "JPEGImages" / "b.jpg").unlink()
    ade = make_ade(tmp_path / "ade", {"x": grid([1, 2])})
    (ade / "annotations" / "training" / "x.png").unlink()
    with mp.Manager() as manager:
        results = manager.dict()
        args = (str(tmp_path / "init"), str(voc), str(ade), results)
        mp.start_processes(_rank, args=args, nprocs=2, start_method="fork")
        results = dict(results)
    samples, dropped, inputs = results[0]
    assert results[1][:2] == (samples, dropped) and [Path(p).name for p in samples] == ["a.jpg"]
    assert dropped == [str(voc / "JPEGImages" / "b.jpg")]
    assert inputs and results[1][2] == []  # rank 0 read the split list; rank 1 read nothing
    assert results["error0"] == results["error1"] and results["error1"][0] == "BadSampleError"
    assert "x.png: mask file not found" in results["error1"][1]
