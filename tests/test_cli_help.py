"""`--help` of every command reads as plain text: no reST markup, nothing said twice, no long name lists, no
name broken at a hyphen, and the argument order of huggingface_hub (`hf upload REPO_ID LOCAL_PATH`)."""

import re

import pytest

from mdp_hub import cli

COMMANDS = [[]] + [[name] for name in cli.COMMANDS]


def help_text(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*argv, "--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("argv", COMMANDS, ids=lambda argv: " ".join(["mdp-hub", *argv]))
def test_help_is_plain_and_says_each_thing_once(argv, capsys):
    text = help_text(argv, capsys)
    assert "``" not in text and ":func:" not in text and ".. " not in text
    assert not re.search(r"[A-Za-z0-9]-\n", text), "a name was broken at a hyphen"
    assert max(len(line) for line in text.splitlines()) <= 100
    assert max(line.count(",") for line in text.splitlines()) <= 6, "a list of names inside one help line"
    if not argv:
        assert "{export," not in text and text.count("install-cache") == 1


def test_repository_first_like_hf_upload_and_git_tag_is_not_a_weight_tag(capsys):
    assert "REPO_ID EXPORT_DIR" in help_text(["push"], capsys)
    assert "REPO_ID EXPORT_DIR" in help_text(["install-cache"], capsys)
    push = help_text(["push"], capsys)
    assert "--git-tag" in push and "--tag " not in push
    assert "--tag TAG" in help_text(["export"], capsys)
