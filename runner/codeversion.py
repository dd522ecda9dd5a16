"""The code version a run was made with: MLflow's own `mlflow.source.git.commit` tag and a dirty
flag (tags.GIT_COMMIT, tags.GIT_DIRTY) on every run and every sweep's parent run.

Read from the git checkout that holds sweeplab's code, not from the working directory: the code
that trains is the code that runs, wherever the user starts it. Read once per process with
`git` (two subprocesses, a few milliseconds). Without a checkout (an installed package) there
is no code version and nothing is recorded; with one that `git` cannot read (git not
installed, a repository owned by another user, no commit yet) one warning says why, once per
process, and nothing is recorded: a run is never held up by its code version.

A resumed sweep whose code is at another commit than its parent run's prints one line and
marks the parent (tags.CODE_CHANGED, tags.COMMITS); each run carries its own commit.
"""
import functools
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Dict, Mapping, Optional

from runner import tags

log = logging.getLogger(__name__)

CODE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # holds runner/
GIT_SECONDS = 10.0  # a git that hangs (a network file system) is given up on after this long


@dataclass(frozen=True)
class CodeVersion:
    commit: str  # the full hash of HEAD
    dirty: bool  # tracked files changed, or files git does not ignore added, since that commit


def find_checkout(folder: str) -> Optional[str]:
    """The top of the git checkout holding `folder` (a `.git` folder, or a worktree's `.git`
    file), or None."""
    folder = os.path.abspath(folder)
    while True:
        if os.path.exists(os.path.join(folder, ".git")):
            return folder
        parent = os.path.dirname(folder)
        if parent == folder:
            return None
        folder = parent


def _git(top: str, *args: str) -> str:
    done = subprocess.run(["git", "-C", top, *args], capture_output=True, text=True,
                          timeout=GIT_SECONDS, check=False)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        raise RuntimeError(lines[-1] if lines else f"git {args[0]} exited {done.returncode}")
    return done.stdout.strip()


@functools.lru_cache(maxsize=None)
def code_version(folder: str = CODE_ROOT) -> Optional[CodeVersion]:
    """The commit and dirty flag of the checkout holding `folder`; None without one."""
    top = find_checkout(folder)
    if top is None:
        return None
    try:
        commit = _git(top, "rev-parse", "--verify", "HEAD")
        dirty = bool(_git(top, "status", "--porcelain"))
    except (OSError, subprocess.SubprocessError, RuntimeError) as err:
        reason = "git is not installed" if isinstance(err, FileNotFoundError) else str(err)
        log.warning("code version not recorded (tag %s): git cannot read %s: %s",
                    tags.GIT_COMMIT, top, reason)
        return None
    return CodeVersion(commit, dirty)


def version_tags(folder: str = CODE_ROOT) -> Dict[str, str]:
    """{tags.GIT_COMMIT: hash, tags.GIT_DIRTY: 'true' | 'false'}, or {} without a checkout."""
    version = code_version(folder)
    if version is None:
        return {}
    return {tags.GIT_COMMIT: version.commit,
            tags.GIT_DIRTY: tags.TRUE if version.dirty else tags.FALSE}


def resumed_commits(parent_tags: Mapping[str, str],
                    current: Optional[CodeVersion]) -> Optional[Dict[str, str]]:
    """The tags that mark a sweep resumed at another commit than its earlier runs, or None.

    The commits seen so far are the parent's tags.COMMITS (an earlier resume), else its own
    commit. None when the current commit is among them, or when either side has no code
    version (nothing to compare: no claim either way).
    """
    seen = (parent_tags.get(tags.COMMITS) or parent_tags.get(tags.GIT_COMMIT) or "").split()
    if current is None or not seen or current.commit in seen:
        return None
    return {tags.CODE_CHANGED: tags.TRUE, tags.COMMITS: " ".join([*seen, current.commit])}


def note_resume(client, parent) -> None:
    """On resuming the sweep of `parent` (an MLflow Run): if this code is at another commit,
    say so in one line on stderr and mark the parent run."""
    current = code_version()
    changed = resumed_commits(parent.data.tags, current)
    if changed is None:
        return
    for key, value in changed.items():
        client.set_tag(parent.info.run_id, key, value)
    before = changed[tags.COMMITS].split()[-2]
    print(f"sweeplab: warning: sweep run {parent.info.run_id} ran at commit {before[:12]} and "
          f"resumes at {current.commit[:12]}{' with uncommitted changes' if current.dirty else ''}"
          f": its runs mix code versions (each run's tag {tags.GIT_COMMIT}; the parent's "
          f"{tags.COMMITS})", file=sys.stderr, flush=True)
