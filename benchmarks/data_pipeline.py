"""Decode + augment throughput of the data layer against a bare PIL decode + crop of the same files.

Writes COCO-sized (640x480) synthetic images with ADE20K-layout label PNGs, then measures images/s of one
worker (one thread, like a DataLoader worker) at 512x512 crops for:
  bare      PIL decode of image + mask, a random 512x512 crop, to tensors (the floor any loader pays)
  geometry  our pipeline without photometric jitter: decode, label checks, rescale 0.5-2 (short side 512 x r),
            cat_max_ratio crop, flip, normalise, pad, global ids
  finetune  geometry + MMSeg-like colour jitter on one view
  pretrain  the pretraining worker's item with the default data.photometric_on=device: geometry, one uint8 crop
            padded to 512x512, global ids (the two MoCo-v2 views are made on the training device)
  pretrain_worker_jitter  the old worker-side path (photometric_on=worker): geometry + two PIL MoCo-v2 views
            (colour p=0.8, grayscale 0.2, blur 0.5), normalised
and, separately, the device-side cost of the two MoCo-v2 views per image (BatchPhotometric on this CPU, one
thread, batches of --device-batch), and how many workers feed one GPU at a given training step rate.
Every rate is the median over --repeats passes (the machine may be shared).

    python benchmarks/data_pipeline.py [--images 40] [--repeats 5] [--gpu-images-per-s 7] [--out report.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from training.data import build_pretrain_dataset, build_segmentation_dataset
from training.data.synthetic import DATASETS, render
from training.data.device_augment import BatchPhotometric
from training.data.transforms import NO_PHOTOMETRIC, PhotometricConfig

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CROP = 512
MMSEG_LIKE = PhotometricConfig(brightness=32 / 255, contrast=0.5, saturation=0.5, hue=18 / 360,
                               color_jitter_p=0.5, grayscale_p=0.0, blur_p=0.0)


def write_files(root: Path, count: int) -> Path:
    """ADE20K layout with 640x480 JPEGs (the COCO size) rendered by the synthetic generator."""
    spec = dataclasses.replace(DATASETS["ade20k"], size=((480, 480), (640, 640)))
    ade = root / "ADEChallengeData2016"
    for split in ("training", "validation"):
        (ade / "images" / split).mkdir(parents=True)
        (ade / "annotations" / split).mkdir(parents=True)
    for i in range(count):
        image, label = render(spec, np.random.default_rng(i), 0)
        Image.fromarray(image).save(ade / "images" / "training" / f"ADE_train_{i:08d}.jpg", quality=90)
        Image.fromarray(label).save(ade / "annotations" / "training" / f"ADE_train_{i:08d}.png")
    return ade


def bare_item(image_path: Path, mask_path: Path, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    image = np.array(Image.open(image_path).convert("RGB"))
    mask = np.array(Image.open(mask_path))
    top = rng.integers(0, max(1, image.shape[0] - CROP + 1))
    left = rng.integers(0, max(1, image.shape[1] - CROP + 1))
    crop = image[top:top + CROP, left:left + CROP]
    return torch.from_numpy(crop).permute(2, 0, 1), torch.from_numpy(mask[top:top + CROP, left:left + CROP])


def rate(step, count: int, repeats: int) -> float:
    """Median over ``repeats`` passes of images per second of ``step(i)`` over ``count`` items."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(count):
            step(i)
        times.append(time.perf_counter() - start)
    return count / float(np.median(times))


def device_views_rate(batch: int, repeats: int) -> float:
    """Images per second of BatchPhotometric making two MoCo-v2 views of ``batch`` 512x512 uint8 crops here."""
    augment = BatchPhotometric(PhotometricConfig(), MEAN, STD)
    images = torch.randint(0, 256, (batch, 3, CROP, CROP), dtype=torch.uint8)
    sizes = torch.full((batch, 2), CROP, dtype=torch.int64)
    augment(images, sizes)  # warm-up
    return rate(lambda i: augment(images, sizes), 1, repeats) * batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device-batch", type=int, default=8, help="batch size for the device-side views")
    parser.add_argument("--gpu-images-per-s", type=float, default=7.0,
                        help="training step rate to feed, images/s per GPU (default: MDP R50 OS8 at 512x512, "
                             "~0.8 TFLOP per image at ~5.5 TFLOP/s fp32 on a V100)")
    parser.add_argument("--out", type=Path, help="also write the report as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(1)  # what a DataLoader worker gets
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory() as tmp:
        ade = write_files(Path(tmp), args.images)
        spec = f"ade20k:{ade}:training"
        common = dict(crop_size=CROP, mean=MEAN, std=STD, base_size=512)
        geometry = build_segmentation_dataset(spec, train=True, photometric=NO_PHOTOMETRIC, **common)
        finetune = build_segmentation_dataset(spec, train=True, photometric=MMSEG_LIKE, **common)
        pretrain, _ = build_pretrain_dataset([spec], photometric_on="device", **common)
        pretrain_worker, _ = build_pretrain_dataset([spec], two_views=True, photometric_on="worker", **common)
        samples = geometry.reader.samples
        rng = np.random.default_rng(0)
        results = {
            "bare": rate(lambda i: bare_item(samples[i].image, samples[i].mask, rng), len(samples), args.repeats),
            "geometry": rate(lambda i: geometry[i], len(samples), args.repeats),
            "finetune": rate(lambda i: finetune[i], len(samples), args.repeats),
            "pretrain": rate(lambda i: pretrain[i], len(samples), args.repeats),
            "pretrain_worker_jitter": rate(lambda i: pretrain_worker[i], len(samples), args.repeats),
        }
    device_rate = device_views_rate(args.device_batch, args.repeats)
    report = {
        "images": args.images, "image_size_wh": [640, 480], "crop": CROP, "threads": 1,
        "images_per_s": {k: round(v, 1) for k, v in results.items()},
        "cost_vs_bare": {k: round(results["bare"] / v, 2) for k, v in results.items()},
        "gpu_images_per_s": args.gpu_images_per_s,
        "workers_per_gpu": {k: int(np.ceil(args.gpu_images_per_s / v)) for k, v in results.items()},
        "device_views": {"batch": args.device_batch, "images_per_s_cpu_1_thread": round(device_rate, 1),
                         "ms_per_image_cpu_1_thread": round(1000 / device_rate, 2)},
    }
    print("| pipeline | images/s per worker | cost vs bare | workers per GPU at "
          f"{args.gpu_images_per_s:g} img/s |\n|---|---|---|---|")
    for key in results:
        print(f"| {key} | {report['images_per_s'][key]} | {report['cost_vs_bare'][key]}x | "
              f"{report['workers_per_gpu'][key]} |")
    print(f"\ndevice-side MoCo-v2 views (two per image, batch {args.device_batch}, this CPU, 1 thread): "
          f"{1000 / device_rate:.2f} ms per image ({device_rate:.1f} images/s)")
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
