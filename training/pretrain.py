"""MDP pretraining: ``python -m training.pretrain [--recipe NAME|FILE] [--set key=value ...] [--output DIR]``.

No arguments = the synthetic demo (resnet18, small crops, a few minutes on 2 CPU cores), ending with an exported
timm-loadable folder. Multi-GPU / multi-node: start the same command under ``torchrun`` (docs/TRAINING.md).

The run folder holds ``config.yaml`` (resolved), ``label_space.json``, ``last.pth`` (auto-resumed),
``checkpoint_<step>.pth`` snapshots, ``metrics.jsonl``, ``tensorboard/``, ``loss_curves.png``,
``prototype_similarity.png`` and ``export/`` (the Hub-ready backbone).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mdp_hub.errors import command
from mdp_hub.help_format import HelpFormatter
from training import config as config_lib
from training.pretraining.model import checked_method_options
from training.pretraining.run import default_output, train


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m training.pretrain",
        formatter_class=HelpFormatter,
        description="MDP pretraining. No arguments: the synthetic CPU demo, ending with a timm-loadable export.",
    )
    parser.add_argument(
        "--recipe",
        default="demo",
        help="recipe name or YAML file (default: demo); the names are the files in "
        "training/recipes/, e.g. voc_ade20k_coco_200ep (docs/TRAINING.md lists them)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set optim.lr=0.01 --set method.options.tau=0.1",
    )
    parser.add_argument("--output", type=Path, default=None, help="run folder (default: runs/<recipe name>)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return parser.parse_args(argv)


@command("python -m training.pretrain")
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = config_lib.load_config(args.recipe, args.overrides)
    checked_method_options(cfg)
    if args.print_config:
        import yaml

        print(yaml.safe_dump(config_lib.to_dict(cfg), sort_keys=False))
        return 0
    return train(cfg, args.output or default_output(cfg))


if __name__ == "__main__":
    sys.exit(main())
