"""XGBoost cost model over our candidate features (features.py).

Two objectives, chosen by XGBConfig.objective:
  "rank"        rank:pairwise, one query group per task, label = normalized throughput
                (best cost / cost within the task, 0 for failures) in 1/16ths: learns only
                the order of candidates of the same task, which is all the search needs, and
                (the levels) not the order of pairs closer than measurement noise.
  "regression"  Ansor's: squared error on the normalized throughput, each sample weighted by
                its throughput (fast candidates matter, failures barely).
bench/cost_model_quality.py compares them on real measurements (bench/cost_model.md): "rank"
ranked better, on seen and on unseen tasks, so it is the default.

Online: `update` appends the measured batch to a buffer and retrains from scratch on the
whole buffer (2,400 samples: ~1 s on the busy 2-core box), so the labels of a task
are always normalized by its best cost so far. `pretrain_from_database` fills the buffer
from every stored record of a target, so a new tuning run starts with a useful model.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from ..compiler.task import Task
from ..errors import TilecraftError
from ..search.database import trace_hash
from ..search.measure_types import Candidate, MeasureResult
from .base import cost_of, database_batches, normalized_throughput
from .features import FEATURE_NAMES, FeatureExtractor

FORMAT = "tilecraft-xgb-cost-model/2"  # /2: the buffer keeps each sample's trace hash
FEATURES_ID = hashlib.sha256("\n".join(FEATURE_NAMES).encode()).hexdigest()[:16]


class CostModelError(TilecraftError):
    """A saved cost model cannot be loaded (wrong file, or features of another version)."""


@dataclass(frozen=True, kw_only=True)
class XGBConfig:
    objective: str = "rank"  # "rank" (rank:pairwise per task) | "regression" (throughput-weighted squared error)
    num_rounds: int = 100
    max_depth: int = 6
    eta: float = 0.2
    min_child_weight: float = 1.0
    subsample: float = 1.0
    colsample_bytree: float = 1.0
    max_bin: int = 64  # histogram bins per feature: training time grows with it, quality barely
    pairs_per_sample: int = 16  # rank: pairs sampled per candidate within its task
    rank_levels: int = 16  # rank: label = floor(levels x normalized throughput); 0 = the raw throughput
    min_weight: float = 0.05  # regression: failures and slow candidates still count this much
    min_samples: int = 8  # below this many measured candidates, predict uniform scores
    max_samples: int = 50_000  # the buffer keeps the newest
    nthread: int = 1  # the tuner's build/run workers share the cores; 2 OpenMP threads on a busy box run slower
    seed: int = 0

    def __post_init__(self):
        if self.objective not in ("rank", "regression"):
            raise ValueError(f"objective must be 'rank' or 'regression', not {self.objective!r}")


class XGBCostModel:
    def __init__(self, target, *, config: XGBConfig = XGBConfig(), extractor: FeatureExtractor | None = None):
        self.target = target
        self.config = config
        self.extractor = extractor or FeatureExtractor(target)
        self._booster = None
        self._keys: list[str] = []  # workload key of each buffered sample
        self._hashes: list[str] = []  # trace hash of each buffered sample: pretraining skips what it has
        self._rows: list[np.ndarray] = []
        self._costs: list[float] = []  # seconds, inf for failures

    @property
    def num_samples(self) -> int:
        return len(self._costs)

    @property
    def trained(self) -> bool:
        return self._booster is not None

    # ---- learning ---------------------------------------------------------------------------
    def update(self, task: Task, candidates: Sequence[Candidate], results: Sequence[MeasureResult]) -> None:
        self.add(task, candidates, results)
        self.retrain()

    def pretrain_from_database(self, db, target_key: str | None = None) -> int:
        """Learn from every record of `target_key` (default: this model's target) that the buffer does not
        hold yet (so a loaded model catches up with what other runs measured); returns the samples added.
        Retrains only when something was added (or nothing was trained yet)."""
        added = 0
        known = set(zip(self._keys, self._hashes))
        for task, candidates, results in database_batches(db, target_key or self.target.key):
            new = [(c, r) for c, r in zip(candidates, results) if (task.workload_key, trace_hash(c.trace_json)) not in known]
            if new:
                added += self.add(task, [c for c, _ in new], [r for _, r in new])
        if added or self._booster is None:
            self.retrain()
        return added

    def add(self, task: Task, candidates: Sequence[Candidate], results: Sequence[MeasureResult]) -> int:
        """Buffer a measured batch without retraining (update = add + retrain); returns the samples added."""
        if len(candidates) != len(results):
            raise ValueError(f"{len(candidates)} candidates but {len(results)} results")
        x = self.extractor.extract(task, candidates)
        added = 0
        for row, cand, result in zip(x, candidates, results):
            if np.isnan(row[0]):  # does not replay: nothing to learn from
                continue
            self._keys.append(task.workload_key)
            self._hashes.append(trace_hash(cand.trace_json))
            self._rows.append(row.astype(np.float32))
            self._costs.append(cost_of(result))
            added += 1
        excess = len(self._costs) - self.config.max_samples
        if excess > 0:
            del self._keys[:excess], self._hashes[:excess], self._rows[:excess], self._costs[:excess]
        return added

    def retrain(self) -> None:
        """Fit a fresh booster on the whole buffer (labels renormalized by each task's best so far)."""
        import xgboost as xgb

        cfg = self.config
        costs = np.asarray(self._costs)
        if len(costs) < cfg.min_samples or not np.isfinite(costs).any():
            self._booster = None
            return
        keys = np.asarray(self._keys)
        order = np.argsort(keys, kind="stable")  # XGBoost wants each query group contiguous
        keys, costs = keys[order], costs[order]
        x = np.stack(self._rows)[order]
        groups = np.unique(keys, return_inverse=True)[1]
        y = np.zeros(len(costs))
        for g in np.unique(groups):
            y[groups == g] = normalized_throughput(costs[groups == g])
        params = {
            "max_depth": cfg.max_depth, "eta": cfg.eta, "min_child_weight": cfg.min_child_weight,
            "subsample": cfg.subsample, "colsample_bytree": cfg.colsample_bytree, "nthread": cfg.nthread,
            "seed": cfg.seed, "tree_method": "hist", "max_bin": cfg.max_bin, "verbosity": 0,
        }
        if cfg.objective == "rank":
            params |= {"objective": "rank:pairwise", "lambdarank_pair_method": "mean",
                       "lambdarank_num_pair_per_sample": cfg.pairs_per_sample}
            label = np.floor(y * cfg.rank_levels) if cfg.rank_levels else y
            data = xgb.DMatrix(x, label=label, qid=groups)
        else:
            params |= {"objective": "reg:squarederror"}
            data = xgb.DMatrix(x, label=y, weight=np.maximum(y, cfg.min_weight))
        self._booster = xgb.train(params, data, num_boost_round=cfg.num_rounds)

    # ---- scoring ----------------------------------------------------------------------------
    def predict(self, task: Task, candidates: Sequence[Candidate]) -> np.ndarray:
        """Higher = predicted faster; 0 for every candidate before the model has learned; -inf if unreadable."""
        import xgboost as xgb

        x = self.extractor.extract(task, candidates)
        valid = ~np.isnan(x[:, 0]) if len(x) else np.zeros(0, bool)
        scores = np.full(len(candidates), -math.inf)
        scores[valid] = 0.0
        if self._booster is not None and valid.any():
            scores[valid] = self._booster.predict(xgb.DMatrix(x[valid].astype(np.float32)))
        return scores

    # ---- persistence ------------------------------------------------------------------------
    def save(self, path: str) -> None:
        """One .npz file: the booster, the training buffer (so online learning goes on) and the config."""
        meta = {"format": FORMAT, "features": FEATURES_ID, "config": asdict(self.config)}
        booster = np.frombuffer(bytes(self._booster.save_raw("ubj")), np.uint8) if self._booster else np.zeros(0, np.uint8)
        rows = np.stack(self._rows) if self._rows else np.zeros((0, len(FEATURE_NAMES)), np.float32)
        with open(path, "wb") as f:  # a file object: np.savez would append ".npz" to a bare path
            np.savez_compressed(f, meta=np.asarray(json.dumps(meta)), booster=booster, rows=rows,
                                costs=np.asarray(self._costs, np.float64), keys=np.asarray(self._keys, dtype=str),
                                hashes=np.asarray(self._hashes, dtype=str))

    def load(self, path: str) -> None:
        import xgboost as xgb

        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                booster, rows, costs, keys, hashes = z["booster"], z["rows"], z["costs"], z["keys"], z["hashes"]
        except (OSError, ValueError, KeyError) as e:
            raise CostModelError(f"{path}: not a saved tilecraft cost model ({e})") from None
        if meta.get("format") != FORMAT:
            raise CostModelError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}")
        if meta.get("features") != FEATURES_ID:
            raise CostModelError(f"{path}: saved with another feature set; retrain (pretrain_from_database)")
        self.config = XGBConfig(**meta["config"])
        self._rows = list(rows.astype(np.float32))
        self._costs = [float(c) for c in costs]
        self._keys = [str(k) for k in keys]
        self._hashes = [str(h) for h in hashes]
        self._booster = None
        if len(booster):
            self._booster = xgb.Booster(params={"nthread": self.config.nthread})
            self._booster.load_model(bytearray(booster.tobytes()))

    @classmethod
    def from_file(cls, path: str, target) -> "XGBCostModel":
        model = cls(target)
        model.load(path)
        return model
