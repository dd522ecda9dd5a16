"""A finished job's outcome: `ok`, `diverged` or `collapsed`. Pure Python, no TensorFlow.

`diverged`: a loss or gradient went NaN/Inf and the run stopped (the training loop decides).
`collapsed`: the run stayed finite but learned nothing. For a classifier, either
  - its final validation loss is >= 0.95 x its step-0 validation loss (the loss barely moved), or
  - its test accuracy is <= 1.5 / num_classes (at most 1.5 x chance: 0.15 for 10 classes).
Either alone suffices. The accuracy test uses the test split, not the last validation
window: 100 validation examples are too noisy (a dead lr-0.05 LeNet scored 0.17 on one), and
the loss test alone misses a run whose step-0 loss was huge (bad init) and fell to chance.
For a language model (perplexity, no accuracy): its final valid perplexity is >= vocab_size ** 0.95,
i.e. its per-word loss ln(perplexity) is >= 0.95 x ln(vocab_size), the loss of a uniform guess,
which is where a freshly initialised LM starts. The rule is the classifier's loss test with
the uniform guess as step 0 (the LM logs no step-0 validation). An unclipped PTB LSTM that
blew up to perplexity 1e78 and limped back to 8.7e4 (docs/studies.md, 004) is collapsed.
A rule whose inputs are missing (None) or NaN is not applied, nor the loss test on an
infinite loss; an infinite perplexity does count as collapsed (worse than any guess).
"""
import math
from typing import Optional

from runner import tags

# The `outcome` tag's values for a run that trained to its end.
OK, DIVERGED, COLLAPSED = tags.OUTCOME_OK, tags.OUTCOME_DIVERGED, tags.OUTCOME_COLLAPSED
LOSS_RATIO = 0.95  # final / step-0 loss at or above this: the loss barely moved
CHANCE_FACTOR = 1.5  # test accuracy at or below this many times chance: learned nothing


def _finite(value) -> bool:
    return value is not None and math.isfinite(value)


def why_collapsed(first_val_loss: Optional[float], final_val_loss: Optional[float],
                  test_acc: Optional[float], num_classes: Optional[int]) -> Optional[str]:
    """Why a finite classifier run counts as collapsed (one line), or None if it learned."""
    if (_finite(first_val_loss) and _finite(final_val_loss) and first_val_loss > 0
            and final_val_loss >= LOSS_RATIO * first_val_loss):
        return (f"final val_loss {final_val_loss:.4g} >= {LOSS_RATIO} x step-0 val_loss "
                f"{first_val_loss:.4g}")
    if _finite(test_acc) and num_classes and test_acc <= CHANCE_FACTOR / num_classes:
        return f"test_acc {test_acc:.4g} <= {CHANCE_FACTOR} / {num_classes} classes"
    return None


def classify(diverged: bool, first_val_loss: Optional[float] = None,
             final_val_loss: Optional[float] = None, test_acc: Optional[float] = None,
             num_classes: Optional[int] = None) -> str:
    """A classifier job's outcome tag: `diverged` wins, then `collapsed`, else `ok`.

    first_val_loss is the validation loss at step 0 (before any update), final_val_loss the
    last one, test_acc the accuracy on the test split (None when not evaluated).
    """
    if diverged:
        return DIVERGED
    return COLLAPSED if why_collapsed(first_val_loss, final_val_loss, test_acc,
                                      num_classes) else OK


def why_lm_collapsed(final_valid_perplexity: Optional[float],
                     vocab_size: int) -> Optional[str]:
    """Why a finite language-model run counts as collapsed, or None if it learned."""
    if final_valid_perplexity is None or vocab_size < 2:
        return None
    # An infinite perplexity (exp overflow of a finite loss) is worse than any guess.
    if math.isnan(final_valid_perplexity):
        return None
    limit = vocab_size ** LOSS_RATIO
    if final_valid_perplexity >= limit:
        return (f"final valid_perplexity {final_valid_perplexity:.4g} >= vocab_size {vocab_size}"
                f" ** {LOSS_RATIO} = {limit:.4g} (uniform guess: {vocab_size})")
    return None


def classify_language_model(diverged: bool, final_valid_perplexity: Optional[float],
                            vocab_size: int) -> str:
    """A language-model job's outcome tag: `diverged`, `collapsed` or `ok` (rule above)."""
    if diverged:
        return DIVERGED
    return COLLAPSED if why_lm_collapsed(final_valid_perplexity, vocab_size) else OK
