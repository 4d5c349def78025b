"""`python -m training.finetune`: fine-tune any backbone with a DeepLabV3 (ASPP) or FCN head, MMSegmentation-style.

    python -m training.finetune                                   # synthetic demo, a few CPU minutes
    python -m training.finetune --recipe finetune_voc_aug --init runs/mdp/export \\
        --set data.train=voc_aug:/data/VOCdevkit/VOC2012 --set data.val=voc:/data/VOCdevkit/VOC2012:val
    torchrun --nproc-per-node 4 -m training.finetune --recipe finetune_cityscapes --init resnet50.a1_in1k

``--init``: ``scratch``, a timm name (``resnet50.a1_in1k``, ``hf-hub:ORG/NAME``, ``local-dir:/path``), an MDP
export folder, or a training checkpoint; the backbone is always loaded strictly. The run shares the pretraining
engine (``training.engine``): torchrun DDP, AMP, atomic ``last.pth`` with auto-resume from the run folder,
SIGTERM/SIGUSR1/Ctrl-C checkpointing, a non-finite-loss stop, metrics.jsonl + TensorBoard + tqdm. Validation runs every
``train.eval_every`` iterations and at the end; the final scores go to ``<run>/eval/results.{json,md}``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mdp_hub.errors import command
from mdp_hub.help_format import HelpFormatter, plain
from training.config import list_recipes
from training.engine import distributed
from training.seg.config import DEFAULT_RECIPE, load_finetune_config
from training.seg.finetuning import finetune


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m training.finetune", description=plain(__doc__), formatter_class=HelpFormatter
    )
    parser.add_argument(
        "--recipe",
        default=DEFAULT_RECIPE,
        help=f"recipe name under training/recipes ({', '.join(list_recipes(finetune=True))}) or a YAML file",
    )
    parser.add_argument("--init", default=None, help="backbone initialisation (overrides the recipe's init)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set optim.lr=0.02 (repeatable)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="run folder (default runs/<recipe name>); an existing last.pth there is resumed",
    )
    return parser.parse_args(argv)


@command("python -m training.finetune")
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = load_finetune_config(args.recipe, args.overrides)
    if args.init is not None:
        config.init = args.init
    run_dir = args.output or Path("runs") / config.name
    metrics = finetune(config, run_dir)
    if distributed.get_rank() == 0:
        print(f"final mIoU {metrics.miou:.2f}  mAcc {metrics.macc:.2f}  aAcc {metrics.aacc:.2f}  -> {run_dir / 'eval'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
