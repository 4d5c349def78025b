"""Code-shape rules the project keeps: no function in the packages is longer than ``MAX_FUNCTION_LINES``.

A long function is a sequence of steps without names; split it into functions (or a small class) whose names
say what each step does.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("mdp_hub", "training", "benchmarks")
MAX_FUNCTION_LINES = 60


def long_functions(source: str, filename: str) -> list[str]:
    """``path:line name (N lines)`` for every function or method of ``source`` over the limit (def to last line)."""
    found = []
    for node in ast.walk(ast.parse(source, filename=filename)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                found.append(f"{filename}:{node.lineno} {node.name} ({length} lines)")
    return found


def test_no_function_over_the_limit():
    files = sorted(path for package in PACKAGES for path in (ROOT / package).rglob("*.py"))
    assert len(files) > 50  # the walk found the packages
    offenders = [
        hit for path in files for hit in long_functions(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
    ]
    assert not offenders, f"functions over {MAX_FUNCTION_LINES} lines: " + "; ".join(offenders)


def test_the_check_sees_a_long_function():
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES))
    assert long_functions(f"def short():\n    pass\n\n\ndef long():\n{body}", "m.py") == [
        f"m.py:5 long ({MAX_FUNCTION_LINES + 1} lines)"
    ]
