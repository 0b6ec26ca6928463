"""Side-by-side timing: interleaved repeats, medians, and each round's ratio (for the spread)."""
from __future__ import annotations

import statistics
import time
from typing import Callable, Dict, List

import torch


class Clock:
    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.name = "wall time (cuda synchronised)" if self.cuda else "process CPU time"

    def now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            return time.perf_counter()
        return time.process_time()


class Timings(dict):
    """Median seconds of each function (the dict itself); every round's times in ``rounds``."""

    def __init__(self, rounds: Dict[str, List[float]]):
        super().__init__({k: statistics.median(v) for k, v in rounds.items()})
        self.rounds = rounds

    def round_ratios(self, num: str, den: str) -> List[float]:
        """Quartiles (q1, median, q3) of ``num / den`` taken round by round: the spread of the figure."""
        ratios = [a / b for a, b in zip(self.rounds[num], self.rounds[den])]
        q1, q2, q3 = statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1 else ratios * 3
        return [round(q1, 4), round(q2, 4), round(q3, 4)]


def compare(clock: Clock, fns: Dict[str, Callable[[], None]], repeats: int, warmup: int) -> Timings:
    """Median time of each function, run interleaved after ``warmup`` rounds.

    The order rotates from round to round, so no function always runs first or after the same one.
    """
    times: Dict[str, List[float]] = {k: [] for k in fns}
    names = list(fns)
    for i in range(warmup + repeats):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            fn = fns[name]
            start = clock.now()
            fn()
            elapsed = clock.now() - start
            if i >= warmup:
                times[name].append(elapsed)
    return Timings(times)
