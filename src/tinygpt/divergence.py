"""A warning for a run whose training loss climbs far above what a model that knows nothing scores.

A model that guesses every token alike scores ln(vocab_size) (5.55 for bytes), and a fresh GPT starts
near it. A loss of several times that is no longer learning, though it stays finite, and so is not
stopped as a non-finite one is: the run goes on, with one warning the first time.
"""
from __future__ import annotations

import math
import warnings

from tinygpt.config import named

TIMES_THE_GUESS = 2.0


class DivergenceWatch:
    """Warns once, the first time a training loss exceeds TIMES_THE_GUESS x ln(vocab_size)."""

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size, self.guess, self.warned = vocab_size, math.log(vocab_size), False

    def check(self, iteration: int, loss: float) -> None:
        if self.warned or not loss > TIMES_THE_GUESS * self.guess:
            return
        self.warned = True
        warnings.warn(f"the training loss is {loss:.1f} at iteration {iteration}, far above the uniform guess "
                      f"ln({self.vocab_size}) = {self.guess:.2f}: the run is diverging; a lower learning rate "
                      f"({named('learning_rate')}) usually fixes it", stacklevel=2)


__all__ = ["DivergenceWatch", "TIMES_THE_GUESS"]
