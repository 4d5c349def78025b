"""Zero-fine-tuning mIoU of the prototype segmenter on the synthetic benchmark's pretraining validation splits.

    python -m training.experiments_prototypes --model runs/demo/export [--output FILE.md]

For every validation split of a pretraining dataset (synthetic VOC aug, ADE20K, COCO-Stuff 164k) the MDP model
segments each whole image at its native size by nearest class prototype, with no trained decoder, and one
dataset-level confusion matrix gives MMSeg-style mIoU (``training.seg.metrics``) in two settings:

* **restricted**: the dataset is known; prediction over its own classes only (``restrict_to``).
* **open**: prediction over the whole concatenated label space; a pixel given another dataset's class is wrong.

A majority-class predictor (the most frequent ground-truth class everywhere) is the reference floor. For the
miner (``training.mine``), the open-setting predictions are also scored per confidence threshold: the share of
labelled pixels kept and the accuracy of the kept pseudo-labels.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mdp_hub.errors import command
from mdp_hub.help_format import HelpFormatter, plain
from mdp_hub.segmenter import PrototypeSegmenter
from training.data import ensure_synthetic
from training.studies.prototypes import results_markdown, zero_finetune_scores


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m training.experiments_prototypes",
        description=plain(__doc__.split("\n\n")[0]),
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--model", required=True, help="export folder with prototypes or MDP pretraining checkpoint")
    parser.add_argument("--synthetic-root", default=None, help="synthetic benchmark folder (default: the shared cache)")
    parser.add_argument("--max-images", type=int, default=None, help="images per split (default: all)")
    parser.add_argument(
        "--output",
        type=Path,
        default=Path("prototype_results.md"),
        help="markdown report (a .json beside it); docs/RESULTS.md holds the recorded run",
    )
    parser.add_argument("--note", action="append", default=[], help="extra line for the report (what was trained)")
    return parser.parse_args(argv)


@command("python -m training.experiments_prototypes")
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    segmenter = PrototypeSegmenter.from_pretrained(args.model)
    specs = ensure_synthetic(args.synthetic_root)["pretrain_val"]
    results = [zero_finetune_scores(segmenter, spec, args.max_images) for spec in specs]
    for r in results:
        print(
            f"{r['dataset']}: mIoU restricted {r['restricted']['mIoU']:.2f}, open {r['open']['mIoU']:.2f}, "
            f"majority-class {r['majority_class_mIoU']:.2f} ({r['images']} images)"
        )
    info = {
        "model": args.model,
        "classes in the label space": len(segmenter.class_names),
        "classes with a prototype": int(segmenter.available.sum()),
        "temperature": segmenter.tau,
        **{f"note {i + 1}": note for i, note in enumerate(args.note)},
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(results_markdown(results, info))
    args.output.with_suffix(".json").write_text(json.dumps({"info": info, "results": results}, indent=1) + "\n")
    print(f"wrote {args.output} and {args.output.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
