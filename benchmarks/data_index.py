"""The data layer at the paper's size: 149,079 samples in the real layouts of VOC-aug (10,582), ADE20K (20,210) and
COCO-Stuff 164k (118,287), every file a hard link to one tiny real image or mask of its format.

  start-up   launch to the first batch of a pretraining dataset over the three (1 rank, and 8 ranks under torchrun
             on one filesystem), with the listing cache empty (first start) and filled (a restart);
  calls      the metadata and open calls each rank makes on the dataset's folders (strace, first start);
  memory     resident and private memory of each of 8 DataLoader workers over one pass of the index, with the
             samples stored as packed arrays and, for comparison, as a list of Python objects.

    python benchmarks/data_index.py [--scale 1.0] [--ranks 8] [--workers 8] [--out report.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

PAPER_COUNTS = {"voc_aug": 10_582, "ade20k": 20_210, "coco_stuff164k": 118_287}
VOC_OFFICIAL_TRAIN = 1_464  # VOC 2012's own train list: its masks live in SegmentationClass
CROP = 64
BATCH = 16
LAUNCH_ENV = "MDP_BENCH_LAUNCH_TIME"


# ---------------------------------------------------------------- the index on disk


LINKS_PER_FILE = 50_000  # ext4 allows 65,000 hard links to one file


def _base_files(folder: Path, max_label: int, palette: bool, copy: int) -> tuple[Path, Path]:
    """A 64x48 JPEG and a label PNG (values 0..max_label) to hard-link under sample names (``copy``: which of the
    identical files, so none gets more links than the filesystem allows)."""
    rng = np.random.default_rng(max_label)
    image, mask = folder / f"base{max_label}-{copy}.jpg", folder / f"base{max_label}-{copy}.png"
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(image, quality=90)
    label = Image.fromarray(rng.integers(0, max_label + 1, (48, 64), dtype=np.uint8), mode="L")
    if palette:
        label = label.convert("P")
    label.save(mask)
    return image, mask


def _link_all(pairs: list[tuple[Path, Path]], bases: Path, max_label: int, palette: bool) -> None:
    for folder in {p.parent for pair in pairs for p in pair}:
        folder.mkdir(parents=True, exist_ok=True)
    for start in range(0, len(pairs), LINKS_PER_FILE):
        base_image, base_mask = _base_files(bases, max_label, palette, start // LINKS_PER_FILE)
        for image, mask in pairs[start : start + LINKS_PER_FILE]:
            os.link(base_image, image)
            os.link(base_mask, mask)


def write_layouts(root: Path, scale: float) -> list[str]:
    """The three paper datasets at ``scale`` x their sizes; returns their specs (label-space order)."""
    count = {name: max(2, round(n * scale)) for name, n in PAPER_COUNTS.items()}
    bases = root / "base"
    bases.mkdir(parents=True)
    voc = root / "VOCdevkit" / "VOC2012"
    ids = [f"2008_{i:06d}" for i in range(count["voc_aug"])]
    official = set(ids[: min(VOC_OFFICIAL_TRAIN, len(ids) // 2)])
    pairs = [
        (
            voc / "JPEGImages" / f"{i}.jpg",
            voc / ("SegmentationClass" if i in official else "SegmentationClassAug") / f"{i}.png",
        )
        for i in ids
    ]
    _link_all(pairs, bases, 20, palette=True)
    lists = voc / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (lists / "trainaug.txt").write_text("".join(f"{i}\n" for i in ids))
    (lists / "train.txt").write_text("".join(f"{i}\n" for i in sorted(official)))
    ade = root / "ADEChallengeData2016"
    names = [f"ADE_train_{i:08d}" for i in range(1, count["ade20k"] + 1)]
    pairs = [(ade / "images/training" / f"{n}.jpg", ade / "annotations/training" / f"{n}.png") for n in names]
    _link_all(pairs, bases, 150, palette=False)
    coco = root / "coco_stuff164k"
    names = [f"{i:012d}" for i in range(1, count["coco_stuff164k"] + 1)]
    pairs = [
        (coco / "images/train2017" / f"{n}.jpg", coco / "annotations/train2017" / f"{n}_labelTrainIds.png")
        for n in names
    ]
    _link_all(pairs, bases, 170, palette=False)
    return [f"voc_aug:{voc}", f"ade20k:{ade}", f"coco_stuff164k:{coco}"]


# ---------------------------------------------------------------- one rank's start-up (run in its own process)


def probe(specs: list[str], cache: str) -> None:
    """Build the pretraining dataset and take its first batch; print this rank's timings as one JSON line."""
    from torch.utils.data import DataLoader

    from training.data import build_pretrain_dataset
    from training.data.sampling import MultiDatasetSampler
    from training.engine import distributed

    launched = float(os.environ[LAUNCH_ENV])
    info = distributed.init_distributed("cpu")
    imported = time.time()
    dataset, _ = build_pretrain_dataset(
        specs, crop_size=CROP, mean=(0.5,) * 3, std=(0.25,) * 3, photometric_on="device", index_cache=cache
    )
    opened = time.time()
    sampler = MultiDatasetSampler(dataset, num_replicas=info.world_size, rank=info.rank, seed=0)
    next(iter(DataLoader(dataset, batch_size=BATCH, sampler=sampler, num_workers=0)))
    first = time.time()
    distributed.barrier()
    line = (
        json.dumps(
            {
                "rank": info.rank,
                "pid": os.getpid(),
                "samples": len(dataset),
                "imported": imported - launched,
                "opened": opened - launched,
                "first_batch": first - launched,
            }
        )
        + "\n"
    )
    sys.stdout.write(line)  # one write: the ranks share the pipe
    sys.stdout.flush()
    distributed.cleanup()


def launch(specs: list[str], cache: str, ranks: int, trace: Path | None = None) -> list[dict]:
    """Run ``probe`` on ``ranks`` processes (torchrun when more than one); optionally under strace."""
    command = [sys.executable, "-m", "benchmarks.data_index", "--probe", json.dumps(specs), "--cache", cache]
    if ranks > 1:
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={ranks}",
            "-m",
            "benchmarks.data_index",
            *command[3:],
        ]
    if trace is not None:
        command = ["strace", "-f", "-ff", "-qq", "-e", "trace=%stat,%file,openat", "-o", str(trace), *command]
    env = {**os.environ, LAUNCH_ENV: repr(time.time()), "OMP_NUM_THREADS": "1", "LOGLEVEL": "WARNING"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=Path(__file__).resolve().parents[1])
    if result.returncode:
        raise RuntimeError(f"start-up probe failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def dataset_calls(trace: Path, pids: list[int], roots: list[str]) -> dict[int, Counter]:
    """Per pid: the traced calls naming a path under one of ``roots``, counted by system call."""
    pattern = re.compile(r"^(\w+)\(")
    counts = {}
    for pid in pids:
        counter = Counter()
        with open(f"{trace}.{pid}") as lines:
            for line in lines:
                if any(root in line for root in roots):
                    match = pattern.match(line)
                    counter[match.group(1) if match else "?"] += 1
        counts[pid] = counter
    return counts


def startup(specs: list[str], work: Path, ranks: int, trace: bool = True) -> dict:
    """First start and restart, on 1 and ``ranks`` processes, and the dataset calls per rank of a first start."""
    roots = [spec.split(":", 1)[1] for spec in specs]
    report = {}
    for count in sorted({1, ranks}):
        cache = work / f"cache{count}"
        first = launch(specs, str(cache), count)
        restart = launch(specs, str(cache), count)
        shutil.rmtree(cache)
        calls_by_rank = None  # not counted
        if trace and shutil.which("strace"):
            traced = launch(specs, str(cache), count, trace=work / f"trace{count}")
            calls = dataset_calls(work / f"trace{count}", [row["pid"] for row in traced], roots)
            calls_by_rank = {row["rank"]: dict(calls[row["pid"]]) for row in traced}
            for path in work.glob(f"trace{count}.*"):
                path.unlink()
            shutil.rmtree(cache)
        report[count] = {
            "first_start": max(row["first_batch"] for row in first),
            "first_start_opened": max(row["opened"] - row["imported"] for row in first),
            "restart": max(row["first_batch"] for row in restart),
            "restart_opened": max(row["opened"] - row["imported"] for row in restart),
            "calls_by_rank": calls_by_rank,
            "samples": first[0]["samples"],
        }
    return report


# ---------------------------------------------------------------- worker memory over one pass


def _memory_kib(pid: int) -> dict[str, int]:
    """Rss and private (Private_Clean + Private_Dirty) memory of a process, KiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value = line.split(":", 1)
        fields[name] = int(value.split()[0])
    return {"rss": fields["Rss"], "private": fields["Private_Clean"] + fields["Private_Dirty"]}


def worker_memory(specs: list[str], cache: str, workers: int, storage: str) -> dict:
    """Each worker's memory after its first batch and at the last batch of one pass over every sample."""
    from torch.utils.data import DataLoader

    from training.data import build_pretrain_dataset
    from training.data.sampling import MultiDatasetSampler

    dataset, _ = build_pretrain_dataset(
        specs, crop_size=CROP, mean=(0.5,) * 3, std=(0.25,) * 3, photometric_on="device", index_cache=cache
    )
    if storage == "objects":  # what each reader held before the packed index: one SampleFiles per sample
        for reader in dataset.readers:
            reader.samples = list(reader.samples)
    sampler = MultiDatasetSampler(dataset, num_replicas=1, rank=0, seed=0)
    loader = DataLoader(dataset, batch_size=BATCH, sampler=sampler, num_workers=workers, persistent_workers=False)
    batches, started = len(loader), time.perf_counter()
    iterator = iter(loader)
    pids = [process.pid for process in iterator._workers]
    before = after = None
    for number, _ in enumerate(iterator):
        if number == workers:  # every worker has made its first batch
            before = {pid: _memory_kib(pid) for pid in pids}
        if number == batches - 2:
            after = {pid: _memory_kib(pid) for pid in pids}
    growth = {key: [after[pid][key] - before[pid][key] for pid in pids] for key in ("rss", "private")}
    return {
        "storage": storage,
        "samples": len(dataset),
        "seconds": time.perf_counter() - started,
        "rss_before_mib": max(before[pid]["rss"] for pid in pids) / 1024,
        "growth_rss_mib": [value / 1024 for value in growth["rss"]],
        "growth_private_mib": [value / 1024 for value in growth["private"]],
    }


def run(scale: float, ranks: int, workers: int, trace: bool = True, root: Path | None = None) -> dict:
    """Every measurement of this module on a freshly written index (removed afterwards); ``trace``: count each
    rank's dataset calls in one more start-up under strace (if installed)."""
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        specs = write_layouts(work / "data", scale)
        report = {"written_seconds": time.perf_counter() - started, "specs": [s.split(":")[0] for s in specs]}
        report["load_before"] = os.getloadavg()[0]
        report["startup"] = startup(specs, work, ranks, trace)
        cache = str(work / "memory-cache")
        report["memory"] = [worker_memory(specs, cache, workers, storage) for storage in ("arrays", "objects")]
        report["load_after"] = os.getloadavg()[0]
    return report


# ---------------------------------------------------------------- the report's section

TARGET_WORKER_GROWTH_MIB = 50


def section_lines(report: dict, ranks: int, workers: int, seconds: float) -> list[str]:
    """Markdown of ``run``'s report: start-up and calls per rank, then worker memory."""
    samples = report["startup"]["1"]["samples"] if "1" in report["startup"] else report["startup"][1]["samples"]
    lines = [
        "The three paper datasets in their real layouts "
        + ("at their real sizes" if samples == sum(PAPER_COUNTS.values()) else "scaled down from their real sizes")
        + f" ({samples:,} samples; real: "
        + ", ".join(f"{name} {count:,}" for name, count in PAPER_COUNTS.items())
        + "), every file a hard link to one tiny JPEG or label PNG of its format, on the local disk; "
        f"{seconds:.0f} s; load average {report['load_before']:.2f} before, {report['load_after']:.2f} after.",
        "",
        "| ranks | first start: launch to first batch (s) | of which listing + checks (s) | restart, cache "
        "filled (s) | of which reading the cache (s) | dataset calls, rank 0 | dataset calls, each other rank |",
        "|---|---|---|---|---|---|---|",
    ]
    for count, row in sorted(report["startup"].items(), key=lambda item: int(item[0])):
        calls = {int(rank): sum(by_call.values()) for rank, by_call in (row["calls_by_rank"] or {}).items()}
        others = [value for rank, value in calls.items() if rank != 0]
        lines.append(
            f"| {count} | {row['first_start']:.1f} | {row['first_start_opened']:.2f} | {row['restart']:.1f} | "
            f"{row['restart_opened']:.2f} | "
            + (f"{calls[0]:,}" if calls else "(not counted)")
            + " | "
            + (f"{min(others):,}" + (f"-{max(others):,}" if max(others) > min(others) else "") if others else "-")
            + " |"
        )
    lines += [
        "",
        "Launch to first batch includes starting Python and importing torch (about 2 s a process here; with 8 "
        "processes on 2 cores that is most of the 8-rank times); the listing column is the data layer's own part "
        "(the slowest rank). Dataset calls = the "
        "stat, open and other file calls naming a path under the datasets' folders (strace, first start; the "
        "first batch's own reads included). Rank 0 lists the splits and checks every file once; the other ranks "
        "receive its listing over the process group and open only the files of their first batch. The listing is "
        "cached (`data.index_cache`), so a restart, or a new run on unchanged folders, stats only the folders.",
        "",
        f"| samples stored as | pass over {samples:,} samples (s) | worker resident memory at its first batch (MB) "
        f"| growth over the pass, resident (MB) | growth, private (MB) | target: < {TARGET_WORKER_GROWTH_MIB} MB |",
        "|---|---|---|---|---|---|",
    ]
    for row in report["memory"]:
        rss, private = row["growth_rss_mib"], row["growth_private_mib"]
        worst = max(private)
        verdict = "met" if worst < TARGET_WORKER_GROWTH_MIB else "**missed**"
        lines.append(
            f"| {row['storage']} | {row['seconds']:.0f} | {row['rss_before_mib']:.0f} | "
            f"{min(rss):.1f}-{max(rss):.1f} | {min(private):.1f}-{max(private):.1f} | {verdict} ({worst:.1f} MB) |"
        )
    lines += [
        "",
        f"{workers} DataLoader workers (fork, batch {BATCH}, crop {CROP}, the multi-dataset sampler's shuffled "
        "order), memory read from /proc/<pid>/smaps_rollup after each worker's first batch and at the pass's last "
        "batch. Private memory is what a worker holds alone (pages it wrote, copy-on-write included). `arrays` is "
        "how the readers keep their samples (paths packed in a few numpy arrays); `objects` stores the same "
        "samples as a plain list of Python objects, one per sample: each worker's reference-count and "
        "garbage-collector writes copy the pages of that list.",
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the paper's 149,079 samples")
    parser.add_argument("--ranks", type=int, default=8)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--probe", help=argparse.SUPPRESS)  # JSON list of specs: one rank's start-up
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe:
        probe(json.loads(args.probe), args.cache)
        return 0
    report = json.dumps(run(args.scale, args.ranks, args.workers), indent=1)
    if args.out:
        args.out.write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
