"""``mdp-hub demo`` driven in a real headless Chromium (Debian's package, through Playwright), the page's handling
of bad files, and the self-contained ``mdp-hub segment --html`` report.

The browser tests are skipped, with the reason, where Chromium or the ``demo`` / ``test`` extras are missing;
``.ci/run`` installs them, so they run in CI. ``MDP_HUB_DEMO_SCREENSHOT=PATH`` keeps the page's screenshot there
(the README's comes from a real export: ``MDP_HUB_DEMO_MODEL`` and ``MDP_HUB_DEMO_IMAGE``).
"""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from prototype_checkpoints import make_export, write_image

from mdp_hub.cli import main
from mdp_hub.demo import ALL_CLASSES, open_segmenter, segment_for_page
from mdp_hub.overlays import present_classes

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    _, _, _, folder = make_export(tmp_path_factory.mktemp("demo"))
    return folder


@pytest.fixture(scope="module")
def page_of(tiny):
    """``(page, segmenter, model)`` of a running demo in headless Chromium."""
    if CHROMIUM is None:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium)")
    pytest.importorskip("gradio", reason="the demo extra is not installed (pip install -e '.[demo]')")
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    from mdp_hub.demo import launch

    model = os.environ.get("MDP_HUB_DEMO_MODEL", str(tiny))
    app = launch(model, block=False)
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.requested_hosts = set()  # offline: everything the page loads comes from the local server
        page.on("request", lambda request: page.requested_hosts.add(request.url.split("/")[2]))
        page.goto(app.local_url)
        page.wait_for_selector("#upload input[type=file]", state="attached")
        yield page, open_segmenter(model), model
        browser.close()
    app.close()


def _upload(page, path: Path) -> str:
    """Upload ``path`` (clearing an earlier upload first), wait for the page's answer and return the message."""
    clear = page.query_selector('#upload button[aria-label="Clear"]')
    if clear is not None:
        clear.click()
        # the upload box is rebuilt after a clear: a file given to the old input would be lost
        page.wait_for_selector('#upload button[aria-label="Clear"]', state="detached", timeout=60_000)
    page.wait_for_selector("#upload input[type=file]", state="attached")
    page.set_input_files("#upload input[type=file]", str(path))
    page.wait_for_function(
        "name => document.querySelector('#message').innerText.includes(name)", arg=path.name, timeout=60_000
    )
    return page.inner_text("#message")


def test_the_page_shows_the_overlay_and_a_legend_naming_the_classes_present(page_of, tmp_path):
    page, segmenter, _ = page_of
    image = Path(os.environ.get("MDP_HUB_DEMO_IMAGE", "")) if os.environ.get("MDP_HUB_DEMO_IMAGE") else None
    image = image or write_image(tmp_path / "stripes.png", seed=4, height=96, width=128)
    message = _upload(page, image)
    assert "Could not" not in message
    page.wait_for_selector("#overlay img", timeout=60_000)
    assert page.eval_on_selector("#overlay img", "img => img.complete && img.naturalWidth") > 0
    expected = [name for _, name, _ in present_classes(segmenter.segment(image, restrict_to=None))]
    legend = [cell.inner_text() for cell in page.query_selector_all("#legend td.class-name")]
    assert legend == expected and all("/" in name for name in legend)  # dataset/class, largest first
    screenshot = Path(os.environ.get("MDP_HUB_DEMO_SCREENSHOT", tmp_path / "demo.png"))
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 0
    assert page.requested_hosts == {page.url.split("/")[2]}


def test_a_file_that_is_not_an_image_gets_a_message_and_the_page_keeps_serving(page_of, tmp_path):
    page, _, _ = page_of
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image\n")
    assert "Could not segment notes.txt: notes.txt: not a readable image" in _upload(page, notes)
    assert "Could not" not in _upload(page, write_image(tmp_path / "after.png", seed=5))
    page.wait_for_selector("#legend td.class-name")


def _cmyk_jpeg(path: Path) -> Path:
    write_image(path.with_suffix(".png"), seed=6)
    Image.open(path.with_suffix(".png")).convert("CMYK").save(path)
    return path


def _sixteen_bit_png(path: Path) -> Path:
    ramp = (np.linspace(0, 65535, 48 * 64).reshape(48, 64)).astype(np.uint16)
    Image.fromarray(ramp).save(path)
    return path


@pytest.mark.parametrize("make", [_cmyk_jpeg, _sixteen_bit_png], ids=["CMYK JPEG", "16-bit greyscale PNG"])
def test_cmyk_and_16_bit_images_are_segmented(tiny, tmp_path, make):
    path = make(tmp_path / ("image.jpg" if make is _cmyk_jpeg else "image.png"))
    overlay, legend, confidence, message = segment_for_page(open_segmenter(tiny), str(path), ALL_CLASSES)
    assert message.startswith(f"**{path.name}**: 64x48") and overlay.size == confidence.size == (64, 48)
    assert "class-name" in legend
    if make is _sixteen_bit_png:  # scaled by the bit depth, not clipped to white
        assert np.asarray(Image.open(path).convert("I")).max() > 255
        from mdp_hub.segmenter import open_image

        assert 100 < np.asarray(open_image(path)).mean() < 155


def test_a_large_image_is_downscaled_and_the_page_says_so(tiny, tmp_path):
    segmenter = open_segmenter(tiny)
    segmenter.max_network_pixels = 48 * 64
    path = write_image(tmp_path / "large.png", height=480, width=640)
    overlay, _, _, message = segment_for_page(segmenter, str(path), "voc_aug")
    assert "a 640x480 image: the network saw it downscaled to 64x48, labels are at full size" in message
    assert overlay.size == (640, 480)


def test_nothing_uploaded_and_a_missing_file_get_a_message(tiny, tmp_path):
    segmenter = open_segmenter(tiny)
    assert segment_for_page(segmenter, None, ALL_CLASSES)[3].startswith("Drop or upload")
    assert "Could not segment gone.png" in segment_for_page(segmenter, str(tmp_path / "gone.png"), ALL_CLASSES)[3]


def test_a_tampered_export_is_refused_before_any_page(tiny, tmp_path, capsys):
    folder = tmp_path / "tampered"
    shutil.copytree(tiny, folder)
    config = json.loads((folder / "config.json").read_text())
    names = config["mdp"]["label_space"]["datasets"][0]["class_names"]
    names.append(names.pop(0))
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    assert main(["demo", "--model", str(folder)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "what it says is not what mdp_prototypes.safetensors was exported with" in error


def test_segment_html_writes_one_self_contained_report(tiny, tmp_path, capsys):
    images = [write_image(tmp_path / "in" / f"photo{i}.png", seed=i) for i in range(2)]
    out = tmp_path / "out"
    assert main(["segment", *map(str, images), "--model", str(tiny), "--out", str(out), "--html"]) == 0
    assert f"wrote {out / 'report.html'}" in capsys.readouterr().out
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 4  # an overlay and a confidence map per image
    assert "http://" not in page and "https://" not in page and "<script" not in page
    segmenter = open_segmenter(tiny)
    for image in images:
        assert f"<h2>{image.name}</h2>" in page
        for _, name, _ in present_classes(segmenter.segment(image, restrict_to=None)):
            assert f'class="class-name">{name}<' in page


def test_a_fine_tuned_checkpoint_is_shown_with_its_own_classes(tmp_path, capsys):
    from test_finetune_roundtrip import CLASSES, make_shapes_dataset, tiny_overrides

    from mdp_hub.demo import restriction_choices
    from training import finetune

    shapes = make_shapes_dataset(tmp_path / "shapes", seed=0, train_images=8, val_images=2)
    run = tmp_path / "ft"
    overrides = [arg for item in tiny_overrides(shapes, 4) for arg in ("--set", item)]
    assert finetune.main(["--recipe", "finetune_voc_aug", "--init", "scratch", "--output", str(run), *overrides]) == 0
    segmenter = open_segmenter(run / "last.pth")
    assert restriction_choices(segmenter) == ["shapes"] and segmenter.class_names == list(CLASSES)
    image = write_image(tmp_path / "photo.png", seed=3)
    overlay, legend, _, message = segment_for_page(segmenter, str(image), "shapes")
    assert overlay.size == (64, 48) and "Could not" not in message
    names = [name for _, name, _ in present_classes(segmenter.segment(image))]
    assert names and all(f'class="class-name">{name}<' in legend for name in names)
    out = tmp_path / "overlays"
    assert main(["segment", str(image), "--model", str(run / "last.pth"), "--out", str(out)]) == 0
    assert (out / "photo.png").is_file()
