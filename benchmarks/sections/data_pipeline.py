"""Section 3: decode + crop per data worker for every pipeline against the bare loop (benchmarks/data_pipeline.py
measures, in a subprocess with one thread) and the workers a GPU needs."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.report import Settings, load_average, machine_line, verdict

TARGET_PIPELINE_VS_BARE = 1.3


def run_data_pipeline_script(settings: Settings) -> tuple[dict, str]:
    """Run benchmarks/data_pipeline.py in a subprocess (one torch thread, as a DataLoader worker has);
    returns its JSON report and the timing/load sentence for the section."""
    script = Path(__file__).resolve().parents[1] / "data_pipeline.py"
    load_before, started = load_average(), time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "data_pipeline.json"
        command = [
            sys.executable,
            str(script),
            "--images",
            str(settings.data_images),
            "--repeats",
            str(settings.data_repeats),
            "--out",
            str(out),
        ]
        completed = subprocess.run(command, capture_output=True, text=True)
        if completed.returncode != 0:
            raise RuntimeError(f"{script} failed (exit {completed.returncode}):\n{completed.stderr}")
        report = json.loads(out.read_text())
    elapsed, load_after = time.perf_counter() - started, load_average()
    return report, f"{elapsed:.0f} s; load average {load_before:.2f} before, {load_after:.2f} after"


def data_pipeline_table(report: dict, rates: dict[str, float]) -> list[str]:
    """One row per pipeline: rate per worker, cost against the bare loop, workers needed per GPU rate."""
    lines = [
        "| pipeline | images/s per worker | cost vs bare decode+crop | target <= "
        f"{TARGET_PIPELINE_VS_BARE}x | MB sent per item | "
        + " | ".join(f"workers for {name}" for name in rates)
        + " |",
        "|---|---|---|---|---|" + "---|" * len(rates),
    ]
    for name, value in report["images_per_s"].items():
        cost, (low, high) = report["cost_vs_bare"][name], report["cost_vs_bare_range"][name]
        met = "(reference)" if name == "bare" else verdict(cost, TARGET_PIPELINE_VS_BARE)
        sent = report["bytes_per_item"].get(name)
        sent_text = "-" if sent is None else f"{sent / 1e6:.2f}"
        workers = " | ".join(str(math.ceil(rate / value)) for rate in rates.values())
        lines.append(f"| {name} | {value:.1f} | {cost:.2f}x [{low:.2f}-{high:.2f}] | {met} | {sent_text} | {workers} |")
    return lines


def data_pipeline_section(settings: Settings, h100_images_per_s: dict[float, float]) -> list[str]:
    report, timing = run_data_pipeline_script(settings)
    rates = {f"1x H100 at {u:.0%} ({rate:.0f} img/s)": rate for u, rate in h100_images_per_s.items()}
    rates[f"script default ({report['gpu_images_per_s']:g} img/s, V100 fp32)"] = report["gpu_images_per_s"]
    ms = {name: 1000 / value for name, value in report["images_per_s"].items()}
    device = report["device_views"]["ms_per_image_cpu_1_thread"]
    return [
        "<!-- data_pipeline:begin -->",
        "## 3. Data pipeline",
        "",
        f"Machine: {machine_line(torch.device('cpu'))}; the benchmark runs in a subprocess with 1 torch thread, "
        f"as a DataLoader worker does; files decoded with {report['decoder']}; `python -m benchmarks --only "
        "data_pipeline` refreshes this section alone.",
        f"Settings: {report['images']} synthetic {report['image_size_wh'][0]}x{report['image_size_wh'][1]} JPEGs "
        f"with ADE20K-layout label PNGs, {report['crop']}x{report['crop']} crops, {report['repeats']} interleaved "
        f"passes (bare, then each pipeline, repeated); rates are medians over passes, costs the median of the "
        f"per-pass ratios to bare (range over passes in brackets); {timing}.",
        "",
        *data_pipeline_table(report, rates),
        "",
        f"The default on a GPU is `data.photometric_on: device` (pretrain, finetune rows): a worker's item costs "
        f"{ms['pretrain']:.1f} ms against {ms['bare']:.1f} ms for the bare decode + crop, and sends one uint8 "
        "image and a uint8 local-id mask. Draws that enlarge the image (here "
        f"{report['share_resized_on_device']:.0%} of the items) send the unresampled source region: the training "
        "device resizes and flips it, makes the views and looks the ids up, batched: on this CPU with one thread "
        f"{device['pretrain_moco_v2_two_views']:.0f} ms per image for the resize and two MoCo-v2 views "
        f"and {device['finetune_mmseg_one_view']:.0f} ms for the resize and one MMSeg view (batch "
        f"{report['device_views']['batch']}, half of it regions to enlarge; not measured on a GPU, where they are a "
        "few elementwise kernels and one roi_align per batch). On a CPU the default is "
        "`worker` (the *_worker_jitter rows): the views are made with PIL in the worker, and the item costs "
        f"{ms['pretrain_worker_jitter']:.1f} ms (pretraining) or {ms['finetune_worker_jitter']:.1f} ms "
        "(fine-tuning)."
        + (
            f" The hf_pretrain row reads the same images as a Hub dataset (one Parquet shard, `hf:` spec with "
            f"ADE20K's reduce_labels), map-style through the datasets library: {ms['hf_pretrain']:.1f} ms per item."
            if "hf_pretrain" in ms
            else " (The hf_pretrain row needs the datasets library, not installed here.)"
        ),
        "",
        "bare = PIL decode of image + mask, a random crop, to tensors. Ours = TorchCodec decode (PIL for other "
        "formats), label check of every mask value, 0.5-2 rescale of the crop region only when it shrinks "
        "(channels-last uint8 resize, antialiased), cat_max_ratio crop with the label map applied to the crop's "
        "pixels only, flip, zero padding. The shrinking rescales and the label checks are real work the bare loop "
        "does not do; the faster decoder pays for most of it. Workers per GPU = step rate / images/s per worker, "
        "rounded up; at H100 rates the loader, not the GPU, sets the pace unless decoding moves to the GPU "
        "(TorchCodec's nvJPEG, DALI) or the host has that many cores per GPU.",
        "<!-- data_pipeline:end -->",
    ]
