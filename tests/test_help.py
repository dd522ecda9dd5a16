"""`python -m runner --help` lists every option of every group, every preset and every launcher
with its one-line description: the first comment line of its YAML file (runner/help.py).
A YAML file added without that line fails here."""
import re
import string
import subprocess
import sys

import pytest

from conftest import CONF_DIR, ROOT, cli_env
from runner import help as app_help

OPTION_FILES = sorted(p for p in CONF_DIR.rglob("*.yaml") if p.parent != CONF_DIR)


def _help(*overrides: str, cwd) -> str:
    done = subprocess.run([sys.executable, "-m", "runner", *overrides, "--help"], cwd=cwd,
                          env=cli_env(cwd), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.fixture(scope="module")
def default_help(tmp_path_factory) -> str:
    return _help(cwd=tmp_path_factory.mktemp("help"))


@pytest.mark.parametrize("path", OPTION_FILES, ids=lambda p: str(p.relative_to(CONF_DIR)))
def test_every_option_file_has_a_one_line_description(path):
    text = app_help.summary(str(path))
    assert text, (f"{path.relative_to(ROOT)}: add a first comment line saying what this "
                  f"option is (`--help` shows it)")
    assert len(text) <= app_help.MAX_SUMMARY, f"{path.name}: {len(text)} characters"


def test_help_lists_every_option_preset_and_launcher_with_its_description(default_help):
    assert len(OPTION_FILES) >= 30  # the groups, presets and launcher presets under conf/
    for path in OPTION_FILES:
        line = rf"^  {re.escape(path.stem)}\*?\s+{re.escape(app_help.summary(str(path)))}$"
        assert re.search(line, default_help, re.M), f"{path.relative_to(CONF_DIR)} not in --help"
    for name in app_help.PLUGIN_LAUNCHERS:
        assert re.search(rf"^  {name}\*?\s+\S", default_help, re.M)
    # Hydra's own listing would also show the schemas' internal groups; ours does not.
    assert "schema" not in default_help


def test_help_marks_the_choices_of_the_command_line(default_help, tmp_path):
    assert re.search(r"^  lenet\*\s", default_help, re.M)  # the defaults list's choices
    assert re.search(r"^  none\*\s+No clipping", default_help, re.M)
    assert re.search(r"^  stacked\*\s", default_help, re.M)  # the default for -m
    preset = _help("experiment=lenet_clip", "optimizer=sgd", cwd=tmp_path)
    assert re.search(r"^  lenet_clip\*\s", preset, re.M)
    assert re.search(r"^  value\*\s", preset, re.M)  # the preset picks clipping=value
    assert re.search(r"^  sgd\*\s", preset, re.M) and not re.search(r"^  adam\*", preset, re.M)


def test_descriptions_come_from_the_first_comment_line_and_keep_dollars(tmp_path):
    group = tmp_path / "optimizer"
    group.mkdir()
    (group / "fancy.yaml").write_text("name: fancy\n# Costs $5 a step.\n# More detail.\n")
    (group / "bare.yaml").write_text("name: bare\n")
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "study.yaml").write_text(
        "# @package _global_\n# A study.\nseed: 1\n")
    assert app_help.option_summaries(str(tmp_path)) == {
        "experiment": {"study": "A study."},
        "optimizer": {"bare": "", "fancy": "Costs $5 a step."}}
    # Hydra runs string.Template over the help, which turns `$$` back into `$`.
    text = string.Template(app_help.groups_help({"optimizer": "fancy"}, str(tmp_path)))
    assert re.search(r"^  fancy\*\s+Costs \$5 a step\.$", text.substitute(), re.M)


# ---------------------------------------------------------------- fast: nothing heavy loads

HEAVY = ("matplotlib", "mlflow", "tensorflow", "runner.report")


def _loaded_after(code: str, cwd) -> dict:
    """{module: loaded?} for HEAVY after running `code` in a fresh interpreter."""
    probe = (f"import sys\n{code}\n"
             f"print(*[m in sys.modules for m in {HEAVY!r}])")
    done = subprocess.run([sys.executable, "-c", probe], cwd=cwd, env=cli_env(cwd),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return dict(zip(HEAVY, [flag == "True" for flag in done.stdout.split()[-len(HEAVY):]]))


def test_importing_the_cli_loads_no_report_matplotlib_mlflow_or_tensorflow(tmp_path):
    assert _loaded_after("import runner.cli", tmp_path) == dict.fromkeys(HEAVY, False)


def test_help_prints_without_loading_them(tmp_path):
    code = ("sys.argv = ['sweeplab', '--help']\nimport runner.cli\n"
            "try:\n    runner.cli.hydra_app()\nexcept SystemExit:\n    pass")
    assert _loaded_after(code, tmp_path) == dict.fromkeys(HEAVY, False)
