"""runner/codeversion.py with real git repositories in tmp dirs, a real sqlite MLflow store,
and a real run from a git checkout of this project."""
import os
import shutil
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from conftest import ROOT, cli_env
from runner import codeversion, resume, tags


def git(folder, *args):
    return subprocess.run(["git", "-C", str(folder), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def make_repo(folder):
    """A git repository with one commit of one file; returns its HEAD."""
    folder.mkdir(parents=True, exist_ok=True)
    git(folder, "init", "-q")
    git(folder, "config", "user.email", "test@example.com")
    git(folder, "config", "user.name", "test")
    (folder / "code.py").write_text("x = 1\n")
    git(folder, "add", "code.py")
    git(folder, "commit", "-q", "-m", "first")
    return git(folder, "rev-parse", "HEAD")


@pytest.fixture(autouse=True)
def fresh_cache():
    codeversion.code_version.cache_clear()
    yield
    codeversion.code_version.cache_clear()


def test_a_clean_checkout_gives_its_commit(tmp_path):
    head = make_repo(tmp_path / "repo")
    (tmp_path / "repo" / "pkg").mkdir()
    assert codeversion.version_tags(str(tmp_path / "repo" / "pkg")) == {
        tags.GIT_COMMIT: head, tags.GIT_DIRTY: tags.FALSE}


@pytest.mark.parametrize("change", ["edit", "new file"])
def test_uncommitted_changes_make_it_dirty(tmp_path, change):
    head = make_repo(tmp_path / "repo")
    if change == "edit":
        (tmp_path / "repo" / "code.py").write_text("x = 2\n")
    else:
        (tmp_path / "repo" / "other.py").write_text("y = 1\n")
    assert codeversion.version_tags(str(tmp_path / "repo")) == {
        tags.GIT_COMMIT: head, tags.GIT_DIRTY: tags.TRUE}


def test_a_git_worktree_is_a_checkout(tmp_path):
    make_repo(tmp_path / "repo")
    git(tmp_path / "repo", "worktree", "add", "-q", "-b", "side", str(tmp_path / "side"))
    (tmp_path / "side" / "code.py").write_text("x = 3\n")
    git(tmp_path / "side", "commit", "-q", "-am", "side")
    version = codeversion.code_version(str(tmp_path / "side"))
    assert version.commit == git(tmp_path / "side", "rev-parse", "HEAD") and not version.dirty


def test_no_checkout_records_nothing_without_running_git(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "")  # a git call would fail, and warn: it must not be made
    assert codeversion.find_checkout(str(tmp_path)) is None
    assert codeversion.version_tags(str(tmp_path)) == {}


def test_git_missing_warns_once_and_records_nothing(tmp_path, monkeypatch, caplog):
    make_repo(tmp_path / "repo")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    started = time.monotonic()
    for _ in range(3):
        assert codeversion.version_tags(str(tmp_path / "repo")) == {}
    assert time.monotonic() - started < 1
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "git is not installed" in warnings[0], warnings


def test_a_repository_without_a_commit_warns_and_records_nothing(tmp_path, caplog):
    (tmp_path / "repo").mkdir()
    git(tmp_path / "repo", "init", "-q")
    assert codeversion.version_tags(str(tmp_path / "repo")) == {}
    assert "code version not recorded" in caplog.text


# ---------------------------------------------------------------- resuming at another commit

def test_resumed_commits():
    a, b = "a" * 40, "b" * 40
    assert codeversion.resumed_commits({tags.GIT_COMMIT: a}, codeversion.CodeVersion(a, True)) \
        is None
    assert codeversion.resumed_commits({tags.GIT_COMMIT: a}, codeversion.CodeVersion(b, False)) \
        == {tags.CODE_CHANGED: tags.TRUE, tags.COMMITS: f"{a} {b}"}
    # An earlier resume recorded both: back at either is no news, a third is added.
    both = {tags.GIT_COMMIT: a, tags.COMMITS: f"{a} {b}", tags.CODE_CHANGED: tags.TRUE}
    assert codeversion.resumed_commits(both, codeversion.CodeVersion(a, False)) is None
    assert codeversion.resumed_commits(both, codeversion.CodeVersion("c" * 40, False))[
        tags.COMMITS] == f"{a} {b} {'c' * 40}"
    # No code version on one side: nothing to compare, no claim.
    assert codeversion.resumed_commits({}, codeversion.CodeVersion(a, False)) is None
    assert codeversion.resumed_commits({tags.GIT_COMMIT: a}, None) is None


def test_a_sweep_resumed_at_another_commit_says_so_in_one_line_and_tags_the_parent(
        tmp_path, capsys):
    """resume.reopen_parent on a real store: the parent was made at commit `0...0`; this
    checkout is at another."""
    if codeversion.code_version() is None:
        pytest.skip("this project is not a git checkout here: no code version to compare")
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    exp_id = client.create_experiment("sweeplab")
    old = "0" * 40
    parent = client.create_run(exp_id, tags={tags.ROLE: tags.ROLE_SWEEP, tags.GIT_COMMIT: old,
                                             tags.SWEEP_DIR: str(tmp_path / "sweep")})
    client.set_terminated(parent.info.run_id, "FAILED")
    capsys.readouterr()  # MLflow's lines about creating the store
    resume.reopen_parent(client, client.get_run(parent.info.run_id))
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("sweeplab: warning: sweep run "), err
    assert f"ran at commit {old[:12]} and resumes at " in err[0]
    reopened = client.get_run(parent.info.run_id).data.tags
    assert reopened[tags.CODE_CHANGED] == tags.TRUE
    assert reopened[tags.COMMITS] == f"{old} {codeversion.code_version().commit}"
    assert reopened[tags.GIT_COMMIT] == old  # the parent keeps the commit it was made at


def test_a_run_from_a_git_checkout_carries_its_commit(tmp_path):
    """A real single run of a copy of this project, committed in a fresh repository."""
    copy = tmp_path / "project"
    for name in ("runner", "models", "hydra_plugins", "conf"):
        shutil.copytree(ROOT / name, copy / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    make_repo(copy)  # commits code.py; the copied project is then added
    git(copy, "add", ".")
    git(copy, "commit", "-q", "-m", "the project")
    head = git(copy, "rev-parse", "HEAD")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    env = dict(cli_env(tmp_path), PYTHONPATH=str(copy))
    done = subprocess.run([sys.executable, "-m", "runner", "-m", "model=mlp", "model.hidden=[8]",
                           "train.steps=4", "train.eval_every=2", "train.eval_size=20",
                           f"mlflow.tracking_uri={uri}", f"hydra.sweep.dir={tmp_path}/sweep"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("sweeplab").experiment_id])
    assert len(runs) == 2  # the sweep's parent and its job
    for run in runs:
        assert run.data.tags[tags.GIT_COMMIT] == head
        assert run.data.tags[tags.GIT_DIRTY] == tags.FALSE
    assert os.path.isdir(copy / ".git")
