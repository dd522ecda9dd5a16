"""README.md and docs/*.md: a short front door, links that resolve inside the repository, no
links outside it, make targets that exist, and every tag in the reference."""
import re
from pathlib import Path

import pytest

from runner import tags

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
LOCAL_HOSTS = ("localhost", "127.0.0.1")

# [text](target) and ![alt](target); the target ends at whitespace or ')'.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
URL = re.compile(r"\bhttps?://[^\s)>`'\"]*", re.IGNORECASE)
# `make X` in prose, or a command line starting with `make X` (also `UI_PORT=5001 make ui`).
MAKE = re.compile(r"(?:`|^)(?:[A-Z_]+=\S+\s+)*make\s+([a-z][\w-]*)", re.MULTILINE)
HOST = re.compile(r"https?://(?:[^@/\s]*@)?(\[[^\]]*\]|[^:/\s]*)", re.IGNORECASE)


def page_id(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_the_readme_is_a_front_door_not_a_manual():
    assert len(README.read_text().splitlines()) <= 160


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_relative_link_points_at_a_file_that_exists(page):
    missing = []
    for target in LINK.findall(page.read_text()):
        if target.startswith("#") or re.match(r"[a-z][a-z0-9+.-]*:", target, re.I):
            continue  # in-page anchors; schemes are the next test's business
        path = (page.parent / target.split("#", 1)[0]).resolve()
        if not path.exists() or ROOT not in (path, *path.parents):
            missing.append(target)
    assert not missing, f"{page_id(page)}: links to nothing in the repository: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_no_link_leaves_the_repository(page):
    outside = [url for url in URL.findall(page.read_text())
               if HOST.match(url).group(1).lower() not in LOCAL_HOSTS]
    assert not outside, f"{page_id(page)}: links outside the repository: {outside}"


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_make_target_named_exists(page):
    makefile = (ROOT / "Makefile").read_text()
    defined = set()
    for line in makefile.splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+(?:\s+[A-Za-z0-9_.-]+)*)\s*:(?!=)", line)
        if match:
            defined.update(match.group(1).split())
    named = set(MAKE.findall(page.read_text()))
    if page == README:
        assert {"run", "test"} <= named, "the README names its two commands"
    assert not named - defined, f"{page_id(page)} names make targets the Makefile lacks: " \
                                f"{named - defined}"


def test_every_tag_is_in_the_reference():
    reference = (ROOT / "docs" / "reference.md").read_text()
    names = {value for name, value in vars(tags).items()
             if name.isupper() and isinstance(value, str)}
    absent = sorted(name for name in names if f"`{name}`" not in reference
                    and f"={name}`" not in reference and f"`{name}=" not in reference)
    assert not absent, f"tags missing from docs/reference.md: {absent}"
