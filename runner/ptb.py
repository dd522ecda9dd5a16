"""Penn Treebank, word level, as Zaremba et al.'s reader (seed 004): ids and batches.

`load(cfg.dataset, vocab_size)` reads ptb.{train,valid,test}.txt from `dataset.data_dir`:
words split on whitespace, `<eos>` after every line, ids by train frequency (ties by word).
`batches(ids, batch_size, num_steps)` is the reference ptb_producer layout. Never downloads.
"""
import collections
import os
from dataclasses import dataclass
from typing import Dict, List, Tuple

import numpy as np

from runner.config import PTB_WHERE, ConfigError

FILES = {"train": "ptb.train.txt", "valid": "ptb.valid.txt", "test": "ptb.test.txt"}
EOS, UNK = "<eos>", "<unk>"


@dataclass(frozen=True)
class PTBInfo:
    vocab_size: int  # actual vocabulary (<= model.vocab_size); the model's softmax width
    source: str  # logged as the MLflow tag `dataset.source`


@dataclass(frozen=True)
class PTB:
    train: np.ndarray  # int32 token ids
    valid: np.ndarray
    test: np.ndarray
    vocab: List[str]  # id -> word
    info: PTBInfo


def read_words(path: str) -> List[str]:
    """Whitespace-split words with `<eos>` closing every line (the reference reader's stream)."""
    try:
        with open(path, encoding="utf-8") as f:
            return [word for line in f for word in (*line.split(), EOS)]
    except UnicodeDecodeError as err:  # a binary or damaged copy; PTB is plain ASCII
        raise ConfigError(f"dataset.data_dir: {path} is not UTF-8 text ({err.reason} at byte "
                          f"{err.start}); re-copy or re-download the file") from err


def build_vocab(train: List[str], vocab_size: int, others=()) -> Dict[str, int]:
    """word -> id, by train frequency then word, like the reference `_build_vocab`.

    At most `vocab_size` words. `<unk>` takes the last id when the train words do not fit or
    valid/test (`others`) hold words train lacks, unless it is already in the vocabulary
    (PTB has `<unk>` in its text and exactly 10k words, so its ids equal the reference's).
    """
    counts = collections.Counter(train)
    words = sorted(counts, key=lambda w: (-counts[w], w))
    kept = set(words[:vocab_size])
    needs_unk = len(words) > vocab_size or any(w not in kept for part in others for w in part)
    if needs_unk and UNK not in kept:
        words = [w for w in words if w != UNK][:vocab_size - 1] + [UNK]
    return {w: i for i, w in enumerate(words[:vocab_size])}


def to_ids(words: List[str], word_to_id: Dict[str, int]) -> np.ndarray:
    unk = word_to_id.get(UNK, -1)
    return np.array([word_to_id.get(w, unk) for w in words], dtype=np.int32)


def load(cfg, vocab_size: int = 10000) -> PTB:
    """The three splits as id arrays, from `cfg.data_dir` (validated: set, vocab_size >= 2);
    a ConfigError says where to get missing files.

    Read once per process (runner.data.read_ahead reads it before TensorFlow loads; the task
    then takes it from memory); changed files are read again. The arrays are read-only.
    """
    directory = os.path.abspath(os.path.expanduser(cfg.data_dir))
    if not os.path.isdir(directory):
        raise ConfigError(f"dataset.data_dir: {directory} does not exist; " + PTB_WHERE)
    paths = [os.path.join(directory, name) for name in FILES.values()]
    missing = [name for name, path in zip(FILES.values(), paths) if not os.path.isfile(path)]
    if missing:
        raise ConfigError(f"dataset.data_dir: {directory} lacks {', '.join(missing)}; " + PTB_WHERE)
    key = (directory, vocab_size, *[(os.stat(p).st_mtime_ns, os.stat(p).st_size) for p in paths])
    if key not in _loaded:
        corpus = _read(directory, vocab_size)
        for ids in (corpus.train, corpus.valid, corpus.test):
            ids.setflags(write=False)
        _loaded[key] = corpus
    return _loaded[key]


_loaded = {}  # (folder, vocab_size, files' mtimes and sizes) -> PTB, for `load`


def _read(directory: str, vocab_size: int) -> PTB:
    words = {split: read_words(os.path.join(directory, name)) for split, name in FILES.items()}
    word_to_id = build_vocab(words["train"], vocab_size, (words["valid"], words["test"]))
    ids = {split: to_ids(w, word_to_id) for split, w in words.items()}
    vocab = sorted(word_to_id, key=word_to_id.get)
    info = PTBInfo(vocab_size=len(vocab), source=f"ptb:{directory}")
    return PTB(ids["train"], ids["valid"], ids["test"], vocab, info)


def batches(ids: np.ndarray, batch_size: int, num_steps: int) -> Tuple[np.ndarray, np.ndarray]:
    """(inputs, targets), each [epoch_size, batch_size, num_steps]: reference ptb_producer.

    The stream is cut into `batch_size` rows of len // batch_size consecutive words; window i
    is columns [i*num_steps, (i+1)*num_steps) of every row, its targets one column later. So
    row b of window i+1 continues row b of window i: the LSTM state carries across windows.
    """
    batch_len = len(ids) // batch_size
    epoch_size = (batch_len - 1) // num_steps
    if epoch_size <= 0:
        raise ConfigError(f"train.batch_size/model.num_steps: {len(ids)} words are too few for "
                          f"batch {batch_size} x {num_steps} steps; use smaller values")
    data = np.asarray(ids[:batch_size * batch_len], dtype=np.int32).reshape(batch_size, batch_len)
    span = epoch_size * num_steps

    def windows(offset):
        return data[:, offset:offset + span].reshape(batch_size, epoch_size, num_steps) \
            .transpose(1, 0, 2).copy()

    return windows(0), windows(1)


def eval_batches(ids: np.ndarray, batch_size: int, num_steps: int):
    """(inputs, targets, weights) like `batches`, but covering every prediction of every row.

    The last window is padded (weight 0) instead of dropped, so with carried state the result
    does not depend on `num_steps`: batch_size=1 scores all len-1 words exactly as the
    reference's test run (batch 1, 1 step at a time), just in fewer, longer calls.
    """
    batch_len = len(ids) // batch_size
    if batch_len < 2:
        raise ConfigError(f"train.eval_batch_size: {batch_size} streams leave fewer than 2 of "
                          f"the {len(ids)} words per stream; use a smaller value")
    data = np.asarray(ids[:batch_size * batch_len], dtype=np.int32).reshape(batch_size, batch_len)
    count = -(-(batch_len - 1) // num_steps)
    span = count * num_steps
    x = np.zeros((batch_size, span), np.int32)
    y = np.zeros((batch_size, span), np.int32)
    w = np.zeros((batch_size, span), np.float32)
    x[:, :batch_len - 1], y[:, :batch_len - 1], w[:, :batch_len - 1] = data[:, :-1], data[:, 1:], 1

    def windows(a):
        return a.reshape(batch_size, count, num_steps).transpose(1, 0, 2).copy()

    return windows(x), windows(y), windows(w)
