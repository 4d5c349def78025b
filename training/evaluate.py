"""`python -m training.evaluate`: MMSegmentation-style evaluation of a fine-tuned segmentation checkpoint.

    python -m training.evaluate --checkpoint runs/finetune_synthetic/last.pth --data cityscapes:/data/cityscapes \\
        [--mode whole|slide] [--crop 512 1024 --stride 341 682] [--flip] [--output DIR]

Single-scale inference (optionally with a horizontal flip), the image first rescaled like MMSeg's test ``Resize``
(``eval.test_scale``, e.g. short side 512), the scores resized back to the label's resolution, then one
dataset-level confusion matrix: per-class IoU / Acc, mIoU (nan-mean over classes that occur in the ground truth or
the predictions), mAcc, aAcc. Writes ``results.json``, ``results.md`` and prediction overlays (PNG). Runs under
``torchrun`` too: each process scores a disjoint shard and the matrices are summed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mdp_hub.errors import command
from mdp_hub.help_format import HelpFormatter, plain
from training.config import ConfigError
from training.data.datasets import build_segmentation_dataset
from training.engine import distributed
from training.seg.config import resolve_data_spec
from training.seg.evaluation import evaluate_dataset, load_finetuned_model, write_results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m training.evaluate", description=plain(__doc__.split("\n")[0]), formatter_class=HelpFormatter
    )
    parser.add_argument("--checkpoint", required=True, type=Path, help="fine-tuning checkpoint (last.pth)")
    parser.add_argument(
        "--data", default=None, help="evaluation dataset spec NAME:PATH[:split]; default: the checkpoint's data.val"
    )
    parser.add_argument("--mode", choices=["whole", "slide"], default=None, help="default: the checkpoint's")
    parser.add_argument("--crop", type=int, nargs=2, default=None, metavar=("H", "W"), help="slide window")
    parser.add_argument("--stride", type=int, nargs=2, default=None, metavar=("H", "W"), help="slide stride")
    parser.add_argument("--flip", action="store_true", help="add horizontally flipped inference")
    parser.add_argument(
        "--test-scale",
        type=int,
        nargs="*",
        default=None,
        metavar="N",
        help="keep-ratio resize bound LONG SHORT before inference (none = native size)",
    )
    parser.add_argument("--overlays", type=int, default=None, help="number of prediction overlays to write")
    parser.add_argument("--output", type=Path, default=None, help="default: <checkpoint folder>/eval")
    parser.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none", help="autocast precision")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: cuda if present")
    parser.add_argument("--num-workers", type=int, default=2, help="data loader workers (default 2)")
    return parser.parse_args(argv)


@command("python -m training.evaluate")
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    dist_info = distributed.init_distributed(args.device)
    try:
        model, config, checkpoint = load_finetuned_model(args.checkpoint)
        eval_config = config.eval
        for name, value in (
            ("mode", args.mode),
            ("crop_size", args.crop),
            ("stride", args.stride),
            ("test_scale", args.test_scale),
            ("overlays", args.overlays),
        ):
            if value is not None:
                setattr(eval_config, name, list(value) if isinstance(value, (list, tuple)) else value)
        eval_config.flip = eval_config.flip or args.flip
        spec = resolve_data_spec(args.data or config.data.val, train=False)
        dataset = build_segmentation_dataset(spec, train=False, mean=config.data.mean, std=config.data.std)
        trained_names = checkpoint["label_space"]["datasets"][0]["class_names"]
        if list(dataset.class_names) != list(trained_names):
            raise ConfigError(
                f"--data {spec}: its {dataset.num_classes} classes differ from the "
                f"{len(trained_names)} classes the checkpoint was trained on"
            )
        output = args.output or args.checkpoint.parent / "eval"
        metrics = evaluate_dataset(
            model.to(dist_info.device),
            dataset,
            eval_config,
            device=dist_info.device,
            amp=args.amp,
            num_workers=args.num_workers,
            overlay_dir=output / "overlays",
            mean=config.data.mean,
            std=config.data.std,
        )
        if dist_info.is_main:
            info = {
                "checkpoint": str(args.checkpoint),
                "data": str(spec),
                "dataset": dataset.reader.dataset_name,
                "split": dataset.reader.split,
                "step": checkpoint["step"],
                "arch": checkpoint["arch"],
                "head": config.model.head,
                "init": config.init,
                "mode": eval_config.mode,
                "flip": eval_config.flip,
                "test_scale": eval_config.test_scale,
            }
            json_path, md_path = write_results(output, metrics, info)
            print(
                f"mIoU {metrics.miou:.2f}  mAcc {metrics.macc:.2f}  aAcc {metrics.aacc:.2f}  -> {json_path}, {md_path}"
            )
    finally:
        distributed.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
