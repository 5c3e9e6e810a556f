"""XGBoost cost model over our candidate features (features.py).

Two objectives, chosen by XGBConfig.objective:
  "rank"        rank:pairwise, one query group per task, label = normalized throughput
                (best cost / cost within the task, 0 for failures) on a log scale cut into 16
                levels (2^-6 .. 1): learns only the order of candidates of the same task, which
                is all the search needs, not the order of pairs closer than measurement noise,
                and (the log scale) the order among slow candidates as well as among fast ones.
                Each sampled pair pulls with RankNet's logistic gradient (`score_normalization` off).
  "regression"  Ansor's: squared error on the normalized throughput, each sample weighted by
                its throughput (fast candidates matter, failures barely).
bench/cost_model_quality.py compares them on real measurements (bench/cost_model.md): "rank"
ranked better, on seen and on unseen tasks, so it is the default. The labels come from the minimum
of each measurement's timed repeats (`label_cost`), and `ensemble` > 1 averages boosters trained
on row subsamples; the defaults are what ranked best there.

Online: `update` appends the measured batch to a buffer and retrains from scratch on the
whole buffer (18,000 samples: 9 s on one thread of the 2-core box), so the labels of a task
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

FORMAT = "tilecraft-xgb-cost-model/3"  # /2: the buffer keeps each sample's trace hash; /3: several boosters
FEATURES_ID = hashlib.sha256("\n".join(FEATURE_NAMES).encode()).hexdigest()[:16]


class CostModelError(TilecraftError):
    """A saved cost model cannot be loaded (wrong file, or features of another version)."""


@dataclass(frozen=True, kw_only=True)
class XGBConfig:
    objective: str = "rank"  # "rank" (rank:pairwise per task) | "regression" (throughput-weighted squared error)
    num_rounds: int = 200
    max_depth: int = 6
    eta: float = 0.1
    min_child_weight: float | None = None  # None: 3 for rank, 1 for regression (its samples weigh 0.05-1 each)
    subsample: float = 1.0
    colsample_bytree: float = 0.7
    max_bin: int = 64  # histogram bins per feature: training time grows with it, quality barely
    pairs_per_sample: int = 32  # rank: pairs sampled per candidate within its task
    score_normalization: bool = False  # rank: XGBoost >= 3 divides each pair's gradient by the pair's score gap
    # (made for NDCG deltas); off, RankNet's logistic gradient: level on seen tasks, +0.001-0.006 on unseen ones
    rank_levels: int = 16  # rank: the label is one of this many levels of normalized throughput; 0 = the raw throughput
    rank_scale: str = "log"  # rank: levels even in log2 throughput over `log_octaves` octaves, or "linear" in throughput
    log_octaves: int = 6  # rank, log scale: candidates 2^6 times slower than the best share the lowest level
    label_cost: str = "min"  # which statistic of a measurement's timed repeats its label comes from: "min" | "mean"
    ensemble: int = 1  # boosters (row-subsampled, seeds 0..n-1) whose scores are averaged
    min_weight: float = 0.05  # regression: failures and slow candidates still count this much
    min_samples: int = 8  # below this many measured candidates, predict uniform scores
    max_samples: int = 50_000  # the buffer keeps the newest
    nthread: int = 1  # the tuner's build/run workers share the cores; 2 OpenMP threads on a busy box run slower
    seed: int = 0

    def __post_init__(self):
        if self.objective not in ("rank", "regression"):
            raise ValueError(f"objective must be 'rank' or 'regression', not {self.objective!r}")
        if self.rank_scale not in ("log", "linear"):
            raise ValueError(f"rank_scale must be 'log' or 'linear', not {self.rank_scale!r}")
        if self.label_cost not in ("min", "mean"):
            raise ValueError(f"label_cost must be 'min' or 'mean', not {self.label_cost!r}")
        if self.ensemble < 1:
            raise ValueError(f"ensemble must be >= 1, not {self.ensemble}")


def rank_label(y: np.ndarray, cfg: XGBConfig) -> np.ndarray:
    """The rank objective's label of each normalized throughput `y` in [0, 1] (0 = failed): one of
    cfg.rank_levels levels, even in throughput ("linear") or in log2 throughput over cfg.log_octaves
    octaves below the best ("log"; failures and anything slower share level 0)."""
    if not cfg.rank_levels:
        return y
    if cfg.rank_scale == "linear":
        return np.floor(y * cfg.rank_levels)
    with np.errstate(divide="ignore"):
        octaves = np.where(y > 0, np.log2(np.where(y > 0, y, 1.0)), -np.inf)
    return np.floor(cfg.rank_levels * np.clip(1.0 + octaves / cfg.log_octaves, 0.0, 0.999))


class XGBCostModel:
    def __init__(self, target, *, config: XGBConfig = XGBConfig(), extractor: FeatureExtractor | None = None):
        self.target = target
        self.config = config
        self.extractor = extractor or FeatureExtractor(target)
        self._boosters: list = []
        self._keys: list[str] = []  # workload key of each buffered sample
        self._hashes: list[str] = []  # trace hash of each buffered sample: pretraining skips what it has
        self._rows: list[np.ndarray] = []
        self._costs: list[float] = []  # seconds, inf for failures

    @property
    def num_samples(self) -> int:
        return len(self._costs)

    @property
    def trained(self) -> bool:
        return bool(self._boosters)

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
        if added or not self._boosters:
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
            self._costs.append(cost_of(result, self.config.label_cost))
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
            self._boosters = []
            return
        keys = np.asarray(self._keys)
        order = np.argsort(keys, kind="stable")  # XGBoost wants each query group contiguous
        keys, costs = keys[order], costs[order]
        x = np.stack(self._rows)[order]
        groups = np.unique(keys, return_inverse=True)[1]
        y = np.zeros(len(costs))
        for g in np.unique(groups):
            y[groups == g] = normalized_throughput(costs[groups == g])
        min_child_weight = cfg.min_child_weight if cfg.min_child_weight is not None else (
            3.0 if cfg.objective == "rank" else 1.0)
        params = {
            "max_depth": cfg.max_depth, "eta": cfg.eta, "min_child_weight": min_child_weight,
            "subsample": cfg.subsample, "colsample_bytree": cfg.colsample_bytree, "nthread": cfg.nthread,
            "seed": cfg.seed, "tree_method": "hist", "max_bin": cfg.max_bin, "verbosity": 0,
        }
        if cfg.objective == "rank":
            params |= {"objective": "rank:pairwise", "lambdarank_pair_method": "mean",
                       "lambdarank_num_pair_per_sample": cfg.pairs_per_sample,
                       "lambdarank_score_normalization": cfg.score_normalization}
            data = xgb.DMatrix(x, label=rank_label(y, cfg), qid=groups)
        else:
            params |= {"objective": "reg:squarederror"}
            data = xgb.DMatrix(x, label=y, weight=np.maximum(y, cfg.min_weight))
        bagging = {"subsample": min(cfg.subsample, 0.8)} if cfg.ensemble > 1 else {}  # boosters that differ
        self._boosters = [xgb.train(params | bagging | {"seed": cfg.seed + i}, data, num_boost_round=cfg.num_rounds)
                          for i in range(cfg.ensemble)]

    # ---- scoring ----------------------------------------------------------------------------
    def predict(self, task: Task, candidates: Sequence[Candidate]) -> np.ndarray:
        """Higher = predicted faster; 0 for every candidate before the model has learned; -inf if unreadable."""
        import xgboost as xgb

        x = self.extractor.extract(task, candidates)
        valid = ~np.isnan(x[:, 0]) if len(x) else np.zeros(0, bool)
        scores = np.full(len(candidates), -math.inf)
        scores[valid] = 0.0
        if self._boosters and valid.any():
            data = xgb.DMatrix(x[valid].astype(np.float32))
            scores[valid] = np.mean([b.predict(data) for b in self._boosters], axis=0)
        return scores

    # ---- persistence ------------------------------------------------------------------------
    def save(self, path: str) -> None:
        """One .npz file: the boosters, the training buffer (so online learning goes on) and the config."""
        meta = {"format": FORMAT, "features": FEATURES_ID, "config": asdict(self.config), "boosters": len(self._boosters)}
        boosters = {f"booster_{i}": np.frombuffer(bytes(b.save_raw("ubj")), np.uint8) for i, b in enumerate(self._boosters)}
        rows = np.stack(self._rows) if self._rows else np.zeros((0, len(FEATURE_NAMES)), np.float32)
        with open(path, "wb") as f:  # a file object: np.savez would append ".npz" to a bare path
            np.savez_compressed(f, meta=np.asarray(json.dumps(meta)), **boosters, rows=rows,
                                costs=np.asarray(self._costs, np.float64), keys=np.asarray(self._keys, dtype=str),
                                hashes=np.asarray(self._hashes, dtype=str))

    def load(self, path: str) -> None:
        import xgboost as xgb

        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                rows, costs, keys, hashes = z["rows"], z["costs"], z["keys"], z["hashes"]
                boosters = [z[f"booster_{i}"] for i in range(int(meta.get("boosters", 0)))]
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
        self._boosters = []
        for raw in boosters:
            booster = xgb.Booster(params={"nthread": self.config.nthread})
            booster.load_model(bytearray(raw.tobytes()))
            self._boosters.append(booster)

    @classmethod
    def from_file(cls, path: str, target) -> "XGBCostModel":
        model = cls(target)
        model.load(path)
        return model
