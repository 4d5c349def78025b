"""One error style for every entry point, table-driven: each bad input runs the real entry point
(``python -m <module>``) in a child process, which must exit non-zero with one line ``<prog>: error: ...`` naming
the thing, and no traceback. Counted figure: ``len(CASES)``.

Starting ``python`` once per case costs ~5 s of imports on a loaded 2-core machine, so one child process imports
the entry points once and forks a fresh process per case that runs the module as ``__main__`` exactly as
``python -m`` does (``runpy``); the forked processes are the entry points' real processes, with their own exit
code and stderr. Every case fails before training starts.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from prototype_checkpoints import build_method_with_prototypes, save_checkpoint
from test_finetune_roundtrip import make_shapes_dataset

from mdp_hub.export import export
from training.data import build_pretrain_dataset, build_segmentation_dataset
from training.engine.run_lock import RunLock

ROOT = Path(__file__).resolve().parents[1]
PROGS = {
    "training.pretrain": "python -m training.pretrain",
    "training.finetune": "python -m training.finetune",
    "training.evaluate": "python -m training.evaluate",
    "training.mine": "python -m training.mine",
    "training.data": "python -m training.data",
    "training.experiments": "python -m training.experiments",
    "training.experiments_prototypes": "python -m training.experiments_prototypes",
    "benchmarks": "python -m benchmarks",
    "mdp_hub": "mdp-hub",
}

PRETRAIN = [
    "--set",
    "data.crop_size=32",
    "--set",
    "data.base_size=0",
    "--set",
    "data.num_workers=0",
    "--set",
    "train.batch_size=2",
    "--set",
    "train.max_steps=1",
    "--set",
    "train.plots=false",
    "--set",
    "export.enabled=false",
    "--set",
    "method.options.sc_topk=1",
    "--output",
    "{tmp}/pretrain",
]
FINETUNE = [
    "--set",
    "data.train=folder:{shapes}:train",
    "--set",
    "data.val=folder:{shapes}:val",
    "--set",
    "data.crop_size=[32, 32]",
    "--set",
    "data.num_workers=0",
    "--set",
    "model.arch=test_resnet",
    "--set",
    "train.iterations=2",
    "--set",
    "train.batch_size=2",
    "--output",
    "{tmp}/finetune",
]


def datasets(spec: str) -> list[str]:
    return ["--set", f"data.datasets=[{spec}]"]


# case -> (module, arguments, exit code, pattern the one error line must match)
CASES = {
    "pretrain: dataset folder missing": (
        "training.pretrain",
        PRETRAIN + datasets("folder:{tmp}/absent"),
        2,
        r"{tmp}/absent.*not found",
    ),
    "pretrain: wrong layout": (
        "training.pretrain",
        PRETRAIN + datasets("ade20k:{shapes}"),
        2,
        r"{shapes}/.*(not found|missing)",
    ),
    "pretrain: empty dataset folder": (
        "training.pretrain",
        PRETRAIN + datasets("folder:{empty}"),
        2,
        r"{empty}.*(no images|empty)",
    ),
    "pretrain: split typo": (
        "training.pretrain",
        PRETRAIN + datasets("folder:{shapes}:trainig"),
        2,
        r"trainig: split folder not found",
    ),
    "pretrain: corrupt image": (
        "training.pretrain",
        PRETRAIN + datasets("folder:{broken}:train"),
        2,
        r"{broken}/images/train/00\d\.jpg: image is truncated or corrupt",
    ),
    "pretrain: batch_size 0": (
        "training.pretrain",
        PRETRAIN + datasets("folder:{shapes}:train") + ["--set", "train.batch_size=0"],
        2,
        r"batch_size must be at least 1, got 0",
    ),
    "pretrain: batch_size -1": (
        "training.pretrain",
        PRETRAIN + datasets("folder:{shapes}:train") + ["--set", "train.batch_size=-1"],
        2,
        r"batch_size must be at least 1, got -1",
    ),
    "pretrain: fewer images than one batch": (
        "training.pretrain",
        PRETRAIN + datasets("folder:{few}:train") + ["--set", "train.batch_size=4"],
        2,
        r"1 images per epoch .* fewer than one batch of 4: lower train.batch_size",
    ),
    "pretrain: fewer classes than sc_topk": (
        "training.pretrain",
        PRETRAIN + datasets("folder:{shapes}:train") + ["--set", "method.options.sc_topk=5"],
        2,
        r"method.options for the 3 classes of shapes: sc_topk must be in 1..2",
    ),
    "pretrain: text file as init weights": (
        "training.pretrain",
        PRETRAIN + datasets("folder:{shapes}:train") + ["--set", "init.pretrained={notes}"],
        2,
        r"{notes}: not a PyTorch weights file \(it starts with b'these are notes",
    ),
    "pretrain: fine-tuning recipe": (
        "training.pretrain",
        ["--recipe", "finetune_voc_aug"],
        2,
        r"recipe 'finetune_voc_aug' is for python -m training.finetune; the pretraining recipes are: ablate_",
    ),
    "pretrain: unknown key": ("training.pretrain", ["--set", "train.epochz=3"], 2, r"unknown key train.epochz"),
    "pretrain: run folder in use": (
        "training.pretrain",
        PRETRAIN[:-1] + ["{locked}"] + datasets("folder:{shapes}:train"),
        2,
        r"{locked}: another run is using this folder \(pid {pid} ",
    ),
    "finetune: recipe typo": (
        "training.finetune",
        ["--recipe", "finetune_vocaug"],
        2,
        r"unknown recipe 'finetune_vocaug'; the fine-tuning recipes are: finetune_ade20k, finetune_cityscapes",
    ),
    "finetune: train folder missing": (
        "training.finetune",
        FINETUNE + ["--set", "data.train=folder:{tmp}/absent"],
        2,
        r"{tmp}/absent.*not found",
    ),
    "finetune: broken validation mask": (
        "training.finetune",
        FINETUNE + ["--set", "data.val=folder:{broken_val}:val"],
        2,
        r"{broken_val}/masks/val/000\.png: .*validation data is checked before training starts",
    ),
    "finetune: text file as --init": (
        "training.finetune",
        FINETUNE + ["--init", "{notes}"],
        2,
        r"{notes}: not a PyTorch weights file",
    ),
    "finetune: fewer images than one batch": (
        "training.finetune",
        FINETUNE + ["--set", "data.train=folder:{few}:train", "--set", "train.batch_size=4"],
        2,
        r"data.train has 1 images, fewer than one batch of 4 per process: lower train.batch_size",
    ),
    "finetune: batch_size 0": (
        "training.finetune",
        FINETUNE + ["--set", "train.batch_size=0"],
        2,
        r"train.batch_size=0 must both be positive",
    ),
    "finetune: unknown key": ("training.finetune", FINETUNE + ["--set", "optim.lrr=1"], 2, r"unknown key.* optim.lrr"),
    "evaluate: checkpoint missing": (
        "training.evaluate",
        ["--checkpoint", "{tmp}/absent.pth"],
        2,
        r"{tmp}/absent.pth does not exist",
    ),
    "evaluate: text file as checkpoint": (
        "training.evaluate",
        ["--checkpoint", "{notes}"],
        2,
        r"checkpoint {notes}: not a PyTorch weights file",
    ),
    "mine: image folder missing": (
        "training.mine",
        ["--model", "{checkpoint}", "--images", "{tmp}/absent", "--out", "{tmp}/mined"],
        2,
        r"{tmp}/absent: image folder not found",
    ),
    "mine: text file as model": (
        "training.mine",
        ["--model", "{notes}", "--images", "{shapes}/images", "--out", "{tmp}/mined"],
        2,
        r"{notes}: not a PyTorch weights file",
    ),
    "data: synth into a read-only folder": (
        "training.data",
        ["synth", "{read_only}/synthetic"],
        2,
        r"{read_only}.*check its permissions",
    ),
    "experiments: --jobs 0": (
        "training.experiments",
        ["paper-tables", "--jobs", "0"],
        2,
        r"--jobs 0: must be at least 1",
    ),
    "experiments_prototypes: text file as model": (
        "training.experiments_prototypes",
        ["--model", "{notes}"],
        2,
        r"{notes}: not a PyTorch weights file",
    ),
    "benchmarks: read-only --out": (
        "benchmarks",
        ["--quick", "--out", "{read_only}/BENCHMARKS.md"],
        2,
        r"{read_only}.*check its permissions",
    ),
    "mdp-hub: text file exported": (
        "mdp_hub",
        ["export", "{notes}", "{tmp}/export"],
        2,
        r"{notes}: not a PyTorch weights file",
    ),
    "mdp-hub: verify a tampered export": (
        "mdp_hub",
        ["verify", "{tampered}"],
        2,
        r"{tampered}: model.safetensors: sha256 [0-9a-f]{64} differs from",
    ),
    "mdp-hub: export into a read-only folder": (
        "mdp_hub",
        ["export", "{checkpoint}", "{read_only}/export"],
        2,
        r"{read_only}.*check its permissions",
    ),
}


# case -> (module, arguments, environment): expected errors keep their traceback on request
DEBUG_CASES = {
    "pretrain --debug": ("training.pretrain", ["--debug", "--set", "train.epochz=3"], {}),
    "mdp-hub with MDP_HUB_DEBUG=1": ("mdp_hub", ["export", "{notes}", "{tmp}/export"], {"MDP_HUB_DEBUG": "1"}),
}


@contextlib.contextmanager
def read_only_folder(path: Path):
    """A folder nobody may write into: chmod for ordinary users, the immutable attribute for root (whom chmod
    does not stop)."""
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o555)
    elif shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(path)]).returncode != 0:
        pytest.skip("running as root on a filesystem without the immutable attribute: no read-only folder")
    try:
        yield path
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(path)])
        path.chmod(0o755)


def make_inputs(tmp: Path) -> dict[str, str]:
    shapes = make_shapes_dataset(tmp / "shapes", seed=0, train_images=6, val_images=2)
    few = make_shapes_dataset(tmp / "few", seed=1, train_images=1, val_images=1)
    broken = shutil.copytree(shapes, tmp / "broken")
    for image in (broken / "images" / "train").iterdir():  # whichever the first batch draws
        image.write_bytes(image.read_bytes()[:200])
    broken_val = shutil.copytree(shapes, tmp / "broken_val")
    (broken_val / "masks" / "val" / "000.png").write_bytes(b"\x89PNG\r\n\x1a\n then nothing useful")
    empty = tmp / "empty"
    for folder in ("images", "masks"):
        (empty / folder).mkdir(parents=True)
    (empty / "classes.txt").write_text("a\nb\n")
    notes = tmp / "notes.pth"
    notes.write_text("these are notes, not weights\n")
    method, _ = build_method_with_prototypes()
    save_checkpoint(method, tmp / "last.pth")
    tampered = export(tmp / "last.pth", tmp / "tampered")
    weights = (tampered / "model.safetensors").read_bytes()
    (tampered / "model.safetensors").write_bytes(weights[:-1] + bytes([weights[-1] ^ 1]))
    return {
        "tmp": str(tmp),
        "shapes": str(shapes),
        "few": str(few),
        "broken": str(broken),
        "broken_val": str(broken_val),
        "empty": str(empty),
        "notes": str(notes),
        "checkpoint": str(tmp / "last.pth"),
        "locked": str(tmp / "locked"),
        "pid": str(os.getpid()),
        "tampered": str(tampered),
    }


def _fill(text: str, values: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: values.get(m.group(1), m.group(0)), text)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """Each case's (exit code, stderr) from one child process that forks the entry points."""
    tmp = tmp_path_factory.mktemp("errors")
    values = make_inputs(tmp)
    with read_only_folder(tmp / "read_only") as read_only, RunLock(tmp / "locked"):
        values["read_only"] = str(read_only)
        table = {name: (module, args, {}) for name, (module, args, _, _) in CASES.items()} | DEBUG_CASES
        cases = {
            name: (module, [_fill(arg, values) for arg in args], env) for name, (module, args, env) in table.items()
        }
        (tmp / "cases.json").write_text(json.dumps(cases))
        env = dict(
            os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{ROOT / 'tests'}", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1"
        )
        subprocess.run(
            [sys.executable, __file__, str(tmp / "cases.json"), str(tmp / "outcomes.json")],
            env=env,
            cwd=tmp,
            check=True,
            timeout=900,
        )
    return values, json.loads((tmp / "outcomes.json").read_text())


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_gives_one_line_and_no_traceback(case, outcomes):
    values, results = outcomes
    module, _, code, pattern = CASES[case]
    returncode, stderr = results[case]
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith(f"{PROGS[module]}: error: ")]
    assert len(lines) == 1, stderr
    assert returncode == code, stderr
    escaped = {key: re.escape(value) for key, value in values.items()}
    assert re.search(_fill(pattern, escaped), lines[0]), lines[0]


@pytest.mark.parametrize("case", sorted(DEBUG_CASES))
def test_debug_shows_the_traceback_of_an_expected_error(case, outcomes):
    returncode, stderr = outcomes[1][case]
    assert returncode == 1 and "Traceback (most recent call last)" in stderr, stderr


def test_broken_validation_data_stops_before_the_first_step(outcomes):
    values, _ = outcomes
    run = Path(values["tmp"]) / "finetune"
    assert not (run / "last.pth").exists() and not (run / "metrics.jsonl").exists()


def test_a_crop_far_larger_than_the_images_is_warned(tmp_path, caplog):
    shapes = make_shapes_dataset(tmp_path / "shapes", seed=0, train_images=2, val_images=1)  # 32x32 images
    common = dict(mean=[0.5] * 3, std=[0.25] * 3, scale_range=(0.5, 2.0))  # rescaled to at most 64 px
    with caplog.at_level(logging.WARNING, logger="training.data.datasets"):
        build_pretrain_dataset([f"folder:{shapes}:train"], crop_size=128, **common)
        assert not caplog.records
        build_segmentation_dataset(f"folder:{shapes}:train", train=True, crop_size=[2048, 2048], **common)
    assert [r.getMessage() for r in caplog.records] == [
        f"{shapes}: crop size 2048 is far larger than its images (32x32, at most 64 px after rescaling): every crop "
        "is mostly padding and costs as much as a full 2048 px crop; lower data.crop_size"
    ]


# ---------------------------------------------------------------- the child process


def _run_case(module: str, args: list[str], env: dict[str, str], log: Path) -> int:
    """Fork; the child runs ``module`` as ``python -m module args`` with stdout and stderr into ``log``."""
    pid = os.fork()
    if pid == 0:
        import runpy
        import traceback

        descriptor = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(descriptor, 1)
        os.dup2(descriptor, 2)
        sys.argv = [module, *args]
        os.environ.update(env)
        code = 0
        try:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        except BaseException:  # what python does with an uncaught exception
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _child_main(cases_path: str, outcomes_path: str) -> None:
    import warnings

    warnings.filterwarnings("ignore", message=".*found in sys.modules.*", category=RuntimeWarning)  # runpy, -m
    for module in PROGS:  # import once; every fork starts from here
        __import__(module if module != "mdp_hub" else "mdp_hub.cli")
    outcomes = {}
    for number, (name, (module, args, env)) in enumerate(json.loads(Path(cases_path).read_text()).items()):
        log = Path(outcomes_path).with_name(f"case{number}.log")
        code = _run_case(module, args, env, log)
        outcomes[name] = (code, log.read_text(errors="replace"))
    Path(outcomes_path).write_text(json.dumps(outcomes))


if __name__ == "__main__":
    _child_main(*sys.argv[1:])


def test_an_error_line_is_length_limited_and_says_where_the_rest_is(capsys):
    from mdp_hub.errors import MAX_ERROR_CHARS, UserError, command

    label_space = ", ".join(f"ade20k/class_{i}" for i in range(1000))

    @command("python -m tool")
    def main(argv):
        raise UserError(f"runs/x: resumed with another label space: the checkpoint has [{label_space}] | end")

    assert main([]) == 2
    line = capsys.readouterr().err.strip()
    assert "\n" not in line and len(line) < MAX_ERROR_CHARS + 120
    assert line.startswith("python -m tool: error: runs/x: resumed with another label space")
    assert line.endswith("| end") and "characters left out; --debug shows the whole message" in line
    with pytest.raises(UserError, match="class_999"):
        main(["--debug"])
