"""``mdp-hub demo``: a local web page (Gradio) showing what a model does to an image.

    mdp-hub demo --model runs/demo/export            # an export: the prototype segmenter, before any fine-tuning
    mdp-hub demo --model hf-hub:ORG/NAME             # the same, from the Hugging Face Hub (or its cache)
    mdp-hub demo --model runs/finetune/last.pth      # a fine-tuned checkpoint of training.finetune

Drop or upload an image (or pick one of the examples made here): the page shows the overlay, the legend of the
classes present (``dataset/class`` for an export) with their share of the image, and a confidence map. For an
export the classes can be restricted to one pretraining dataset. A file that is not an image gets a message in the
page and the app keeps serving; a large photo is downscaled for the network and the page says so. Everything runs
locally and offline.
"""

from __future__ import annotations

import os
import tempfile
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from .checkpoint_io import is_training_checkpoint, load_file
from .errors import UserError
from .overlays import blend_image, confidence_image, downscale_note, for_display, legend_html
from .segmenter import PrototypeSegmenter, open_image

ALL_CLASSES = "all classes"
DISPLAY_SIDE = 1024  # longest side of the images shown in the page (labels and shares stay full size)
HUB_PREFIX = "hf-hub:"
# Fine-tuned models (decode heads) live in the training code, which registers its segmenter here (pyproject.toml),
# so this package never imports it.
SEGMENTER_PLUGINS = "mdp_hub.segmenters"


class DemoNotInstalledError(UserError, ImportError):
    """The optional ``demo`` dependencies are missing."""


def open_segmenter(source: str | os.PathLike):
    """A segmenter for ``source``: an export folder, Hub repo (``ORG/NAME``, ``hf-hub:ORG/NAME``, or a
    ``mdp_resnet*`` name) or pretraining checkpoint gives a :class:`PrototypeSegmenter`; a fine-tuning checkpoint
    gives its fine-tuned model (the ``finetune`` segmenter the training code registers)."""
    text = str(source)
    if text.startswith(HUB_PREFIX):
        return PrototypeSegmenter.from_pretrained(text[len(HUB_PREFIX) :])
    path = Path(text).expanduser()
    if path.is_file() and path.suffix in (".pth", ".pt"):
        content = load_file(path)
        if is_training_checkpoint(content) and content.get("kind") == "finetune":
            return finetuned_segmenter(path)
    return PrototypeSegmenter.from_pretrained(text)


def finetuned_segmenter(path: Path):
    """The segmenter of a fine-tuning checkpoint, from the plugin the training code registers."""
    plugins = entry_points(group=SEGMENTER_PLUGINS, name="finetune")
    if not plugins:
        raise UserError(
            f"{path} is a fine-tuning checkpoint: opening it needs the training code installed "
            "(pip install -e '.[train]' in the repository)"
        )
    return next(iter(plugins)).load()(path)


def restriction_choices(segmenter) -> list[str]:
    """What the page offers: every class, or one pretraining dataset's; a fine-tuned model has its own only."""
    if isinstance(segmenter, PrototypeSegmenter):
        return [ALL_CLASSES, *segmenter.dataset_names]
    return list(segmenter.dataset_names)


def segment_for_page(segmenter, path: str | None, choice: str) -> tuple[Any, str, Any, str]:
    """``(overlay, legend HTML, confidence map, message)`` for the uploaded file at ``path``; a file that cannot be
    segmented gives ``(None, "", None, message naming it)``, never an exception."""
    if not path:
        return None, "", None, "Drop or upload an image, or pick an example."
    name = Path(path).name
    try:
        image = open_image(path)
        result = segmenter.segment(image, restrict_to=None if choice == ALL_CLASSES else choice)
    except (UserError, OSError, ValueError) as err:
        return None, "", None, f"**Could not segment {name}:** {str(err).replace(str(path), name)}"
    shown, view = for_display(image, result, DISPLAY_SIDE)
    note = downscale_note(result)
    message = f"**{name}**: {image.width}x{image.height}" + (f"; {note}" if note else "")
    return blend_image(shown, view), legend_html(result), confidence_image(view), message


def write_examples(folder: Path) -> list[Path]:
    """A few street- and indoor-like scenes drawn here (no download): sky, buildings, road; a room with a table."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for name, draw_scene in (("street.png", _street), ("room.png", _room)):
        canvas = Image.new("RGB", (320, 240))
        draw_scene(ImageDraw.Draw(canvas))
        noisy = np.asarray(canvas, dtype=np.float32) + rng.normal(0, 6, (240, 320, 3))
        Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(folder / name)
        paths.append(folder / name)
    return paths


def _street(draw: ImageDraw.ImageDraw) -> None:
    draw.rectangle([0, 0, 320, 110], fill=(120, 170, 230))
    draw.rectangle([20, 40, 120, 160], fill=(150, 110, 90))
    draw.rectangle([200, 20, 300, 160], fill=(180, 180, 170))
    draw.rectangle([0, 160, 320, 240], fill=(90, 90, 95))
    draw.ellipse([130, 120, 190, 180], fill=(40, 120, 40))


def _room(draw: ImageDraw.ImageDraw) -> None:
    draw.rectangle([0, 0, 320, 150], fill=(225, 215, 190))
    draw.rectangle([0, 150, 320, 240], fill=(140, 100, 60))
    draw.rectangle([90, 120, 230, 140], fill=(90, 60, 40))
    draw.rectangle([230, 30, 300, 100], fill=(160, 200, 240))


def build_app(segmenter, title: str, examples: list[Path]):
    """The Gradio Blocks app: upload, class restriction, overlay, legend, confidence map, message."""
    gr = _gradio()
    choices = restriction_choices(segmenter)
    with gr.Blocks(title=f"mdp-hub demo: {title}", analytics_enabled=False) as app:
        gr.Markdown(f"## mdp-hub demo: {title}")
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(label="Image: drop, upload or pick an example", type="filepath", elem_id="upload")
                classes = gr.Dropdown(
                    choices, value=choices[0], label="Classes", elem_id="classes", interactive=len(choices) > 1
                )
                button = gr.Button("Segment", variant="primary", elem_id="segment")
                gr.Examples([[str(path)] for path in examples], inputs=[upload])
            with gr.Column(scale=2):
                message = gr.Markdown("Drop or upload an image, or pick an example.", elem_id="message")
                overlay = gr.Image(label="Classes", type="pil", interactive=False, height=360, elem_id="overlay")
                legend = gr.HTML(elem_id="legend")
                confidence = gr.Image(
                    label="Confidence (blue 0, yellow 1)",
                    type="pil",
                    interactive=False,
                    height=360,
                    elem_id="confidence",
                )
        outputs = [overlay, legend, confidence, message]
        segment = lambda path, choice: segment_for_page(segmenter, path, choice)  # noqa: E731
        gr.on([button.click, upload.change, classes.change], segment, inputs=[upload, classes], outputs=outputs)
    return app


def launch(model: str, host: str = "127.0.0.1", port: int | None = None, block: bool = True):
    """Load ``model`` (a tampered or unreadable one is refused here, before any page), start the app and print its
    URL. Returns the app (``app.close()`` stops it) when ``block`` is False."""
    segmenter = open_segmenter(model)
    examples = write_examples(Path(tempfile.mkdtemp(prefix="mdp-hub-demo-")))
    app = build_app(segmenter, _title(model), examples)
    _, url, _ = app.launch(
        server_name=host,
        server_port=port,
        prevent_thread_lock=True,
        quiet=True,
        ssr_mode=False,
        allowed_paths=[str(examples[0].parent)],
    )
    print(f"mdp-hub demo of {model} at {url} (Ctrl+C stops it)", flush=True)
    if block:
        app.block_thread()
    return app


def _title(model: str) -> str:
    """The model as the page names it: a Hub repo as given, a local path by its last two parts."""
    if model.startswith(HUB_PREFIX) or not Path(model).expanduser().exists():
        return model
    return "/".join(Path(model).expanduser().resolve().parts[-2:])


def _gradio():
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # offline: no telemetry or version check
    try:
        import gradio
    except ImportError:
        raise DemoNotInstalledError("mdp-hub demo needs Gradio: pip install 'mdp-hub[demo]'") from None
    return gradio
