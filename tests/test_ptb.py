"""Seed 004: the PTB reader and batching, the LSTM LM's carried state, and a tiny end-to-end run.

Every corpus here is written by the test; nothing is downloaded.
"""
import os
from types import SimpleNamespace

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from conftest import tiny_corpus
from runner import ptb
from runner.config import ConfigError, register_configs, validate
from runner.tasks import language_model
from runner.tracking import JobContext

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
register_configs()


def write_corpus(directory, train, valid, test):
    os.makedirs(directory, exist_ok=True)
    for name, text in (("ptb.train.txt", train), ("ptb.valid.txt", valid),
                       ("ptb.test.txt", test)):
        with open(os.path.join(directory, name), "w") as f:
            f.write(text)
    return str(directory)


def compose_cfg(*overrides):
    with initialize_config_dir(config_dir=os.path.join(ROOT, "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides))


# ---------------------------------------------------------------- reader

def test_reader_vocab_by_frequency_then_word_with_eos_per_line(tmp_path):
    # Lines start and end with a space, as in PTB. Counts: <eos> 3, a 3, b 2, c 1, d 1.
    d = write_corpus(tmp_path, " b a c \n a b \n d a \n", " a b \n", " c d \n")
    corpus = ptb.load(SimpleNamespace(data_dir=d), vocab_size=10000)
    assert corpus.vocab == ["<eos>", "a", "b", "c", "d"]  # ties broken by the word itself
    assert corpus.train.tolist() == [2, 1, 3, 0, 1, 2, 0, 4, 1, 0]
    assert corpus.valid.tolist() == [1, 2, 0]
    assert corpus.test.tolist() == [3, 4, 0]
    assert corpus.train.dtype == np.int32
    assert corpus.info.vocab_size == 5 and corpus.info.source == f"ptb:{d}"


def test_vocab_cap_and_unseen_words_map_to_unk(tmp_path):
    d = write_corpus(tmp_path, " b a c \n a b \n d a \n", " a z \n", " c \n")
    corpus = ptb.load(SimpleNamespace(data_dir=d), vocab_size=3)
    # The 2 most frequent words, then <unk> for everything else (c, d, and z from valid).
    assert corpus.vocab == ["<eos>", "a", "<unk>"]
    assert corpus.train.tolist() == [2, 1, 2, 0, 1, 2, 0, 2, 1, 0]
    assert corpus.valid.tolist() == [1, 2, 0]
    # Uncapped, a word only valid/test use still needs <unk>: it takes the last id.
    corpus = ptb.load(SimpleNamespace(data_dir=d), vocab_size=10000)
    assert corpus.vocab == ["<eos>", "a", "b", "c", "d", "<unk>"]
    assert corpus.valid.tolist() == [1, 5, 0]


def test_unk_already_in_the_text_keeps_its_frequency_rank(tmp_path):
    # PTB writes <unk> itself; it then ranks like any word and no id is added.
    d = write_corpus(tmp_path, " <unk> a <unk> \n b <unk> \n", " a \n", " b \n")
    corpus = ptb.load(SimpleNamespace(data_dir=d), vocab_size=10000)
    assert corpus.vocab == ["<unk>", "<eos>", "a", "b"]


@pytest.mark.parametrize("present", [(), ("ptb.train.txt", "ptb.valid.txt")])
def test_missing_files_raise_one_line_naming_data_dir_and_the_source(tmp_path, present):
    for name in present:
        (tmp_path / name).write_text(" a \n")
    for data_dir in ([str(tmp_path)] if present else [str(tmp_path / "nowhere")]):
        with pytest.raises(ConfigError) as err:
            ptb.load(SimpleNamespace(data_dir=data_dir))
        message = str(err.value)
        assert message.startswith("dataset.data_dir:") and "\n" not in message
        assert "simple-examples" in message and "Mikolov" in message
    if present:
        assert "ptb.test.txt" in message and "ptb.train.txt" not in message


def test_an_unset_data_dir_is_rejected_before_tensorflow_with_the_source():
    with pytest.raises(ConfigError) as err:
        validate(compose_cfg("experiment=ptb_lstm"))  # the preset leaves data_dir to the user
    message = str(err.value)
    assert message.startswith("dataset.data_dir: not set") and "\n" not in message
    assert "simple-examples" in message and "Mikolov" in message


def test_a_vocab_cap_below_2_is_rejected_before_tensorflow(tmp_path):
    d = write_corpus(tmp_path, " a b \n", " a \n", " b \n")
    with pytest.raises(ConfigError, match=r"^model\.vocab_size: must be >= 2, got 1; e\.g\."):
        validate(compose_cfg("experiment=ptb_lstm", f"dataset.data_dir={d}",
                             "model.vocab_size=1"))


@pytest.mark.parametrize("raw", [
    b" a b \n \xff\xfe c \n",  # a stray byte that is no UTF-8
    "caf\u00e9 \n".encode("latin-1"),  # another encoding's text
    bytes(range(256)),  # a binary file
])
def test_a_file_that_is_not_utf8_is_one_line_naming_it(tmp_path, raw):
    d = write_corpus(tmp_path, " a b \n", " a \n", " b \n")
    (tmp_path / "ptb.valid.txt").write_bytes(raw)
    with pytest.raises(ConfigError) as err:
        ptb.load(SimpleNamespace(data_dir=d))
    message = str(err.value)
    assert message.startswith("dataset.data_dir: ") and "\n" not in message
    assert str(tmp_path / "ptb.valid.txt") in message and "not UTF-8" in message
    assert "re-copy or re-download the file" in message


# ---------------------------------------------------------------- batching

def reference_ptb_iterator(raw_data, batch_size, num_steps):
    """The write-up's reader.ptb_iterator, transcribed."""
    raw_data = np.array(raw_data, dtype=np.int32)
    batch_len = len(raw_data) // batch_size
    data = np.zeros([batch_size, batch_len], dtype=np.int32)
    for i in range(batch_size):
        data[i] = raw_data[batch_len * i:batch_len * (i + 1)]
    epoch_size = (batch_len - 1) // num_steps
    for i in range(epoch_size):
        x = data[:, i * num_steps:(i + 1) * num_steps]
        y = data[:, i * num_steps + 1:(i + 1) * num_steps + 1]
        yield x, y


def test_batches_by_hand():
    # 21 words, batch 2: rows 0..9 and 10..19 (word 20 dropped); (10 - 1) // 3 = 3 windows.
    x, y = ptb.batches(np.arange(21), batch_size=2, num_steps=3)
    assert x.shape == y.shape == (3, 2, 3)
    assert x[0].tolist() == [[0, 1, 2], [10, 11, 12]]
    assert y[0].tolist() == [[1, 2, 3], [11, 12, 13]]
    assert x[1].tolist() == [[3, 4, 5], [13, 14, 15]]  # row b continues row b: state carries
    assert x[2].tolist() == [[6, 7, 8], [16, 17, 18]]
    assert y[2].tolist() == [[7, 8, 9], [17, 18, 19]]


@pytest.mark.parametrize("n, batch, steps", [(1000, 20, 20), (997, 7, 5), (50, 1, 1)])
def test_batches_equal_the_reference_iterator(n, batch, steps):
    ids = np.random.default_rng(n).integers(0, 100, n)
    x, y = ptb.batches(ids, batch, steps)
    expected = list(reference_ptb_iterator(ids, batch, steps))
    assert len(x) == len(expected)
    for i, (ex, ey) in enumerate(expected):
        np.testing.assert_array_equal(x[i], ex)
        np.testing.assert_array_equal(y[i], ey)


def test_too_short_a_corpus_is_a_config_error():
    with pytest.raises(ConfigError, match="train.batch_size"):
        ptb.batches(np.arange(30), batch_size=20, num_steps=20)


def test_eval_batches_score_every_next_word_once():
    ids = np.arange(23)
    x, y, w = ptb.eval_batches(ids, batch_size=1, num_steps=5)
    assert x.shape == (5, 1, 5) and w.sum() == 22  # all len-1 predictions, last window padded
    pairs = [(a, b) for a, b, k in zip(x.ravel(), y.ravel(), w.ravel()) if k]
    assert pairs == [(i, i + 1) for i in range(22)]
    x, y, w = ptb.eval_batches(ids, batch_size=2, num_steps=4)  # rows 0..10, 11..21
    assert w.sum() == 2 * 10 and x[0, 1].tolist() == [11, 12, 13, 14]


# ---------------------------------------------------------------- model and state

def lm_cfg(**changes):
    base = dict(name="lstm_lm", size="test", layers=2, hidden=8, num_steps=4, keep_prob=0.5,
                init_scale=0.3, vocab_size=10000)
    return OmegaConf.create({**base, **changes})


def test_initial_weights_are_uniform_in_init_scale_and_lstm_biases_zero():
    import keras

    import models

    keras.utils.set_random_seed(0)
    model = models.build(lm_cfg(init_scale=0.05, hidden=32), SimpleNamespace(vocab_size=50))
    for v in model.trainable_variables:
        values = np.asarray(v.numpy())
        if v.path.startswith("lstm") and v.path.endswith("bias"):
            assert not values.any(), v.path  # BasicLSTMCell: zero bias, forget_bias=0
        else:
            assert np.abs(values).max() <= 0.05 and np.abs(values).max() > 0.04, v.path
    assert model.get_layer("softmax").units == 50  # the corpus's vocabulary, not the cap


def test_state_carried_over_two_halves_equals_the_whole_sequence():
    import keras
    import tensorflow as tf

    import models

    keras.utils.set_random_seed(1)
    info = SimpleNamespace(vocab_size=30)
    half, whole = models.build(lm_cfg(num_steps=4), info), models.build(lm_cfg(num_steps=8), info)
    whole.set_weights(half.get_weights())
    tokens = tf.constant(np.random.default_rng(0).integers(0, 30, (3, 8)), tf.int32)
    zeros = [tf.zeros((3, 8))] * 4
    expected, *final = whole([tokens, *zeros], training=False)
    first, *states = half([tokens[:, :4], *zeros], training=False)
    second, *states = half([tokens[:, 4:], *states], training=False)
    np.testing.assert_allclose(tf.concat([first, second], 1), expected, atol=1e-5)
    for got, want in zip(states, final):
        np.testing.assert_allclose(got, want, atol=1e-5)
    reset, *_ = half([tokens[:, 4:], *zeros], training=False)  # without the state: different
    assert np.abs(reset.numpy() - second.numpy()).max() > 1e-3


def test_evaluation_carries_state_so_the_window_length_does_not_matter():
    import keras

    import models
    from runner.tasks.language_model import make_mean_loss, perplexity

    keras.utils.set_random_seed(2)
    info = SimpleNamespace(vocab_size=20)
    ids = np.random.default_rng(1).integers(0, 20, 101).astype(np.int32)
    results = []
    for steps in (1, 7, 25):
        cfg = lm_cfg(num_steps=steps)
        model = models.build(cfg, info)
        if results:
            model.set_weights(weights)
        weights = model.get_weights()
        results.append(perplexity(make_mean_loss(model, cfg, ids, streams=1)()))
    assert results == pytest.approx([results[0]] * 3, rel=1e-5)
    assert 1 < results[0] < 40


# ---------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One MLflow store for the module: a fresh sqlite file costs seconds of migrations."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"


def tiny_run_cfg(tmp_path, store, *extra):
    # Each test gets its own MLflow experiment (named after its tmp folder) in the shared store.
    return compose_cfg("experiment=ptb_lstm", f"dataset.data_dir={tiny_corpus(tmp_path / 'ptb')}",
                       f"mlflow.tracking_uri={store}", f"mlflow.experiment_name={tmp_path.name}",
                       "model.hidden=16", "model.init_scale=0.5", "model.num_steps=5",
                       "train.batch_size=4", "train.epochs=2", "train.eval_every=25",
                       "train.log_every=1", *extra)


def only_run(cfg):
    client = MlflowClient(tracking_uri=cfg.mlflow.tracking_uri)
    experiment = client.get_experiment_by_name(cfg.mlflow.experiment_name)
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    return client, runs[0]


def test_two_epochs_on_a_tiny_corpus_track_perplexities_and_speed(tmp_path, store):
    cfg = tiny_run_cfg(tmp_path, store)
    valid = language_model.run(cfg, JobContext())
    client, run = only_run(cfg)
    assert run.info.status == "FINISHED" and run.data.tags["outcome"] == "ok"
    assert run.data.params["model.name"] == "lstm_lm" and run.data.params["train.epochs"] == "2"
    epoch_size = int(run.data.params["derived.steps"]) // 2
    assert epoch_size == (len(ptb.load(cfg.dataset).train) // 4 - 1) // 5

    def history(key):
        return [(m.step, m.value) for m in
                sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)]

    train, valid_ppl, wps = (history(k) for k in
                             ("train_perplexity", "valid_perplexity", "words_per_second"))
    assert [s for s, _ in train] == [s for s, _ in valid_ppl] == [s for s, _ in wps] == [1, 2]
    assert valid == pytest.approx(valid_ppl[-1][1])
    # the report's ranking metric: the same evaluation, as a log
    assert [v for _, v in history("valid_loss")] == pytest.approx([np.log(v) for _, v in valid_ppl])
    vocab = ptb.load(cfg.dataset).info.vocab_size  # 18: uniform guessing scores 18
    assert train[1][1] < train[0][1] < vocab  # perplexity falls
    assert valid_ppl[1][1] < 0.5 * vocab
    assert all(v > 0 for _, v in wps)
    assert 1 < run.data.metrics["test_perplexity"] < 0.5 * vocab
    assert len(history("train_loss")) == 2 * epoch_size  # one point per step
    for key in ("lr", "grad_norm", "grad_norm_clipped"):
        assert len(history(key)) == 2 * epoch_size, key
    assert max(v for _, v in history("grad_norm_clipped")) <= 5.0 + 1e-4
    assert {v for _, v in history("lr")} == {1.0}  # decay starts after epoch 5
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert {"plots/perplexity.png", "plots/grad_norms.png"} <= plots


def test_divergence_stops_the_run_and_marks_it(tmp_path, store):
    cfg = tiny_run_cfg(tmp_path, store, "optimizer.lr=1e38", "clipping=none")
    assert language_model.run(cfg, JobContext()) == float("inf")
    client, run = only_run(cfg)
    assert run.info.status == "FINISHED" and run.data.tags["outcome"] == "diverged"
    # Caught inside the compiled loop (not only by the end-of-epoch validation).
    diverged_at = run.data.metrics["diverged_at_step"]
    assert 1 <= diverged_at < int(run.data.params["derived.steps"]) // 2
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train_loss")]
    assert max(steps) == diverged_at - 1  # the NaN/Inf step is neither applied nor logged
    assert "test_perplexity" not in run.data.metrics


def test_the_language_model_needs_the_ptb_dataset():
    cfg = compose_cfg("experiment=ptb_lstm", "dataset=mnist_5k")
    with pytest.raises(ConfigError, match="^dataset.name: .*dataset=ptb"):
        validate(cfg)  # before TensorFlow loads


def test_the_language_model_trains_on_cross_entropy_only(tmp_path):
    cfg = compose_cfg("experiment=ptb_lstm", f"dataset.data_dir={tmp_path}", "train.loss=mse")
    with pytest.raises(ConfigError, match="^train.loss: .*use train.loss=cross_entropy"):
        validate(cfg)


def test_same_seed_same_losses_with_dropout():
    import models
    from runner import engine
    from runner.nets import KerasNet

    cfg = compose_cfg("experiment=ptb_lstm", "model.hidden=8", "model.num_steps=5",
                      "model.keep_prob=0.5", "train.batch_size=3", "train.eval_every=6")
    ids = np.random.default_rng(0).integers(0, 15, 200).astype(np.int32)
    x, y = ptb.batches(ids, cfg.train.batch_size, cfg.model.num_steps)

    def losses(seed):
        engine.seed_everything(seed)
        net = KerasNet(models.build(cfg.model, SimpleNamespace(vocab_size=15)))
        state = language_model.CarriedState(cfg.model, cfg.train.batch_size)
        train_steps = engine.make_train_steps(
            net, engine.make_update(net, [cfg], steps_per_epoch=len(x), steps=100),
            language_model.Windows(x, y),
            language_model.objective(cfg.train, state, cfg.model.num_steps), capacity=6)
        (interval,) = train_steps(6)
        return interval.series["train_loss"].tolist()

    first = losses(3)
    assert first == losses(3) and first != losses(4)
