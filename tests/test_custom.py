"""`model=custom` and `dataset=custom` (docs/your-model.md): a user's Keras factory and array
loader by `module:function`, from the user's own folder and config folder.

The example project (examples/digits) sweeps from a copy in another folder, through
`python -m runner` and through a `sweeplab`-like script; every check of the user's code (before
TensorFlow, runner.config) and of what it returns (after loading or building) is one
ConfigError line naming the key, exit 2 through the CLI.
"""
import importlib
import logging
import math
import shutil
import subprocess
import sys
import textwrap
import uuid

import numpy as np
import pytest

import models
from conftest import ROOT, children_of, cli_env, compose_cfg, run_cli, runs_of
from runner import data
from runner.config import ConfigError, validate
from runner.data import DataInfo

EXAMPLE = ROOT / "examples" / "digits"
# What pip writes for the `sweeplab` console script: its folder, not the cwd, is sys.path[0].
CONSOLE_SCRIPT = ("import sys\nfrom runner.cli import main\nif __name__ == '__main__':\n"
                  "    sys.exit(main())\n")
TINY = ("train.steps=40", "train.eval_every=20")


def custom_cfg(*overrides):
    """The real config with tests/custom_parts.py's factory and loader, then `overrides`."""
    return compose_cfg("model=custom", "model.factory=custom_parts:dense", "dataset=custom",
                       "dataset.loader=custom_parts:blobs", *overrides)


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """write(source) -> the name of a new module in the working directory (as a user's file
    next to where they run sweeplab); sys.path and the cwd are restored afterwards."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))

    def write(source):
        name = f"user_{uuid.uuid4().hex[:10]}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        importlib.invalidate_caches()  # the file is newer than the import system's listing
        return name
    return write


@pytest.fixture
def project(tmp_path):
    """A copy of examples/digits: a user's project folder, outside the checkout."""
    folder = tmp_path / "digits"
    shutil.copytree(EXAMPLE, folder, ignore=shutil.ignore_patterns("outputs", "__pycache__"))
    return folder


def one_error_line(done, option):
    errors = [line for line in done.stderr.splitlines() if line.startswith("sweeplab: error:")]
    assert done.returncode == 2, done.stderr[-3000:]
    assert len(errors) == 1 and errors[0].startswith(f"sweeplab: error: {option}: "), errors
    assert "Traceback" not in done.stderr + done.stdout
    return errors[0]


# ---------------------------------------------------------------- the example, end to end

def test_the_example_sweeps_from_its_own_folder(project, store):
    sweep = ["-m", "--config-dir", "conf", "experiment=digits_lr_clip", "seed=0", *TINY,
             f"hydra.sweep.dir={project / 'sweep'}"]
    done = run_cli(sweep, project, store)
    assert done.returncode == 0, done.stderr[-3000:]
    client, runs = runs_of(store, experiment="digits")
    children = children_of(runs)
    assert len(children) == 6  # 3 lr x 2 clipping, seed fixed on the command line
    for name, run in children.items():
        assert run.info.status == "FINISHED", name
        assert run.data.params["model.factory"] == "digits_model:mlp"
        assert run.data.params["model.kwargs.hidden"] == "[64]"
        assert run.data.tags["dataset.source"] == "custom:digits_data:load"
        assert run.data.tags["outcome"] in ("ok", "collapsed", "diverged")
        for metric in ("val_loss", "val_acc", "test_loss", "test_acc"):
            assert math.isfinite(run.data.metrics[metric]), (name, metric)
        steps = client.get_metric_history(run.info.run_id, "val_loss")
        assert [m.step for m in steps] == [0, 20, 40]
    best = max(children.values(), key=lambda r: r.data.metrics["test_acc"])
    assert best.data.metrics["test_acc"] > 0.5  # 40 steps of 32 digits: far above 1/10
    assert "sweep report:" in done.stderr + done.stdout

    # Resume finds the sweep from its folder: every job finished, nothing to do.
    resume = subprocess.run([sys.executable, "-m", "runner", "resume", str(project / "sweep")],
                            cwd=project, env=cli_env(project), capture_output=True, text=True,
                            timeout=300)
    assert resume.returncode == 0 and "nothing to resume" in resume.stdout, resume.stderr


def test_the_stacked_launcher_trains_custom_jobs_in_its_workers(project, store):
    # Its worker processes import the user's modules from the same folder; the example's MLP
    # is built from stackable layers, so the two jobs share one graph.
    done = run_cli(["-m", "--config-dir", "conf", "experiment=digits_lr_clip",
                    "hydra/launcher=stacked", "hydra.launcher.n_workers=1", "seed=0",
                    "optimizer.lr=1.0", *TINY], project, store)
    assert done.returncode == 0, done.stderr[-3000:]
    children = children_of(runs_of(store, experiment="digits")[1])
    assert sorted(r.data.params["clipping.name"] for r in children.values()) == [
        "global_norm", "none"]
    for run in children.values():
        assert run.info.status == "FINISHED"
        assert run.data.tags["sweeplab.launcher"] == "stacked"
        assert run.data.tags["sweeplab.stacked"] == "2"
        assert math.isfinite(run.data.metrics["test_acc"])


def test_the_sweeplab_script_imports_from_the_working_directory(project, store, tmp_path):
    # Under the console script the cwd is not on sys.path; hydra.searchpath finds conf/.
    script = tmp_path / "bin" / "sweeplab"
    script.parent.mkdir()
    script.write_text(CONSOLE_SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), "hydra.searchpath=[file://conf]", "model=custom",
         "model.factory=digits_model:convnet", "++model.kwargs.filters=4", "dataset=digits",
         *TINY, f"mlflow.tracking_uri={store}"],
        cwd=project, env=cli_env(project), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    _, (run,) = runs_of(store)
    assert run.info.status == "FINISHED"
    assert run.data.params["model.kwargs.filters"] == "4"
    assert run.data.params["dataset.loader"] == "digits_data:load"
    assert math.isfinite(run.data.metrics["test_acc"])


def test_help_lists_custom_and_the_users_own_options(project):
    done = subprocess.run([sys.executable, "-m", "runner", "--config-dir", "conf",
                           "experiment=digits_lr_clip", "--help"], cwd=project,
                          env=cli_env(project), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    text = done.stdout
    model = text[text.index("\nmodel\n"):text.index("\noptimizer\n")]
    dataset = text[text.index("\ndataset\n"):text.index("\nhydra/job_logging\n")]
    assert "  custom " in model and "  digits_mlp* " in model and "  digits_convnet " in model
    assert "  custom " in dataset and "  digits* " in dataset
    assert "  digits_lr_clip* " in text


def test_a_users_option_named_like_one_of_sweeplabs_is_one_line(project):
    # Hydra reads sweeplab's conf/ first: the user's conf/model/mlp.yaml would never be read.
    (project / "conf" / "model" / "mlp.yaml").write_text(
        "# Mine.\ndefaults: [custom, _self_]\nfactory: digits_model:mlp\n")
    done = run_cli(["--config-dir", "conf", "model=mlp", "dataset=digits"], project)
    assert "rename yours, e.g. model=my_mlp" in one_error_line(done, "model=mlp")


# ---------------------------------------------------------------- checks through the CLI

def test_a_missing_module_is_one_line_before_tensorflow(tmp_path):
    done = run_cli(["model=custom", "model.factory=nowhere:build"], tmp_path)
    line = one_error_line(done, "model.factory")
    assert "no module 'nowhere'" in line and "PYTHONPATH" in line


def test_the_import_checks_do_not_load_tensorflow(tmp_path):
    # sweeplab itself imports nothing heavy to check a factory (the user's module may).
    (tmp_path / "light.py").write_text("def build(input_shape, num_classes):\n    pass\n")
    script = textwrap.dedent(f"""
        import sys
        from hydra import compose, initialize_config_dir
        from runner.config import register_configs, validate
        register_configs()
        with initialize_config_dir(config_dir={str(ROOT / 'conf')!r}, version_base='1.3'):
            validate(compose('config', overrides=['model=custom', 'model.factory=light:build',
                                                  'dataset=custom',
                                                  'dataset.loader=custom_parts:blobs']))
        print('heavy', sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))
    """)
    env = cli_env(tmp_path)
    env["PYTHONPATH"] = f"{ROOT}:{ROOT / 'tests'}"
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "heavy []" in done.stdout


def test_bad_arrays_are_one_line_through_the_cli_and_leave_no_run(tmp_path, store):
    (tmp_path / "bad_data.py").write_text(
        "import numpy as np\n"
        "def load():\n"
        "    x = np.zeros((20, 3), np.float32)\n"
        "    return x, np.arange(20) % 4, x, np.full(20, 7)\n")
    done = run_cli(["model=mlp", "model.hidden=[4]", "dataset=custom",
                    "dataset.loader=bad_data:load", "dataset.num_classes=4", *TINY],
                   tmp_path, store)
    line = one_error_line(done, "dataset.loader")
    assert "labels up to 7 for dataset.num_classes=4" in line
    assert not (tmp_path / "mlflow.db").exists() or not [
        r for r in runs_of(store)[1] if r.info.status == "FINISHED"]


# ---------------------------------------------------------------- import-path checks (validate)

@pytest.mark.parametrize("overrides, message", [
    (["model.factory=???"], r"^model\.factory: not set \(model=custom calls your own function\)"
                            r"; e\.g\. model\.factory=my_model:build"),
    (["model.factory=custom_parts"], r"^model\.factory: 'custom_parts' is not module:function"),
    (["model.factory=models.mlp:build"], r"^model\.factory: 'models' is the name of one of "
                                         r"sweeplab's own packages"),
    (["dataset.val_fraction=???"], r"^dataset\.val_fraction: not set \(\?\?\?\); set it"),
    (["model.factory=no_such_module:build"], r"^model\.factory: no module 'no_such_module' in "),
    (["model.factory=custom_parts:densee"],
     r"^model\.factory: module custom_parts \(.*custom_parts\.py\) has no 'densee'; its "
     r"functions: blobs, convnet, dense, dropout$"),
    (["model.factory=custom_parts:np"], r"^model\.factory: custom_parts:np is not a function "
                                        r"\(it is of type module\)"),
    (["model.factory=custom_parts:blobs"], r"^model\.factory: custom_parts:blobs\(n_train=60.*"
                                           r"takes no 'input_shape'"),
    (["++model.kwargs.widht=3"], r"^model\.kwargs: custom_parts:dense\(input_shape, "
                                 r"num_classes, hidden=8\) got an unexpected keyword argument "
                                 r"'widht' \(called with input_shape, num_classes, widht\); "
                                 r"add a keyword with \+\+model\.kwargs\.NAME=VALUE"),
    (["dataset.loader=???"], r"^dataset\.loader: not set \(dataset=custom calls your own "
                             r"function\); e\.g\. dataset\.loader=my_data:load"),
    (["dataset.loader=no_such_module:load"], r"^dataset\.loader: no module 'no_such_module'"),
    (["dataset.loader=custom_parts:load"], r"^dataset\.loader: module custom_parts .* has no "
                                           r"'load'"),
    (["++dataset.kwargs.size=3"], r"^dataset\.kwargs: custom_parts:blobs\(.*\) got an "
                                  r"unexpected keyword argument 'size'"),
    (["dataset.num_classes=1"], r"^dataset\.num_classes: must be >= 2 or null, got 1"),
    (["dataset.val_fraction=0"], r"^dataset\.val_fraction: must be in \(0, 1\)"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_validate_checks_the_users_functions(overrides, message):
    with pytest.raises(ConfigError, match=message) as error:
        validate(custom_cfg(*overrides))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("group, key", [("dataset", "loader"), ("model", "factory")])
def test_renaming_another_option_custom_says_to_pick_the_option(group, key):
    with pytest.raises(ConfigError, match=rf"^{group}\.name: custom is an option of its own "
                                          rf"\(with {group}\.{key}\); pick it with "
                                          rf"{group}=custom, e\.g\. {group}\.{key}="):
        validate(compose_cfg(f"{group}.name=custom"))


def test_validate_accepts_the_users_functions_and_kwargs():
    validate(custom_cfg("++model.kwargs.hidden=16", "++dataset.kwargs.classes=4"))
    # A custom model on a built-in dataset, a built-in model on custom arrays.
    validate(compose_cfg("model=custom", "model.factory=custom_parts:dense", "dataset=mnist_5k"))
    validate(compose_cfg("model=mlp", "dataset=custom", "dataset.loader=custom_parts:blobs"))


@pytest.mark.parametrize("source, message", [
    ("def build(input_shape, num_classes:\n    pass\n",
     r"^model\.factory: importing user_\w+ raised SyntaxError: .*user_\w+\.py, line 1\); fix "),
    ("import no_such_dependency\n",
     r"^model\.factory: importing user_\w+ failed \(ModuleNotFoundError: No module named "
     r"'no_such_dependency'\); install what it imports$"),
    ("raise RuntimeError('no GPU here')\n",
     r"^model\.factory: importing user_\w+ raised RuntimeError: no GPU here; fix "),
    ("build = 3\n", r"^model\.factory: user_\w+:build is not a function \(it is of type "
                   r"int\); name a function"),
    ("def build(shape, classes):\n    pass\n", r"^model\.factory: user_\w+:build\(shape, "
                                               r"classes\) takes no 'input_shape'"),
])
def test_a_broken_user_module_is_one_line(user_module, source, message):
    name = user_module(source)
    with pytest.raises(ConfigError, match=message) as error:
        validate(custom_cfg(f"model.factory={name}:build"))
    assert "\n" not in str(error.value)


def test_the_factory_is_found_in_the_working_directory(user_module):
    name = user_module("def build(input_shape, num_classes, **kwargs):\n    pass\n")
    validate(custom_cfg(f"model.factory={name}:build", "++model.kwargs.anything=1"))


# ---------------------------------------------------------------- arrays (data.load)

def load_returning(user_module, body, *overrides):
    name = user_module(f"import numpy as np\n\ndef load():\n{textwrap.indent(body, '    ')}\n")
    cfg = custom_cfg(f"dataset.loader={name}:load", *overrides)
    validate(cfg)
    return data.load(cfg.dataset, seed=0)


X = "x = np.zeros((10, 4), np.float32); y = np.arange(10) % 3\n"


@pytest.mark.parametrize("body, message", [
    ("return {'x': 1}", r"returned dict, not 4 arrays; return \(x_train, y_train, x_test, "
                        r"y_test\)"),
    (X + "return x, y, x", r"returned 3 values, not 4 arrays"),
    (X + "return x, y, x, None", r"returned only one of x_test, y_test"),
    (X + "return x, y[:9], x, y", r"returned 10 x_train but 9 y_train; each input needs its "
                                  r"label"),
    (X + "x[3, 1] = np.nan\nreturn x, y, x, y",
     r"returned x_train with NaN or inf in 1 examples \(the first is #3\)"),
    (X + "t = x.copy(); t[5:7] = np.inf\nreturn x, y, t, y",
     r"returned x_test with NaN or inf in 2 examples \(the first is #5\)"),
    (X + "return x, y.astype(np.float32), x, y",
     r"returned y_train of dtype float32; labels must be integer class indices"),
    (X + "return x, np.eye(3)[y].astype(int), x, y",
     r"returned y_train of shape \(10, 3\); labels must be class indices \[examples\], e\.g\. "
     r"y_train\.argmax\(axis=1\)"),
    (X + "return x[:, 0], y, x, y", r"returned x_train of shape \(10,\); inputs must be "
                                    r"\[examples, \.\.\.\]"),
    (X + "return x.astype(str), y, x, y", r"returned x_train of dtype <U32; inputs must be "
                                          r"real numbers"),
    (X + "return x, y - 1, x, y", r"returned labels down to -1; labels must be class indices"),
    (X + "return x, y, x[:, :2], y", r"returned x_train of shape \(10, 4\) but x_test of "
                                     r"shape \(10, 2\)"),
    (X + "return x, y * 0, x, y * 0", r"returned one class only"),
    (X + "return x[:1], y[:1], x, y", r"returned 1 training examples; a validation split "
                                      r"needs at least 2"),
])
def test_bad_arrays_are_one_line_naming_the_loader(user_module, body, message):
    with pytest.raises(ConfigError, match=r"^dataset\.loader: user_\w+:load " + message) as err:
        load_returning(user_module, body)
    assert "\n" not in str(err.value)


def test_labels_beyond_dataset_num_classes(user_module):
    with pytest.raises(ConfigError, match=r"labels up to 2 for dataset\.num_classes=2; labels "
                                          r"must be 0\.\.1, or set dataset\.num_classes=3"):
        load_returning(user_module, X + "return x, y, x, y", "dataset.num_classes=2")


def test_custom_arrays_split_like_mnist():
    cfg = custom_cfg()
    splits = data.load(cfg.dataset, seed=0)
    x_train, y_train, x_test, y_test = __import__("custom_parts").blobs()
    assert splits.info == DataInfo(input_shape=(4,), num_classes=3,
                                   source="custom:custom_parts:blobs")
    assert (len(splits.train.y), len(splits.val.y)) == (54, 6)  # val_fraction 0.1 of 60
    np.testing.assert_array_equal(splits.test.x, x_test)
    np.testing.assert_array_equal(splits.test.y, y_test)
    for split in splits.train, splits.val, splits.test:
        assert split.x.dtype == np.float32 and split.y.dtype == np.int32
        assert not split.x.flags.writeable
    # Train and val together are the loader's training arrays, cut by the seed.
    rows = np.concatenate([splits.train.x, splits.val.x])
    assert sorted(map(tuple, rows)) == sorted(map(tuple, x_train))
    again, other = data.load(cfg.dataset, seed=0), data.load(cfg.dataset, seed=1)
    assert again is splits
    assert not np.array_equal(other.val.x, splits.val.x)


def test_the_loader_runs_once_per_process_and_gets_its_kwargs(user_module):
    name = user_module("""
        import numpy as np
        calls = []

        def load(n=30, shift=0.0):
            calls.append((n, shift))
            x = np.arange(n * 2, dtype=np.float64).reshape(n, 2) + shift
            return x, np.arange(n) % 2, None, None
    """)
    for seed in (0, 1, 2):
        for fraction in ("0.1", "0.2"):
            cfg = custom_cfg(f"dataset.loader={name}:load", f"dataset.val_fraction={fraction}",
                             f"seed={seed}")
            splits = data.load(cfg.dataset, seed)
    cfg = custom_cfg(f"dataset.loader={name}:load", "++dataset.kwargs.n=50")
    bigger = data.load(cfg.dataset, 0)
    assert sys.modules[name].calls == [(30, 0.0), (50, 0.0)]
    # No test arrays: test_fraction (0.2) of the training arrays is held out, then validation.
    assert (len(bigger.test.y), len(bigger.val.y), len(bigger.train.y)) == (10, 4, 36)
    assert splits.info.input_shape == (2,) and splits.info.num_classes == 2


def test_dataset_num_classes_may_exceed_the_labels_seen():
    splits = data.load(custom_cfg("dataset.num_classes=5").dataset, 0)
    assert splits.info.num_classes == 5


# ---------------------------------------------------------------- models (models.build)

INFO = DataInfo(input_shape=(8, 8, 1), num_classes=10, source="test")


def build_with(user_module, source, *overrides, info=INFO):
    name = user_module("import keras\nfrom keras import layers\n\n" + textwrap.dedent(source))
    cfg = custom_cfg(f"model.factory={name}:build", *overrides)
    validate(cfg)
    return models.build(cfg.model, info)


def test_the_factory_gets_shape_classes_and_kwargs():
    cfg = custom_cfg("++model.kwargs.hidden=5")
    validate(cfg)
    model = models.build(cfg.model, DataInfo(input_shape=(4,), num_classes=3, source="test"))
    assert model.count_params() == (4 * 5 + 5) + (5 * 3 + 3)
    assert tuple(model(np.zeros((7, 4), np.float32)).shape) == (7, 3)


def test_a_subclassed_model_without_an_input_is_built(user_module):
    model = build_with(user_module, """
        class Net(keras.Model):
            def __init__(self, classes):
                super().__init__()
                self.flat, self.out = layers.Flatten(), layers.Dense(classes)

            def call(self, x):
                return self.out(self.flat(x))

        def build(input_shape, num_classes):
            return Net(num_classes)
    """)
    assert model.count_params() == 64 * 10 + 10  # weights exist once build returns


@pytest.mark.parametrize("source, message", [
    ("def build(input_shape, num_classes):\n    return None\n",
     r"returned NoneType, not a keras\.Model; return keras\.Model\(inputs, logits\)"),
    ("def build(input_shape, num_classes):\n"
     "    return keras.Sequential([keras.Input(input_shape), layers.Flatten(),\n"
     "                             layers.Dense(num_classes + 1)])\n",
     r"model outputs shape \(batch, 11\) but the dataset has 10 classes; its output must be "
     r"\(batch, 10\)"),
    ("def build(input_shape, num_classes):\n"
     "    return keras.Sequential([keras.Input(input_shape), layers.Dense(num_classes)])\n",
     r"model outputs shape \(batch, 8, 8, 10\) but the dataset has 10 classes"),
    ("def build(input_shape, num_classes):\n"
     "    return keras.Sequential([keras.Input((64,)), layers.Dense(num_classes)])\n",
     r"model cannot take a batch of the dataset's inputs, shape \(2, 8, 8, 1\) \(ValueError: "
     r".*\); build it for input_shape=\(8, 8, 1\)$"),
    ("def build(input_shape, num_classes):\n"
     "    x = keras.Input(input_shape)\n"
     "    f = layers.Flatten()(x)\n"
     "    return keras.Model(x, [layers.Dense(num_classes)(f), layers.Dense(1)(f)])\n",
     r"model has 2 outputs"),
])
def test_a_factory_that_does_not_return_logits_is_one_line(user_module, source, message):
    with pytest.raises(ConfigError, match=r"^model\.factory: user_\w+:build('s)? " + message) \
            as error:
        build_with(user_module, source)
    assert "\n" not in str(error.value)


def test_a_softmax_output_is_warned_about(user_module, caplog):
    with caplog.at_level(logging.WARNING, logger="models.custom"):
        build_with(user_module, """
            def build(input_shape, num_classes):
                return keras.Sequential([keras.Input(input_shape), layers.Flatten(),
                                         layers.Dense(num_classes, activation="softmax")])
        """)
    assert "applies softmax" in caplog.text
