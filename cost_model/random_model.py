"""The baseline: uniform random scores, same interface as the learned model."""

from __future__ import annotations

import json
from typing import Sequence

import numpy as np

from ..compiler.task import Task
from ..search.measure_types import Candidate, MeasureResult


class RandomCostModel:
    def __init__(self, *, seed: int = 0):
        self.seed = seed
        self._rng = np.random.default_rng(seed)

    def update(self, task: Task, candidates: Sequence[Candidate], results: Sequence[MeasureResult]) -> None:
        return None  # learns nothing

    def predict(self, task: Task, candidates: Sequence[Candidate]) -> np.ndarray:
        return self._rng.uniform(0.0, 1.0, len(candidates))

    def save(self, path: str) -> None:
        with open(path, "w") as f:
            json.dump({"model": "random", "seed": self.seed}, f)

    def load(self, path: str) -> None:
        with open(path) as f:
            self.seed = int(json.load(f).get("seed", 0))
        self._rng = np.random.default_rng(self.seed)

    def pretrain_from_database(self, db, target_key: str) -> int:
        return 0
