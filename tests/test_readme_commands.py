"""The README's two commands are the project's front door: keep them present, and CI running the test one."""

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _block(marker: str) -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(rf"<!-- {marker} -->\n```bash\n(.+?)\n```\n<!-- /{marker} -->", text, re.S)
    assert match, f"README.md has no ```bash block between <!-- {marker} --> markers"
    return match.group(1).strip()


def test_readme_has_main_and_test_commands():
    main, tests = _block("main-command"), _block("test-command")
    assert "\n" not in main and "\n" not in tests, "each README command must be one copy-paste line"
    for command in (main, tests):
        assert command.startswith("python3 -m venv .venv"), "each command must do its own set-up"
        assert "pip install torch==2.14.1 torchvision==0.29.1" in command
    assert main.endswith("python -m training.pretrain")
    assert tests.endswith("python -m pytest -q")


def test_ci_extracts_exactly_the_readme_test_command():
    script = (ROOT / ".ci" / "run").read_text()
    extraction = re.search(r"cmd=\$\((.+)\)\n", script).group(1)
    extracted = subprocess.run(["bash", "-c", extraction], cwd=ROOT, capture_output=True, text=True, check=True)
    assert extracted.stdout.strip() == _block("test-command")
