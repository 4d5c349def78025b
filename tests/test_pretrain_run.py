"""End-to-end pretraining on a tiny synthetic benchmark: the shortened demo learns and exports a timm-loadable
backbone; a resumed run continues bit-exactly; a SIGKILLed run restarts from its last complete checkpoint."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm
import torch
import yaml

from training.data import ensure_synthetic
from training.engine.checkpoint import load_checkpoint
from training.engine.logger import read_metrics
from training.pretrain import main

ROOT = Path(__file__).resolve().parents[1]
TINY_SIZES = {
    "voc_train": 4,
    "voc_aug": 8,
    "voc_val": 1,
    "ade20k_train": 8,
    "ade20k_val": 1,
    "coco_stuff164k_train": 8,
    "coco_stuff164k_val": 1,
    "cityscapes_train": 1,
    "cityscapes_val": 1,
}


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic") / "bench"
    ensure_synthetic(root, sizes=TINY_SIZES)
    return root


def tiny_overrides(synthetic_root: Path, **extra) -> list[str]:
    values = {
        "data.synthetic_root": str(synthetic_root),
        "data.synthetic_sizes": json.dumps(TINY_SIZES),
        "data.crop_size": 64,
        "data.base_size": 80,
        "data.num_workers": 0,
        "train.batch_size": 4,
        "train.log_every": 1,
        "train.epochs": 100,
        "train.plots": False,
        "export.enabled": False,
        "train.probe_every": 0,
        **extra,
    }
    return [f"--set={key}={value}" for key, value in values.items()]


@pytest.mark.slow
def test_short_demo_loss_falls_and_exports_a_timm_loadable_backbone(synthetic_root, tmp_path, capsys):
    run = tmp_path / "demo"
    # The demo recipe itself; only sizes shrink. 24 images, so every image is seen several times.
    code = main(
        [
            "--output",
            str(run),
            *tiny_overrides(
                synthetic_root,
                **{
                    "train.max_steps": 20,
                    "train.log_every": 4,
                    "train.plots": True,
                    "export.enabled": True,
                    "train.checkpoint_every": 10,
                    "train.probe_every": 20,
                },
            ),
        ]
    )
    assert code == 0
    records = [r for r in read_metrics(run / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in records] == [4, 8, 12, 16, 20]
    # Step 1 has no prototypes yet (a pixel of a class without a prototype has no loss), so the first window
    # is not comparable; from the second window on, the loss must fall.
    settled = [r["loss"] for r in records[1:]]
    assert records[0]["prototypes_seen"] < records[-1]["prototypes_seen"]
    assert settled[-1] < settled[0] - 0.15, f"loss did not fall: {settled}"
    # The learning-dynamics probe: a random-init reference at step 0, the last step, gradient norms per part.
    probes = {r["step"]: r for r in read_metrics(run / "metrics.jsonl") if "val_backbone_probe" in r}
    assert {0, 20} <= set(probes)
    assert all(
        0.0 <= probes[20][key] <= 1.0 for key in ("val_backbone_probe", "val_embed_ncc", "val_prototype_accuracy")
    )
    assert records[-1]["grad_norm_backbone"] > 0 and records[-1]["grad_norm_head"] > 0
    # Prototypes that start from the encoder's own first regions are nearly parallel (cosine ~0.6-0.8 at random
    # init, and rising); anchored ones start apart and stay apart while the encoder learns.
    assert probes[20]["prototype_cos_mean"] < 0.5
    for name in ("config.yaml", "label_space.json", "last.pth", "loss_curves.png", "prototype_similarity.png"):
        assert (run / name).is_file(), name

    printed = capsys.readouterr().out
    assert 'timm.create_model("local-dir:' in printed
    model = timm.create_model(f"local-dir:{(run / 'export').resolve()}", pretrained=True)
    state = load_checkpoint(run / "last.pth")
    backbone = {
        k[len("encoder.backbone.") :]: v for k, v in state["model"].items() if k.startswith("encoder.backbone.")
    }
    exported = model.state_dict()
    assert set(exported) == set(backbone)
    for key, value in backbone.items():
        assert torch.equal(exported[key], value), key


@pytest.mark.parametrize("photometric_on, resolved", [("auto", "worker"), ("device", "device")])
def test_resume_from_a_checkpoint_gives_the_identical_next_losses(synthetic_root, tmp_path, photometric_on, resolved):
    """Run 4 steps with a snapshot at step 2; restart a copy from that snapshot: steps 3-4 match exactly, with the
    views made in the workers (``auto`` on the CPU) or batched on the device."""
    overrides = tiny_overrides(
        synthetic_root,
        **{
            "train.max_steps": 4,
            "train.checkpoint_every": 2,
            "train.snapshot_every": 2,
            "train.keep_snapshots": 2,
            "data.photometric_on": photometric_on,
        },
    )
    straight = tmp_path / "straight"
    assert main(["--output", str(straight), *overrides]) == 0
    assert yaml.safe_load((straight / "config.yaml").read_text())["data"]["photometric_on"] == resolved
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copy(straight / "checkpoint_00000002.pth", resumed / "last.pth")
    torch.manual_seed(987)  # the restart must not depend on the process's RNG state
    assert main(["--output", str(resumed), *overrides]) == 0

    a = {r["step"]: r for r in read_metrics(straight / "metrics.jsonl")}
    b = {r["step"]: r for r in read_metrics(resumed / "metrics.jsonl")}
    assert sorted(b) == [3, 4]
    for step in (3, 4):
        for term in ("loss", "loss_proto", "loss_sc", "mixed_fraction"):
            assert a[step][term] == b[step][term], (step, term)
    final_a = load_checkpoint(straight / "last.pth")["model"]
    final_b = load_checkpoint(resumed / "last.pth")["model"]
    for key in final_a:  # includes the momentum encoder and the prototype memory
        assert torch.equal(final_a[key], final_b[key]), key


def test_device_views_mix_labelled_and_unlabeled_items(synthetic_root, tmp_path):
    """Device mode with an unlabeled folder: uint8 local ids from both kinds of item collate and map on the
    device (the unlabeled source's table ignores everything), and training steps run."""
    from PIL import Image

    folder = tmp_path / "unlabeled"
    folder.mkdir()
    for i in range(4):
        Image.effect_noise((90, 70), 40 + 10 * i).convert("RGB").save(folder / f"{i}.jpg")
    overrides = tiny_overrides(
        synthetic_root,
        **{
            "train.max_steps": 2,
            "data.photometric_on": "device",
            "data.unlabeled": json.dumps([str(folder)]),
            "data.sampling": "balanced",  # half the items unlabeled
            "train.stages": json.dumps([{"datasets": ["voc_aug"], "epochs": 1}]),
        },
    )
    assert main(["--output", str(tmp_path / "run"), *overrides]) == 0
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2] and all(r["loss"] == r["loss"] for r in records)


@pytest.mark.slow
def test_sigkill_mid_run_then_restart_continues_from_the_last_checkpoint(synthetic_root, tmp_path):
    run = tmp_path / "killed"
    cmd = [
        sys.executable,
        "-m",
        "training.pretrain",
        "--output",
        str(run),
        *tiny_overrides(synthetic_root, **{"train.max_steps": 400, "train.checkpoint_every": 2}),
    ]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180  # a stuck child, not a slow one: a loaded machine is slow
    while not (run / "last.pth").exists():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "no checkpoint was written"
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=180)
    saved = load_checkpoint(run / "last.pth")["step"]
    assert saved >= 2 and saved % 2 == 0

    restart = subprocess.run(
        cmd + [f"--set=train.max_steps={saved + 2}"], env=env, capture_output=True, text=True, timeout=180
    )
    assert restart.returncode == 0, restart.stderr[-3000:]
    assert f"steps {saved}->{saved + 2} (resumed from" in restart.stderr + restart.stdout
    assert load_checkpoint(run / "last.pth")["step"] == saved + 2
    steps = [r["step"] for r in read_metrics(run / "metrics.jsonl")]
    assert steps == sorted(set(steps)) and steps[-1] == saved + 2, "resumed metrics must not overlap"


def test_a_max_steps_shortened_run_of_a_paper_recipe_is_exported_as_partial(synthetic_root, tmp_path, capsys):
    """The paper recipe voc_200ep on VOC-aug-format data, cut to 2 steps: the export must not claim the recipe."""
    run = tmp_path / "voc_200ep"
    voc_aug = next(
        spec for spec in ensure_synthetic(synthetic_root, sizes=TINY_SIZES)["pretrain"] if spec.startswith("voc_aug:")
    )
    assert (
        main(
            [
                "--recipe",
                "voc_200ep",
                "--output",
                str(run),
                *tiny_overrides(
                    synthetic_root,
                    **{
                        "data.datasets": json.dumps([voc_aug]),
                        "train.epochs": 200,
                        "train.max_steps": 2,
                        "export.enabled": True,
                        "method.arch": "resnet18",
                        "method.output_stride": 16,
                        "train.amp": "none",
                        "train.channels_last": False,
                        "train.device": "cpu",
                        "train.threads": 1,
                    },
                ),
            ]
        )
        == 0
    )
    assert "(weight tag: voc_200ep-partial)" in capsys.readouterr().out
    config = json.loads((run / "export" / "config.json").read_text())
    progress = load_checkpoint(run / "last.pth")["progress"]
    assert progress == {
        "steps_done": 2,
        "epochs_completed": 0,
        "run_steps": 2,
        "schedule_steps": 600,
        "schedule_epochs": 200,
    }  # train_aug has 12 images, in batches of 4: 3 steps per epoch
    assert config["mdp"]["tag"] == "voc_200ep-partial" and not config["mdp"]["recipe_completed"]
    assert config["mdp"]["run"]["completed"] is False and config["mdp"]["run"]["dataset_keys"] == ["voc"]
    assert "2 of 600 steps, 0 of 200 epochs" in config["pretrained_cfg"]["description"]
    assert "partial run of the `voc_200ep` recipe" in (run / "export" / "README.md").read_text()
