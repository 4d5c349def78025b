"""`--help` of every command reads as plain text: no reST markup, nothing said twice, no long name lists, no
name broken at a hyphen, and the argument order of huggingface_hub (`hf upload REPO_ID LOCAL_PATH`)."""

import importlib
import re

import pytest

from mdp_hub import cli

COMMANDS = [("mdp_hub.cli", argv) for argv in [[]] + [[name] for name in cli.COMMANDS]] + [
    ("training.pretrain", []),
    ("training.finetune", []),
    ("training.evaluate", []),
    ("training.mine", []),
    ("training.experiments", []),
    ("training.experiments", ["paper-tables"]),
    ("training.experiments_prototypes", []),
    ("training.data.__main__", []),
    ("training.data.__main__", ["synth"]),
    ("training.data.__main__", ["check"]),
    ("benchmarks.__main__", []),
]


def help_text(argv, capsys, module="mdp_hub.cli"):
    with pytest.raises(SystemExit) as exit_info:
        importlib.import_module(module).main([*argv, "--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize(
    "module, argv", COMMANDS, ids=lambda value: " ".join(value) if isinstance(value, list) else value
)
def test_help_is_plain_and_says_each_thing_once(module, argv, capsys):
    text = help_text(argv, capsys, module)
    assert "``" not in text and ":func:" not in text and ".. " not in text
    assert not re.search(r"[A-Za-z0-9]-\n", text), "a name was broken at a hyphen"
    assert max(len(line) for line in text.splitlines()) <= 120
    assert max(line.count(",") for line in text.splitlines()) <= 6, "a list of names inside one help line"
    paragraphs = [p.strip() for p in text.split("\n\n") if len(p.strip()) > 40]
    assert len(paragraphs) == len(set(paragraphs)), "a paragraph is printed twice"
    assert not re.search(r"^\s+\{[a-z-]+(,[a-z-]+)+\}$", text, re.M), "the command list is printed twice"


def test_repository_first_like_hf_upload_and_git_tag_is_not_a_weight_tag(capsys):
    assert "REPO_ID EXPORT_DIR" in help_text(["push"], capsys)
    assert "REPO_ID EXPORT_DIR" in help_text(["install-cache"], capsys)
    push = help_text(["push"], capsys)
    assert "--git-tag" in push and "--tag " not in push
    assert "--tag TAG" in help_text(["export"], capsys)
