"""The ``mdp-hub`` command (also ``python -m mdp_hub``): export, push, list, convert, prefetch, segment, install-cache,
verify, demo."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from . import catalog
from .cache import install_export, prefetch
from .convert import FORMATS, convert
from .demo import launch, open_segmenter
from .errors import command
from .export import export
from .help_format import HelpFormatter
from .integrity import CONFIG_FILENAME, verify_export_files
from .listing import format_table, list_weights
from .overlays import REPORT_NAME, downscale_note, present_classes, segment_files
from .publish import plan_upload, push

DESCRIPTION = """\
MDP backbones for timm and the Hugging Face Hub: export a training checkpoint,
publish it, list the weight tags, convert weights for other libraries, fill the
local cache, segment images with the prototypes.
Run `mdp-hub COMMAND --help` for the arguments of one command."""

# Argument order follows huggingface_hub (`hf upload REPO_ID LOCAL_PATH`): the repository first, then the folder.
COMMANDS = {
    "export": "training checkpoint or state dict -> Hub-ready folder (weights, config.json, model card)",
    "push": "upload an export folder to a Hugging Face Hub repository",
    "list": "the catalogue of weight tags: recipe, the paper's mIoU, published, cached",
    "convert": "write the backbone for torchvision, MMSegmentation or detectron2",
    "prefetch": "download weights into the Hugging Face cache for offline use",
    "segment": "colour overlays of the prototype segmenter (no fine-tuning), with a legend",
    "demo": "a local web page showing what an export or a fine-tuned model does to an image",
    "install-cache": "copy an export folder into the Hugging Face cache (air-gapped machines)",
    "verify": "check every file of an export folder against the sha256 its config.json records",
}


def _export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "src", type=Path, metavar="SRC", help="training checkpoint (.pth) or state dict (.safetensors, .pth)"
    )
    p.add_argument(
        "out_dir", type=Path, metavar="OUT_DIR", help="folder to write (created; may hold an earlier export)"
    )
    p.add_argument(
        "--tag",
        help="weight tag, the part after the dot in mdp_resnet50.TAG; a paper recipe tag "
        "(mdp-hub list) is kept only for a completed run of that recipe",
    )
    p.add_argument(
        "--metrics", help='downstream results as JSON or a JSON file, e.g. {"dataset": "ADE20K", "mIoU": 42.1}'
    )
    p.add_argument("--arch", help="timm architecture of a plain state dict (default: inferred from its tensors)")
    p.add_argument(
        "--org", help=f"Hub organisation named in the card (default: ${catalog.ORG_ENV_VAR} or {catalog.DEFAULT_ORG})"
    )


def _push_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("repo_id", metavar="REPO_ID", help="ORG/NAME, e.g. mdp-hub/mdp_resnet50.voc_ade20k_coco_200ep")
    p.add_argument("out_dir", type=Path, metavar="EXPORT_DIR", help="folder written by mdp-hub export")
    p.add_argument("--revision", help="branch to upload to (created if needed; default: main)")
    p.add_argument("--git-tag", help="Git tag to create on the uploaded commit, e.g. v1.0 (not a weight tag)")
    p.add_argument("--private", action="store_true", help="create the repository as private")
    p.add_argument("--dry-run", action="store_true", help="only list what would be uploaded")


def _list_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache-dir", type=Path, help="Hugging Face cache to look in (default: $HF_HUB_CACHE)")


def _convert_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", type=Path, metavar="SRC", help="export folder, weights file or training checkpoint")
    p.add_argument("out", type=Path, metavar="OUT", help="output file (.pth, or .pkl for detectron2)")
    p.add_argument("--to", required=True, choices=FORMATS, help="target library")


def _prefetch_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME", help="mdp_resnet50[.TAG] or ORG/NAME")
    p.add_argument("--cache-dir", type=Path, help="Hugging Face cache to fill (default: $HF_HUB_CACHE)")
    p.add_argument("--revision", help="branch, tag or commit to download (default: main)")


def _segment_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="image files to segment")
    p.add_argument(
        "--model",
        required=True,
        help="export folder with prototypes, MDP pretraining checkpoint, Hub repo ORG/NAME, or fine-tuned checkpoint",
    )
    p.add_argument("--out", required=True, type=Path, help="folder for the overlays (<image stem>.png)")
    p.add_argument("--dataset", help="restrict predictions to one pretraining dataset's classes, e.g. voc")
    p.add_argument(
        "--html",
        action="store_true",
        help=f"also write {REPORT_NAME}: one self-contained page with every overlay, confidence map and legend",
    )


def _demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        required=True,
        help="export folder, hf-hub:ORG/NAME, MDP pretraining checkpoint or fine-tuned checkpoint (last.pth)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default: this machine only)")
    p.add_argument("--port", type=int, help="port (default: the first free one from 7860)")


def _install_cache_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "repo_id",
        metavar="REPO_ID",
        help="ORG/NAME the folder is installed as, e.g. mdp-hub/mdp_resnet50.voc_ade20k_200ep",
    )
    p.add_argument("folder", type=Path, metavar="EXPORT_DIR", help="folder written by mdp-hub export")
    p.add_argument("--cache-dir", type=Path, help="Hugging Face cache to fill (default: $HF_HUB_CACHE)")


def _verify_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", type=Path, metavar="EXPORT_DIR", help="folder written by mdp-hub export")


ARGUMENTS = {  # command -> what adds its arguments
    "export": _export_arguments,
    "push": _push_arguments,
    "list": _list_arguments,
    "convert": _convert_arguments,
    "prefetch": _prefetch_arguments,
    "segment": _segment_arguments,
    "demo": _demo_arguments,
    "install-cache": _install_cache_arguments,
    "verify": _verify_arguments,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mdp-hub", description=DESCRIPTION, formatter_class=HelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands")
    add = {
        name: commands.add_parser(
            name, help=text, description=text[0].upper() + text[1:] + ".", formatter_class=HelpFormatter
        )
        for name, text in COMMANDS.items()
    }
    for name, add_arguments in ARGUMENTS.items():
        add_arguments(add[name])
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
        tag = json.loads((out / CONFIG_FILENAME).read_text(encoding="utf-8"))["mdp"]["tag"]
        print(f"exported {args.src} -> {out} (weight tag: {tag}; {', '.join(sorted(p.name for p in out.iterdir()))})")
    elif args.command == "push":
        plan = plan_upload(args.out_dir, args.repo_id, revision=args.revision, tag=args.git_tag, private=args.private)
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
        segmenter = open_segmenter(args.model)
        written = segment_files(segmenter, args.images, args.out, restrict_to=args.dataset, html_report=args.html)
        for path, result in written:
            classes = ", ".join(f"{name} {100 * share:.1f}%" for _, name, share in present_classes(result)[:5])
            note = downscale_note(result)
            print(f"wrote {path}: {classes}" + (f" ({note})" if note else ""))
        if args.html:
            print(f"wrote {args.out / REPORT_NAME}")
    elif args.command == "demo":
        launch(args.model, host=args.host, port=args.port)
    elif args.command == "verify":
        print("\n".join(verify_export_files(args.folder)) + f"\n{args.folder}: intact")
    elif args.command == "install-cache":
        print(install_export(args.folder, args.repo_id, cache_dir=args.cache_dir))


@command("mdp-hub", expected=(ValueError, KeyError))
def main(argv: list[str] | None = None) -> int:
    run(build_parser().parse_args(argv))
    return 0
