"""Publishing: dry run lists exactly the upload, incomplete folders are refused, the Hub calls and the token."""

from types import SimpleNamespace

import pytest
import timm
from safetensors.torch import save_file

from mdp_hub.cli import main
from mdp_hub.export import export
from mdp_hub.publish import plan_upload, push


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("publish")
    save_file(timm.create_model("resnet18", num_classes=0).state_dict(), str(root / "w.safetensors"))
    return export(root / "w.safetensors", root / "out", tag="random_weights")


class RecordingHubApi:
    """Stands in for the Hub server, which tests cannot reach: records the calls push() makes."""

    def __init__(self):
        self.calls = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def create_branch(self, repo_id, **kwargs):
        self.calls.append(("create_branch", repo_id, kwargs))

    def upload_folder(self, **kwargs):
        self.calls.append(("upload_folder", kwargs["repo_id"], kwargs))
        return SimpleNamespace(oid="abc123", commit_url="https://huggingface.co/o/n/commit/abc123")

    def create_tag(self, repo_id, **kwargs):
        self.calls.append(("create_tag", repo_id, kwargs))


def test_dry_run_lists_exactly_the_files_and_never_the_token(exported, capsys, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secretsecretsecret")
    (exported / "notes.txt").write_text("not part of the export")
    try:
        assert main(["push", "org/mdp_resnet18.voc_100ep", str(exported), "--dry-run", "--git-tag", "v1.0"]) == 0
    finally:
        (exported / "notes.txt").unlink()
    out = capsys.readouterr().out
    listed = [line.split()[0] for line in out.splitlines()[1:]]
    assert listed == ["model.safetensors", "config.json", "README.md"]
    assert "org/mdp_resnet18.voc_100ep" in out and "tag v1.0" in out and "hf_secret" not in out


def test_push_creates_repo_uploads_planned_files_and_tags(exported):
    api = RecordingHubApi()
    plan = plan_upload(exported, "org/mdp_resnet18.voc_100ep", revision="release", tag="v1.0", private=True)
    assert push(plan, api=api) == "https://huggingface.co/o/n/commit/abc123"
    names = [call[0] for call in api.calls]
    assert names == ["create_repo", "create_branch", "upload_folder", "create_tag"]
    assert api.calls[0][2] == {"private": True, "exist_ok": True}
    upload = api.calls[2][2]
    assert upload["allow_patterns"] == ["model.safetensors", "config.json", "README.md"]
    assert upload["revision"] == "release" and upload["folder_path"] == str(exported)
    assert api.calls[3][2]["tag"] == "v1.0" and api.calls[3][2]["revision"] == "abc123"
    assert all("token" not in call[2] for call in api.calls)


def test_incomplete_or_invalid_targets_are_refused(exported, tmp_path, capsys):
    with pytest.raises(ValueError, match="must look like ORG/NAME"):
        plan_upload(exported, "no-org")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "model.safetensors").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="half: incomplete export, config.json is missing"):
        plan_upload(tmp_path / "half", "org/name")
    assert main(["push", "org/name", str(tmp_path / "absent"), "--dry-run"]) == 2
    assert "absent: no such export folder" in capsys.readouterr().err
