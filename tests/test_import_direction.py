"""Imports point one way: entry points, then the task packages, then ``engine``, ``config`` and ``data``, then
``mdp_hub`` (docs/ARCHITECTURE.md). Read from the source (every ``import``, also inside functions), not by
importing it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Higher may import lower; a group never imports a group of its own rank or above (its own modules excepted).
LAYERS = (  # bottom up
    ("mdp_hub",),
    ("training.data",),
    ("training.config",),
    ("training.engine",),
    ("training.mdp",),
    ("training.seg", "training.pretraining"),
    ("training.studies",),
)
RANKS = {group: rank for rank, groups in enumerate(LAYERS) for group in groups}
ENTRY_POINT_RANK = len(LAYERS)  # the commands: training/<name>.py and every package's __main__.py
# A command may run another command through its ``main`` (the SLURM job runs the pretraining command), never
# reach into its module for anything else: what two commands share lives in a package.


def module_name(path: Path, root: Path) -> str:
    return ".".join(path.relative_to(root).with_suffix("").parts)


def group_of(module: str) -> tuple[str, int]:
    """``(group, rank)`` of a module name: its package under ``training`` (or ``mdp_hub``), or an entry point."""
    parts = module.split(".")
    if parts[-1] == "__main__":
        return module, ENTRY_POINT_RANK
    for depth in (2, 1):
        group = ".".join(parts[:depth])
        if group in RANKS:
            return group, RANKS[group]
    if parts[0] == "training" and len(parts) >= 2:
        return ".".join(parts[:2]), ENTRY_POINT_RANK
    raise AssertionError(f"{module} belongs to no layer: add its package to RANKS")


def imported_modules(path: Path, root: Path) -> list[tuple[int, str]]:
    """``(line, name)`` of every absolute or relative import of the project's code in ``path``; ``from a import
    b`` gives ``a.b`` (b may be a module, as in ``from training import pretrain``)."""
    module = module_name(path, root).split(".")
    package = module if path.name == "__init__.py" else module[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1]) if node.level else ""
            source = ".".join(part for part in (base, node.module or "") if part)
            found += [(node.lineno, f"{source}.{alias.name}") for alias in node.names]
    return [(line, name) for line, name in found if name.split(".")[0] in ("training", "mdp_hub")]


def upward_imports(paths: list[Path], root: Path = ROOT) -> list[str]:
    """One line per import of a group of the same or a higher rank than the importing file's."""
    problems = []
    for path in paths:
        source, rank = group_of(module_name(path, root))
        for line, name in imported_modules(path, root):
            target, target_rank = group_of(name)
            runs_a_command = rank == target_rank == ENTRY_POINT_RANK and name.endswith(".main")
            if target != source and target_rank >= rank and not runs_a_command:
                problems.append(f"{path.relative_to(root)}:{line} ({source}) imports {name} ({target})")
    return problems


def project_files() -> list[Path]:
    return sorted([*(ROOT / "training").rglob("*.py"), *(ROOT / "mdp_hub").rglob("*.py")])


def test_every_import_points_down():
    problems = upward_imports(project_files())
    assert not problems, "imports that point up (docs/ARCHITECTURE.md):\n" + "\n".join(problems)


@pytest.mark.parametrize(
    ("importer", "source"),
    [
        ("training/seg/probe.py", "from training.evaluate import evaluate_dataset\n"),
        ("training/engine/loop.py", "from training.mdp import build_method\n"),
        ("mdp_hub/demo.py", "def f():\n    from training.seg.segmenter import FinetunedSegmenter\n"),
        ("training/seg/models.py", "from training.pretraining.run import train\n"),
        ("training/data/datasets.py", "from ..engine import distributed\n"),
        ("training/pretraining/run.py", "from training import pretrain\n"),
        ("training/submit.py", "from training.pretrain import train\n"),
        ("training/submit.py", "from training import pretrain\n"),
    ],
)
def test_an_upward_import_is_found(tmp_path, importer, source):
    """Each of these would be reported if written at that place (a copy of the file's position in the tree)."""
    copy = tmp_path / importer
    copy.parent.mkdir(parents=True)
    copy.write_text(source)
    assert upward_imports([copy], root=tmp_path), f"{source!r} in {importer} not reported"


def test_a_downward_import_is_not_reported(tmp_path):
    copy = tmp_path / "training/seg/probe.py"
    copy.parent.mkdir(parents=True)
    copy.write_text("from training.mdp.model import Encoder\nfrom . import metrics\nfrom mdp_hub import heads\n")
    command = tmp_path / "training/submit.py"
    command.write_text("from training.pretrain import main\nfrom training.pretraining.run import train\n")
    assert upward_imports([copy, command], root=tmp_path) == []
