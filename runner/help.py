"""`python -m runner --help`: every config group's options, the presets and the launchers, one
line each. The line is the option's YAML file's first comment line (after a `# @package`
directive), so a new option documents itself and the help never lists one that is gone.

Hydra prints `hydra.help.template` (conf/config.yaml), which calls `${sweeplab_groups:}`: the
resolver below, registered before Hydra composes. Reads files only; imports nothing heavy.
"""
import os
from typing import Dict, List, Mapping, Sequence

from omegaconf import OmegaConf

CONF_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf")
PRESETS, LAUNCHERS = "experiment", "hydra/launcher"
MAX_SUMMARY = 80  # characters: the help's lines stay within 100 columns
RESOLVER = "sweeplab_groups"
# Launchers that come from installed Hydra plugins, not from a YAML file under conf/.
PLUGIN_LAUNCHERS = {"stacked": "Jobs that share a graph train side by side (the default).",
                    "basic": "Jobs one after another in this process (Hydra's default).",
                    "joblib": "Jobs in parallel processes here (hydra.launcher.n_jobs=2)."}


def summary(path: str) -> str:
    """The first comment line of a YAML file, without `#`; '' when it has none."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("#") and not line.startswith("# @package"):
                return line.lstrip("#").strip()
    return ""


def option_summaries(conf_dir: str = CONF_DIR) -> Dict[str, Dict[str, str]]:
    """{group: {option: summary}} for every group folder under conf/ (e.g. `model`,
    `hydra/launcher`), groups and options sorted by name."""
    groups: Dict[str, Dict[str, str]] = {}
    for folder, _, files in sorted(os.walk(conf_dir)):
        options = {name[:-len(".yaml")]: summary(os.path.join(folder, name))
                   for name in sorted(files) if name.endswith(".yaml")}
        group = os.path.relpath(folder, conf_dir).replace(os.sep, "/")
        if options and group != ".":
            groups[group] = options
    return groups


def _block(title: str, options: Mapping[str, str], chosen: str, width: int) -> List[str]:
    return [title] + [f"  {(name + ('*' if name == chosen else '')).ljust(width)}{text}"
                      for name, text in options.items()]


def groups_help(choices: Mapping[str, str], conf_dir: str = CONF_DIR,
                extra_dirs: Sequence[str] = ()) -> str:
    """The help's middle: each group with its options (`*` = chosen by this command line), then
    the presets, then the launchers. `extra_dirs`: a user's config folders (--config-dir,
    hydra.searchpath), whose options join sweeplab's; on a clash sweeplab's file is the one
    Hydra reads, so its line is the one shown."""
    groups = option_summaries(conf_dir)
    for folder in extra_dirs:
        for group, options in option_summaries(folder).items():
            groups[group] = dict(sorted({**options, **groups.get(group, {})}.items()))
    groups = dict(sorted(groups.items()))
    presets = groups.pop(PRESETS, {})
    launchers = {**PLUGIN_LAUNCHERS, **groups.pop(LAUNCHERS, {})}
    width = 3 + max(len(name) for options in (*groups.values(), presets, launchers)
                    for name in options)
    lines = ["== Config groups: GROUP=OPTION (* = this command's choice) =="]
    for group, options in groups.items():
        lines += _block(group, options, str(choices.get(group) or ""), width)
    lines += [""] + _block("== Presets: experiment=NAME (its file has the commands) ==",
                           presets, str(choices.get(PRESETS) or ""), width)
    lines += [""] + _block("== Launchers for -m sweeps: hydra/launcher=NAME ==", launchers,
                           str(choices.get(LAUNCHERS) or ""), width)
    # string.Template runs over the help after OmegaConf: keep a `$` in a summary literal.
    return "\n".join(lines).replace("$", "$$")


def user_conf_dirs(sources) -> List[str]:
    """The folders of `hydra.runtime.config_sources` other than sweeplab's own conf/."""
    return [str(source.path) for source in sources or ()
            if source.schema == "file" and source.provider != "main"
            and os.path.isdir(str(source.path))]


def _resolve_groups(*, _root_) -> str:
    choices = OmegaConf.select(_root_, "hydra.runtime.choices", default=None) or {}
    sources = OmegaConf.select(_root_, "hydra.runtime.config_sources", default=None)
    return groups_help(choices, extra_dirs=user_conf_dirs(sources))


def register_help_resolver() -> None:
    """Make `${sweeplab_groups:}` available to hydra.help.template."""
    if not OmegaConf.has_resolver(RESOLVER):
        OmegaConf.register_new_resolver(RESOLVER, _resolve_groups)
