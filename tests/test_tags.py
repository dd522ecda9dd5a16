"""runner/tags.py is the one place a tag is spelt: no module under runner/ or hydra_plugins/
writes or searches for a tag by a literal of its own."""
import ast
import re
from pathlib import Path

from runner import tags

ROOT = Path(__file__).resolve().parent.parent
TAGS_FILE = ROOT / "runner" / "tags.py"
# A tag key, alone or inside a search string (tags.`sweeplab.role` = ...).
TAG_LIKE = re.compile(r"(?:^|tags\.`?)(sweeplab\.[a-z_]+|mlflow\.(?:parentRunId|source\.\w+))")
# Names that start like a tag but are not tags: logger names and the sweep dir's file.
NOT_TAGS = {"sweeplab.steps", "sweeplab.progress", "sweeplab.json"}


def _string_constants(path: Path):
    """(line, text) of every string literal in a module, docstrings left out."""
    tree = ast.parse(path.read_text(), str(path))
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                and id(node) not in docstrings):
            yield node.lineno, node.value


def test_no_tag_is_spelt_outside_tags_py():
    found = []
    for path in sorted([*(ROOT / "runner").rglob("*.py"), *(ROOT / "hydra_plugins").rglob("*.py")]):
        if path == TAGS_FILE:
            continue
        for line, text in _string_constants(path):
            for match in TAG_LIKE.finditer(text):
                if match.group(1) not in NOT_TAGS:
                    found.append(f"{path.relative_to(ROOT)}:{line}: {match.group(1)}")
    assert found == [], "use runner/tags.py:\n" + "\n".join(found)


def test_the_scan_sees_a_tag_literal(tmp_path):
    """The scan above is not vacuous: it flags a key and a search string, not a docstring."""
    module = tmp_path / "module.py"
    module.write_text('"""Mentions sweeplab.role in prose."""\n'
                      'KEY = "sweeplab.role"\n'
                      'QUERY = f"tags.`sweeplab.sweep_dir` = \'{1}\'"\n')
    hits = [m.group(1) for _, text in _string_constants(module)
            for m in TAG_LIKE.finditer(text)]
    assert hits == ["sweeplab.role", "sweeplab.sweep_dir"]


def test_tags_py_imports_nothing():
    tree = ast.parse(TAGS_FILE.read_text())
    assert not [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]


def test_tag_keys_are_distinct():
    keys = {name: value for name, value in vars(tags).items()
            if name.isupper() and isinstance(value, str) and "." in value}
    assert len(set(keys.values())) == len(keys), keys
    assert tags.GIT_COMMIT == "mlflow.source.git.commit"  # MLflow's own, shown in its UI
    assert tags.PARENT_RUN == "mlflow.parentRunId"
