"""Pseudo-label a folder of unlabeled images with the prototypes of an MDP model (the authors' COCO-without-labels
experiment, offline): ``python -m training.mine --model SRC --images DIR --out DIR [--threshold 0.5]``.

Every pixel takes its nearest class prototype; pixels whose confidence (softmax probability at the pretraining
temperature, ``PrototypeSegmenter.predict``) is below ``--threshold`` become 255 (ignore). The output is the
generic folder format of the data layer (``folder:OUT``)::

    OUT/classes.txt           one class per line: the global names "<dataset>/<class>", or with --dataset the
                              classes of that dataset
    OUT/images/<rel path>     the input images, copied byte for byte
    OUT/masks/<rel path>.png  local ids of classes.txt, 255 = below the threshold or no prototype
    OUT/unify_map.json        "<OUT name>/<class>" -> the pretraining class it came from
    OUT/pseudo_labels.json    model, threshold, pixel counts

Feeding it to pretraining: add ``folder:OUT`` to ``data.datasets``; with ``data.unify_map=OUT/unify_map.json``
the pseudo-labels train the existing prototypes of their classes instead of new ones. The folder format allows
at most 255 classes, so a label space larger than that (the paper's 342) needs ``--dataset``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mdp_hub.errors import command
from mdp_hub.help_format import HelpFormatter, plain
from training.mdp.mining import mine


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m training.mine", description=plain(__doc__.split("\n\n")[0]), formatter_class=HelpFormatter
    )
    parser.add_argument(
        "--model", required=True, help="export folder with prototypes, MDP pretraining checkpoint, or Hub repo ORG/NAME"
    )
    parser.add_argument("--images", required=True, type=Path, help="folder of unlabeled images (searched recursively)")
    parser.add_argument("--out", required=True, type=Path, help="new folder for the pseudo-labelled dataset")
    parser.add_argument(
        "--threshold",
        type=float,
        default=0.5,
        help="minimum confidence of a kept pixel (default 0.5, the method's pseudo_label_threshold)",
    )
    parser.add_argument("--dataset", help="label with one pretraining dataset's classes only, e.g. voc_aug")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    return parser.parse_args(argv)


@command("python -m training.mine", expected=(ValueError,))
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    summary = mine(
        args.model, args.images, args.out, threshold=args.threshold, dataset=args.dataset, device=args.device
    )
    print(
        f"kept {summary['kept_pixels']} of {summary['pixels']} pixels ({100 * summary['kept_fraction']:.1f}%) "
        f"at confidence >= {args.threshold} in {summary['num_images']} images -> {summary['dataset_spec']}"
    )
    top = sorted(summary["class_pixels"].items(), key=lambda item: -item[1])[:10]
    if top:
        print("most kept classes: " + ", ".join(f"{name} {count}" for name, count in top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
