"""Each closed option set is defined once, in runner.config; every dict that dispatches on
those names is keyed by exactly that set (a new option needs its code, and nothing else)."""
import pytest

import models
import models.init
import models.mlp
from runner import clipping, config, data, optim, regularizers
from runner.tasks import image

DISPATCH = [
    ("runner.clipping.MODES", clipping.MODES, config.CLIPPING_MODES),
    ("runner.regularizers.TERMS", regularizers.TERMS, config.REGULARIZERS),
    ("runner.optim.SCHEDULES", optim.SCHEDULES, config.LR_SCHEDULES),
    ("runner.optim.RULES", optim.RULES, config.OPTIMIZERS),
    ("models.MODELS", models.MODELS, config.MODELS),  # config.MODELS = MODEL_SCHEMAS' names
    ("models.init.KERNEL_INITS", models.init.KERNEL_INITS, config.INITS),
    ("models.mlp.ACTIVATIONS", models.mlp.ACTIVATIONS, config.ACTIVATIONS),
    ("runner.data.SOURCES", data.SOURCES, config.IMAGE_DATASETS),
    # Read-only use of the training loop's table (if it moves, this line follows it).
    ("runner.tasks.image.PER_EXAMPLE_LOSSES", image.PER_EXAMPLE_LOSSES, config.LOSSES),
]


@pytest.mark.parametrize("name, table, names", DISPATCH, ids=[d[0] for d in DISPATCH])
def test_dispatch_dict_is_keyed_by_its_config_set(name, table, names):
    assert set(table) == set(names), name
    assert len(names) == len(set(names)), "a config set lists a name twice"
