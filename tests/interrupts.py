"""What the resume tests share: a callback that stops a sweep where a kill would."""

import jaxtune


class StopAt(jaxtune.SweepCallback):
    """Raise KeyboardInterrupt the ``nth`` time a chunk ends at ``step`` (an adaptive strategy's
    populations may pass the same step more than once)."""

    def __init__(self, step, nth=1):
        self.step, self.nth, self.seen = step, nth, 0

    def on_chunk(self, start, stop, history):
        if stop == self.step:
            self.seen += 1
            if self.seen == self.nth:
                raise KeyboardInterrupt
