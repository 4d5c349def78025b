"""``mdp-hub`` / ``python -m mdp_hub``: export, push, list, convert, prefetch, install-cache, segment."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import catalog
from .cache import install_export, prefetch
from .convert import FORMATS, convert
from .errors import CheckpointError, WeightsNotAvailableError
from .export import export
from .listing import format_table, list_weights
from .overlays import segment_files
from .segmenter import PrototypeSegmenter
from .publish import plan_upload, push


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mdp-hub", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("export", help="training checkpoint or state dict -> Hub-ready folder")
    p.add_argument("src", type=Path, help="training checkpoint (.pth) or state dict (.safetensors / .pth)")
    p.add_argument("out_dir", type=Path)
    p.add_argument("--tag", help=f"weight tag, e.g. {catalog.DEFAULT_TAG} (known: {', '.join(catalog.RECIPES_BY_TAG)})")
    p.add_argument("--metrics", help='downstream results as JSON or a JSON file: {"dataset": "ADE20K", "mIoU": 42.1}')
    p.add_argument("--arch", help="timm architecture of a plain state dict (default: inferred)")
    p.add_argument("--org", help=f"Hub organisation for the card (default: ${catalog.ORG_ENV_VAR} or {catalog.DEFAULT_ORG})")

    p = commands.add_parser("push", help="upload an export folder to the Hugging Face Hub")
    p.add_argument("out_dir", type=Path)
    p.add_argument("--repo-id", required=True, help="ORG/NAME, e.g. mdp-hub/mdp_resnet50.voc_ade20k_coco_200ep")
    p.add_argument("--revision", help="branch to upload to (created if needed; default main)")
    p.add_argument("--tag", help="Git tag to put on the uploaded commit, e.g. v1.0")
    p.add_argument("--private", action="store_true")
    p.add_argument("--dry-run", action="store_true", help="only list what would be uploaded")

    p = commands.add_parser("list", help="registered weights, recipes, known mIoU, cache state")
    p.add_argument("--cache-dir", type=Path)

    p = commands.add_parser("convert", help="write the backbone for torchvision, MMSegmentation or detectron2")
    p.add_argument("src", type=Path, help="export folder, weights file or training checkpoint")
    p.add_argument("--to", required=True, choices=FORMATS)
    p.add_argument("out", type=Path, help="output file (.pth, or .pkl for detectron2)")

    p = commands.add_parser("prefetch", help="download weights into the Hub cache for offline use")
    p.add_argument("name", help="mdp_resnet50[.tag] or ORG/NAME")
    p.add_argument("--cache-dir", type=Path)
    p.add_argument("--revision")

    p = commands.add_parser("segment", help="colour overlays of the prototype segmenter (no fine-tuning) with a legend")
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    p.add_argument("--model", required=True, help="export folder with prototypes, MDP pretraining checkpoint, or ORG/NAME")
    p.add_argument("--out", required=True, type=Path, help="folder for the overlays (<image stem>.png)")
    p.add_argument("--dataset", help="restrict predictions to one pretraining dataset's classes, e.g. voc")

    p = commands.add_parser("install-cache", help="copy an export folder into the Hub cache (air-gapped machines)")
    p.add_argument("folder", type=Path)
    p.add_argument("--repo-id", required=True)
    p.add_argument("--cache-dir", type=Path)
    return parser


def _metrics(value: str | None):
    if value is None:
        return None
    path = Path(value)
    text = path.read_text() if path.is_file() else value
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"--metrics {value!r}: not valid JSON or a JSON file ({err})") from None


def run(args: argparse.Namespace) -> None:
    if args.command == "export":
        out = export(args.src, args.out_dir, tag=args.tag, metrics=_metrics(args.metrics), arch=args.arch, org=args.org)
        print(f"exported {args.src} -> {out} ({', '.join(sorted(p.name for p in out.iterdir()))})")
    elif args.command == "push":
        plan = plan_upload(args.out_dir, args.repo_id, revision=args.revision, tag=args.tag, private=args.private)
        print(("would upload to " if args.dry_run else "uploading to ") + plan.describe())
        if not args.dry_run:
            print(push(plan))
    elif args.command == "list":
        print(format_table(list_weights(cache_dir=args.cache_dir)))
    elif args.command == "convert":
        print(f"wrote {convert(args.src, args.to, args.out)}")
    elif args.command == "prefetch":
        print(prefetch(args.name, cache_dir=args.cache_dir, revision=args.revision))
    elif args.command == "segment":
        segmenter = PrototypeSegmenter.from_pretrained(args.model)
        for path, classes in segment_files(segmenter, args.images, args.out, restrict_to=args.dataset):
            print(f"wrote {path}: " + ", ".join(f"{name} {100 * share:.1f}%" for _, name, share in classes[:5]))
    elif args.command == "install-cache":
        print(install_export(args.folder, args.repo_id, cache_dir=args.cache_dir))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except (CheckpointError, WeightsNotAvailableError, FileNotFoundError, FileExistsError, ValueError, KeyError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"mdp-hub {args.command}: error: {message}", file=sys.stderr)
        return 2
    return 0
