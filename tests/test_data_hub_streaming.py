"""``hf:...?stream=true``: a Hub-layout Parquet dataset streamed shard by shard. With 2 ranks x 2 DataLoader workers
every row is yielded exactly once per epoch, the next epoch in another order, and a run resumed after k batches
yields exactly the batches it had left; bad rows are named by shard and row; too few shards are refused."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hub_format_datasets import write_parquet_repo
from torch.utils.data import DataLoader

from training.data import BadSampleError, DatasetLayoutError, build_pretrain_dataset
from training.data.hub_streaming import StreamingSegmentation, epoch_ranges
from training.engine.logger import read_metrics

datasets = pytest.importorskip("datasets", reason="the hf: reader needs the datasets library")

ROOT = Path(__file__).resolve().parents[1]
SHARDS = (4, 3, 5, 4, 2, 6)  # 24 rows: 2 ranks x 4 steps x batch 3
BATCH, RANKS, WORKERS = 3, 2, 2


@pytest.fixture(autouse=True)
def private_datasets_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_datasets_cache")
    datasets.disable_progress_bars()


def stream_samples(repo: Path, **options):
    query = "&".join(["stream=true", *(f"{key}={value}" for key, value in options.items())])
    samples, _ = build_pretrain_dataset(
        [f"hf:{repo}?{query}"], crop_size=16, mean=(0.5,) * 3, std=(0.25,) * 3, photometric_on="device"
    )
    return samples


def rank_batches(samples, rank: int, epoch: int, skip: int = 0, **kwargs) -> list[list[int]]:
    """The ``index`` of every item of one rank's epoch, batch by batch, through a DataLoader with 2 workers."""
    stream = StreamingSegmentation(
        samples, batch_size=BATCH, rank=rank, world_size=RANKS, num_workers=WORKERS, seed=7, **kwargs
    )
    stream.set_epoch(epoch, skip)
    loader = DataLoader(stream, batch_size=BATCH, drop_last=True, num_workers=WORKERS)
    return [batch["index"].tolist() for batch in loader]


def test_two_ranks_of_two_workers_see_every_row_once_per_epoch_and_resume_exactly(tmp_path):
    samples = stream_samples(write_parquet_repo(tmp_path / "sharded", train_shards=SHARDS))
    epochs = [[rank_batches(samples, rank, epoch) for rank in range(RANKS)] for epoch in range(2)]
    for ranks in epochs:
        assert [len(batches) for batches in ranks] == [4, 4]  # the same steps on every rank
        rows = [index for batches in ranks for batch in batches for index in batch]
        assert sorted(rows) == list(range(24))
    assert epochs[0] != epochs[1]  # a new shard order and buffer order
    for skip in (1, 2, 3):
        for rank in range(RANKS):
            assert rank_batches(samples, rank, 1, skip) == epochs[1][rank][skip:]


def test_rows_beyond_whole_global_batches_wait_for_another_epoch():
    rows = (4, 3, 5, 4, 2, 7)  # 25 rows: one is left over each epoch
    for epoch in range(3):
        ranges = epoch_ranges(rows, seed=0, epoch=epoch, world_size=RANKS, workers=WORKERS, batch_size=BATCH)
        taken = [(shard, row) for own in ranges for shard, start, stop in own for row in range(start, stop)]
        assert len(taken) == len(set(taken)) == 24
        assert [sum(stop - start for _, start, stop in own) for own in ranges] == [6, 6, 6, 6]


def test_a_bad_row_is_named_by_shard_and_row_and_skip_bad_samples_keeps_the_steps(tmp_path):
    repo = write_parquet_repo(tmp_path / "broken", train_shards=SHARDS, corrupt_row=9)  # shard 2, row 2
    with pytest.raises(BadSampleError, match=r":train data/train-00002-of-00006.parquet row 2: image is truncated"):
        list(StreamingSegmentation(stream_samples(repo), batch_size=BATCH))  # one process reads every row
    samples, _ = build_pretrain_dataset(
        [f"hf:{repo}?stream=true&shuffle_buffer=0"], crop_size=16, mean=(0.5,) * 3, std=(0.25,) * 3,
        photometric_on="device", skip_bad_samples=True,
    )  # fmt: skip
    ranks = [rank_batches(samples, rank, 0) for rank in range(RANKS)]
    assert [len(batches) for batches in ranks] == [4, 4]
    rows = [index for batches in ranks for batch in batches for index in batch]
    assert 9 not in rows and len(rows) == 24 and set(rows) == set(range(24)) - {9}
    report = samples.skip_report()
    assert report["skipped"] == 1 and report["files"] == [f"{repo}:train data/train-00002-of-00006.parquet row 2"]


def test_fewer_shards_than_stream_readers_is_refused_with_one_line(tmp_path):
    samples = stream_samples(write_parquet_repo(tmp_path / "three", train_shards=(8, 8, 8)))
    with pytest.raises(DatasetLayoutError, match=r"3 shard\(s\) for 4 stream readers \(2 rank\(s\) x 2 worker"):
        rank_batches(samples, 0, 0)
    one_worker = StreamingSegmentation(samples, batch_size=BATCH, rank=0, world_size=RANKS, num_workers=1)
    assert one_worker.steps_per_epoch == 4


def test_pretraining_refuses_to_mix_streams_and_map_style_datasets(tmp_path, capsys):
    from training.pretrain import main as pretrain_main

    repo = write_parquet_repo(tmp_path / "shapes", train_shards=(3, 3))
    sets = [f"--set=data.datasets=[hf:{repo}?stream=true,hf:{repo}]", "--set=train.probe_every=0"]
    assert pretrain_main(["--output", str(tmp_path / "run"), *sets]) != 0
    assert f"mixes streamed (stream=true) and map-style datasets (hf:{repo})" in capsys.readouterr().err


@pytest.mark.slow
def test_pretraining_on_a_stream_with_two_gloo_ranks_of_two_workers(tmp_path):
    repo = write_parquet_repo(tmp_path / "shapes", train_shards=SHARDS)
    run = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'tests'}", OMP_NUM_THREADS="1")
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    sets = {
        "data.datasets": f"[hf:{repo}?stream=true]",
        "data.num_workers": WORKERS,
        "data.crop_size": 32,
        "data.base_size": 40,
        "train.batch_size": BATCH,
        "train.epochs": 2,
        "method.options.sc_topk": 2,  # of the 3 classes
        "train.log_every": 1,
        "train.plots": "false",
        "train.probe_every": 0,
        "export.enabled": "false",
    }
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone"]
    command = [*launch, "-m", "training.pretrain", "--output", str(run), *(f"--set={k}={v}" for k, v in sets.items())]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-4000:]
    assert [row["step"] for row in read_metrics(run / "metrics.jsonl") if "loss" in row] == list(range(1, 9))
    assert json.loads((run / "label_space.json").read_text())["datasets"][0]["name"] == "shapes"


def test_fine_tuning_refuses_a_stream(tmp_path, capsys):
    from training import finetune

    repo = write_parquet_repo(tmp_path / "shapes", train_shards=(3, 3))
    args = ["--init", "scratch", "--output", str(tmp_path / "ft"), "--set", f"data.train=hf:{repo}?stream=true"]
    assert finetune.main(args) != 0
    assert "fine-tuning reads hf: datasets map-style" in capsys.readouterr().err
