"""`python -m benchmarks`: the smoke preset writes one report with every section, and the memory table's sizes."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.__main__ import main
from benchmarks.report import PRESETS
from benchmarks.sections.memory import PIXELS_PER_CLASS, memory_scaling_rows

REPO = Path(__file__).resolve().parents[1]
SECTIONS = (
    "## 1. Training step",
    "### Targets",
    "### MDP parts switched off, isolated",
    "### Where the time of an MDP step goes",
    "## 2. Memory",
    "### Peak memory per training-step variant",
    "### Memory the methods keep, at the paper's label space",
    "### Prototype store vs pixel queue as classes and bank size grow",
    "## 3. Data pipeline",
    "## 4. Hub loading",
    "## 5. On paper: FLOPs per training image and GPU hours of the paper's recipe",
    "## 6. The data layer at the paper's size",
    "## 7. torch.compile of the MDP step",
    "## Learning-dynamics instruments",
)


@pytest.mark.slow
def test_smoke_run_writes_every_section(tmp_path):
    out = tmp_path / "docs" / "BENCHMARKS.md"
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--preset", "smoke", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr
    report = out.read_text()
    positions = [report.find(section) for section in SECTIONS]
    assert -1 not in positions, [s for s, p in zip(SECTIONS, positions) if p == -1]
    assert positions == sorted(positions), "sections out of order"
    for variant in PRESETS["smoke"].variants:
        assert report.count(f"| {variant} |") >= 2, f"{variant}: expected a timing row and a peak-memory row"
    for pipeline in ("bare", "pretrain", "finetune", "pretrain_worker_jitter", "finetune_worker_jitter"):
        assert f"| {pipeline} |" in report
    assert "| mdp_resnet50 |" in report and "| 8x H100 SXM" in report
    assert re.search(r"\): \d+ ms against \d+ ms measured as a whole step", report)  # MoCo v2 from isolated work
    assert report.count("Machine:") == 7 and report.count("load average") >= 7
    assert re.search(r"\| arrays \| \d+ \|", report) and "| 1 compiled" not in report
    for instrument in ("gradient norms", "probe", "prototype statistics"):
        assert f"| {instrument} |" in report
    assert not re.search(r"\b(nan|inf)\b", report), "non-finite number in the report"
    plot = out.with_name("BENCHMARKS_memory.png")
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # --only refreshes one section between its markers and leaves the rest of the page as it was
    begin, end = "<!-- data_pipeline:begin -->", "<!-- data_pipeline:end -->"
    before, after = report.split(begin)[0], report.split(end)[1]
    out.write_text(report.replace("| bare |", "| stale |"))
    assert main(["--preset", "smoke", "--out", str(out), "--only", "data_pipeline"]) == 0
    refreshed = out.read_text()
    assert refreshed.startswith(before) and refreshed.endswith(after) and refreshed.count(begin) == 1
    assert "| bare |" in refreshed and "| stale |" not in refreshed
    assert "](BENCHMARKS_memory.png)" in report


def test_isolated_moco_difference_times_both_heads_and_updates_the_queue():
    import torch

    from benchmarks.train_step import LowerBound, isolated_moco_difference, paper_label_space, synthetic_batch
    from training.mdp import build_method

    torch.manual_seed(0)
    label_space = paper_label_space()
    lower = LowerBound("resnet18", 8, 16)
    moco = build_method(
        "moco_v2", label_space=label_space, arch="resnet18", output_stride=8, embed_dim=16, queue_size=64
    )
    batch = synthetic_batch(label_space, 2, 32, torch.device("cpu"))
    before = moco.queue.keys.clone()
    times = isolated_moco_difference(lower, moco, batch, repeats=3)
    assert len(times["dense"]) == len(times["pooled"]) == 3 and min(times["dense"] + times["pooled"]) > 0
    assert int(moco.queue.pointer) == 6  # three updates of two keys each: MoCo's enqueue is part of its work
    assert not torch.equal(moco.queue.keys[:6], before[:6]) and torch.equal(moco.queue.keys[6:], before[6:])


def test_memory_scaling_counts_the_real_buffers():
    dim = 16
    for row in memory_scaling_rows(dim):
        classes = row["classes"]
        # prototypes [C, D] fp32 + counts [C] int64 + anchor_share [C] fp32
        assert row["prototypes"] == classes * (dim * 4 + 8 + 4)
        for per_class in PIXELS_PER_CLASS:
            # embeddings [N + 1, D] fp32 + labels [N + 1] int64 + pointer [1] int64, N = C x pixels per class
            entries = classes * per_class + 1
            assert row[f"pixel queue {per_class}"] == entries * (dim * 4 + 8) + 8
        assert row["moco queue"] == 65537 * dim * 4 + 8


def test_unknown_preset_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--preset", "huge"])
    assert exit_info.value.code == 2 and "huge" in capsys.readouterr().err
