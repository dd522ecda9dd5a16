"""scikit-learn's bundled 8x8 digits as sweeplab's `dataset=custom` loads them: no download.

load() -> (x_train, y_train, x_test, y_test): images float32 [N, 8, 8, 1] in [0, 1], labels
int 0..9. The test split is fixed (test_size, split_seed); sweeplab cuts the validation split
from the training arrays with each run's seed.
"""
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split


def load(test_size=0.2, split_seed=0):
    digits = load_digits()  # 1797 images, pixel values 0..16, from sklearn's own files
    x = (digits.images / 16.0).astype(np.float32)[..., None]
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_size, random_state=split_seed, stratify=y)
    return x_train, y_train, x_test, y_test
