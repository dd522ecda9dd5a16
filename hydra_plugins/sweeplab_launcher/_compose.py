"""Each job's config, composed once per config-group choice instead of once per job.

Hydra composes every job of a sweep from scratch: defaults list, YAML files, schemas, then the
job's overrides (~0.15-0.25 s a job, in the launching process, before anything trains; 140
jobs spent half a minute here). The jobs of a sweep mostly differ in plain values
(`optimizer.lr=0.005`, `seed=3`), which do not change what is composed, only what is set
after it. So a job's config is its *base* (the composition of its config-group and Hydra
overrides, done once per distinct choice) with its value overrides applied by the same
`OmegaConf.update(cfg, key, value, merge=True)` Hydra's loader uses, and the `hydra` fields
Hydra derives from the overrides (`overrides.task`, `job.override_dirname`) set as Hydra sets
them. Anything else (`+key=`, `++key=`, `~key`, `group@package=`, a key that names a config
group) is composed by Hydra itself. tests/test_compose.py holds the two equal, override by
override, for the presets' sweeps.
"""
import copy
from typing import Dict, List, Optional, Sequence, Tuple

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType
from omegaconf import DictConfig, OmegaConf


def _dirname_fn():
    """Hydra's own `job.override_dirname` formatter (None if this Hydra has moved it)."""
    try:
        from hydra._internal.config_loader_impl import get_overrides_dirname
    except ImportError:  # pragma: no cover - a Hydra without it composes every job in full
        return None
    return get_overrides_dirname


class Composer:
    """`load_sweep_config(master, overrides)` as Hydra's loader answers it, from cached bases."""

    def __init__(self, loader) -> None:
        self._loader = loader
        self._parser = OverridesParser.create()
        self._bases: Dict[Tuple[str, ...], DictConfig] = {}
        self._dirname = _dirname_fn()
        self.full, self.fast = 0, 0  # how many jobs took which path (tests read them)

    def load_sweep_config(self, master_config: DictConfig,
                          sweep_overrides: Sequence[str]) -> DictConfig:
        overrides = list(sweep_overrides)
        split = self._split(master_config, overrides)
        if split is None:
            self.full += 1
            return self._loader.load_sweep_config(master_config, overrides)
        base_lines, values, parsed = split
        base = self._bases.get(tuple(base_lines))
        if base is None:
            base = self._loader.load_sweep_config(master_config, base_lines)
            self._bases[tuple(base_lines)] = base
        config = copy.deepcopy(base)
        try:
            for override in values:  # Hydra's ConfigLoaderImpl._apply_overrides_to_config
                OmegaConf.update(config, override.key_or_group, override.value(), merge=True)
        except Exception:  # a key that is not there, a bad type: Hydra's own error says it
            self.full += 1
            return self._loader.load_sweep_config(master_config, overrides)
        self._derive_hydra_fields(master_config, config, parsed)
        self.fast += 1
        return config

    def _split(self, master_config, overrides: List[str]
               ) -> Optional[Tuple[List[str], List[Override], List[Override]]]:
        """(the base's override lines, the value overrides, all parsed), or None when this
        job must be composed in full."""
        if self._dirname is None:
            return None
        parsed = self._parser.parse_overrides(overrides=overrides)
        groups = set(master_config.hydra.runtime.choices.keys())
        base_lines, values = [], []
        for override in parsed:
            if override.is_hydra_override() or override.key_or_group in groups:
                base_lines.append(override.input_line)
            elif (override.type == OverrideType.CHANGE and override.package is None
                  and not override.is_sweep_override()):
                values.append(override)
            else:  # +key, ++key, ~key, group@package, ...
                return None
        if not values:  # nothing to save: the base would be this very job
            return None
        return base_lines, values, parsed

    def _derive_hydra_fields(self, master_config, config: DictConfig,
                             parsed: List[Override]) -> None:
        """What Hydra's loader derives from the overrides, for this job's overrides."""
        task = [o for o in parsed if not o.is_hydra_override()]
        job = config.hydra.job
        config.hydra.overrides.task = [o.input_line for o in task]
        job.override_dirname = self._dirname(
            overrides=task, kv_sep=job.config.override_dirname.kv_sep,
            item_sep=job.config.override_dirname.item_sep,
            exclude_keys=job.config.override_dirname.exclude_keys)
        OmegaConf.copy_cache(from_config=master_config, to_config=config)
