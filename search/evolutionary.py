"""Cost-model-guided evolutionary search (Ansor §5 / MetaSchedule's EvolutionarySearch), one task at a time.

    propose(n):
        population = best measured (database + this run) + last round's best-scored + random sketch samples
        repeat `generations` times:
            parents  drawn with probability proportional to the cost model's score
            children = mutate(parent) | crossover(parent, mate of the same sketch)   (mutation.py)
                       (a few re-derive the sketch: parallel granularity, compute location, unit loops)
            the model scores the new children; one it cannot replay scores -inf and is dropped
        batch = (1 - eps) * n best-scored unmeasured (spread: no two picks one decision apart)
                + eps * n random samples; each replayed before it is proposed
    observe(batch, results): the cost model learns from the measured batch (online).

The cost model is injected (one model shared by all tasks of a tuning run), so the search is
tested with a fake; `make_evolutionary_factory` wires the real one for `search.tuner`.
Never proposed: a trace whose hash (as stored, or pruned) the database holds, or one this
search already proposed.  `stats` counts the search's own cost (candidates scored per second).
"""

from __future__ import annotations

import math
import os
import random
import time
from dataclasses import dataclass, replace
from typing import Callable, Protocol, Sequence

import numpy as np

from ..compiler.task import Task
from ..targets.base import Target
from .database import trace_hash
from .measure_types import Candidate, MeasureResult
from .mutation import (Genome, changes_unit_loops, crossover, genome_of, mutate, mutate_structure, realize, rederive,
                       structural_genes)


class CostModel(Protocol):
    def update(self, task: Task, candidates: Sequence[Candidate], results: Sequence[MeasureResult]) -> None: ...

    def predict(self, task: Task, candidates: Sequence[Candidate]) -> np.ndarray: ...  # higher = faster

    def save(self, path: str) -> None: ...


Sampler = Callable[..., list[Candidate]]  # sample_candidates(task, target, *, n, rng_seed)


@dataclass(frozen=True, kw_only=True)
class EvolutionConfig:
    population: int = 128  # candidates per generation
    generations: int = 3
    first_samples: int = 32  # random sketch samples drawn in the first round (the initial pool)
    samples_per_round: int = 8  # fresh samples in each later round: diversity and the eps picks
    warm_start: int = 16  # best measured candidates (database + this run) seeded into every population
    eps_greedy: float = 0.1  # share of the batch taken at random instead of by score
    crossover_rate: float = 0.2
    structural_rate: float = 0.05  # share of children that re-derive the sketch (parallel, compute location)
    structural_per_round: int = 24  # at most this many re-derivations (each costs a sketch instantiation)
    elite: int = 16  # best-scored of a generation carried into the next one
    carry: int = 32  # best-scored unmeasured of a round seeded into the next round's population
    min_distance: int = 2  # greedy picks differ from each other in >= this many decisions (a spread batch)
    include_default: bool = True  # propose the default schedule first: tuning never ends worse than it


@dataclass
class SearchStats:
    """What the search itself costs (not measurement): reported as candidates scored per second."""

    rounds: int = 0
    proposed: int = 0
    scored: int = 0  # candidates the cost model ranked
    children: int = 0  # valid new children made by mutation / crossover
    invalid: int = 0  # children dropped because their trace did not replay
    search_s: float = 0.0
    predict_s: float = 0.0
    sample_s: float = 0.0

    @property
    def candidates_per_s(self) -> float:
        return self.scored / self.search_s if self.search_s > 0 else 0.0


class EvolutionarySearch:
    def __init__(self, task: Task, target: Target, *, cost_model: CostModel, seed: int, measured: set[str],
                 warm_start: Sequence[tuple[Candidate, float]] = (), config: EvolutionConfig = EvolutionConfig(),
                 sampler: Sampler | None = None):
        self.task, self.target, self.model, self.config = task, target, cost_model, config
        self.stats = SearchStats()
        self._rng = random.Random(seed)
        self._seed = seed
        self._sampler = sampler
        self._seen = set(measured)  # trace hashes measured (database) or proposed (this search)
        self._best: list[tuple[float, Genome]] = []  # measured, fastest first
        self._pool: dict[str, Genome] = {}  # random samples not proposed yet, by hash
        self._carry: list[Genome] = []  # last round's best-scored unmeasured: evolution goes on from there
        self._structures: dict[tuple, str] = {}  # gene structure -> sketch name, learnt from the samples
        self._sketches = None
        self._round = 0
        for cand, cost in warm_start:
            self._remember(cand, cost)

    # ------------------------------------------------------------------ the policy interface
    def propose(self, n: int) -> list[Candidate]:
        t0 = time.perf_counter()
        self._sample(self.config.first_samples if self._round == 0 else self.config.samples_per_round)
        batch: dict[str, Genome] = {}
        if self._round == 0 and self.config.include_default:
            self._add_default(batch)
        ranked = sorted(self._evolve().items(), key=lambda kv: -kv[1][0])
        self._carry = [g for _, (_, g) in ranked[n: n + self.config.carry]]
        n_random = min(len(self._pool), int(round(self.config.eps_greedy * n)))
        self._take(batch, [(h, g) for h, (_, g) in ranked], n - n_random, spread=True)
        spare = list(self._pool.items())
        self._rng.shuffle(spare)
        self._take(batch, spare, n)  # the eps share, or whatever the ranking could not fill
        for h in batch:  # never proposed twice, even if the caller drops the batch
            self._seen.add(h)
            self._pool.pop(h, None)
        self._round += 1
        self.stats.rounds += 1
        self.stats.proposed += len(batch)
        self.stats.search_s += time.perf_counter() - t0
        return [g.candidate() for g in batch.values()]

    def _take(self, batch: dict[str, Genome], ranked: list[tuple[str, Genome]], size: int, *, spread: bool = False) -> None:
        """Add candidates in order until the batch has `size`; each is replayed first (children were only scored).

        spread: first take only candidates `min_distance` decisions away from those already taken (the
        best-scored are often siblings of one parent; measuring all of them teaches the model little)."""
        passes = (True, False) if spread else (False,)
        for strict in passes:
            for h, genome in ranked:
                if len(batch) >= size:
                    return
                if h in batch or h in self._seen or (strict and self._too_close(genome, batch.values())):
                    continue
                if realize(genome, self.task.mod) is None:
                    self._seen.add(h)
                    self.stats.invalid += 1
                    continue
                batch[h] = genome

    def _too_close(self, genome: Genome, taken) -> bool:
        return any(g.genes == genome.genes and sum(a != b for a, b in zip(g.decisions, genome.decisions))
                   < self.config.min_distance for g in taken)

    def observe(self, candidates: Sequence[Candidate], results: Sequence[MeasureResult]) -> None:
        self.model.update(self.task, list(candidates), list(results))
        for cand, result in zip(candidates, results):
            self._seen.add(trace_hash(cand.trace_json))
            if result.ok:
                self._remember(cand, result.mean)

    # ------------------------------------------------------------------ population
    def _remember(self, cand: Candidate, cost: float) -> None:
        try:
            genome = genome_of(cand)
        except ValueError:  # not a trace (e.g. a record of another tool): nothing to evolve from
            return
        self._seen.add(trace_hash(genome.trace_json))
        self._best.append((cost, genome))
        self._best.sort(key=lambda cg: cg[0])
        del self._best[max(self.config.warm_start, 1) * 4:]

    def _add_default(self, batch: dict[str, Genome]) -> None:
        from .policies import default_candidate

        cand = default_candidate(self.task, self.target)
        if cand is None or trace_hash(cand.trace_json) in self._seen:
            return
        genome = genome_of(cand)  # proposed as sketch "default"; as a parent it is `_named`
        h = trace_hash(genome.trace_json)
        if h not in self._seen:
            batch[h] = genome

    def _named(self, genome: Genome) -> Genome:
        """The default schedule (sketch "default") gets the name of the sketch with its gene structure,
        so its descendants can cross with that sketch's samples and be re-derived."""
        name = self._structures.get(genome.signature[1])
        return replace(genome, sketch=name) if name and name != genome.sketch else genome

    def _sample(self, k: int) -> None:
        if k <= 0:
            return
        t0 = time.perf_counter()
        sampler = self._sampler
        if sampler is None:
            from .sampling import sample_candidates as sampler
        fresh = sampler(self.task, self.target, n=k, rng_seed=self._seed * 7919 + self._round * 131 + 17)
        for cand in fresh:
            if trace_hash(cand.trace_json) in self._seen:
                continue
            genome = genome_of(cand)
            self._structures.setdefault(genome.signature[1], genome.sketch)
            h = trace_hash(genome.trace_json)
            if h not in self._seen:
                self._pool[h] = genome
        self.stats.sample_s += time.perf_counter() - t0

    def _evolve(self) -> dict[str, tuple[float, Genome]]:
        """Score the initial population, then `generations` rounds of offspring: {hash: (score, genome)} unmeasured.

        Children are not replayed here: the cost model replays them to featurize and scores the
        ones that do not fit -inf, so they are dropped without a second replay."""
        cfg = self.config
        population = [self._named(g) for _, g in self._best[: cfg.warm_start]] + self._carry
        pool = list(self._pool.values())
        self._rng.shuffle(pool)
        population += pool[: max(cfg.population - len(population), 0)]
        population, scores = self._scored(population)
        hashes = [trace_hash(g.trace_json) for g in population]
        known = set(hashes)
        scored = {h: (float(s), g) for h, s, g in zip(hashes, scores, population) if h not in self._seen}
        for _ in range(cfg.generations):
            if not population:
                break
            budget = -(-cfg.structural_per_round // cfg.generations)
            children, child_scores = self._scored(self._offspring(population, scores, known, budget))
            self.stats.children += len(children)
            for genome, score in zip(children, child_scores):
                scored[trace_hash(genome.trace_json)] = (float(score), genome)
            order = np.argsort(-scores)[: cfg.elite]
            population = [population[i] for i in order] + children
            scores = np.concatenate([scores[order], child_scores])
        return scored

    def _offspring(self, population: list[Genome], scores: np.ndarray, known: set[str], structural: int) -> list[Genome]:
        cfg = self.config
        weights = _selection_weights(scores)
        by_signature: dict[tuple, list[int]] = {}
        for i, g in enumerate(population):
            by_signature.setdefault(g.signature, []).append(i)
        children: list[Genome] = []
        tries = 0
        while len(children) < cfg.population and tries < 4 * cfg.population:
            tries += 1
            parent = population[self._rng.choices(range(len(population)), weights=weights, k=1)[0]]
            child, rederived = self._child(parent, population, by_signature, structural > 0)
            structural -= rederived
            if child is None:
                continue
            h = trace_hash(child.trace_json)
            if h in known or h in self._seen:
                continue
            known.add(h)
            children.append(child)
        return children

    def _child(self, parent: Genome, population: list[Genome], by_signature: dict,
               structural: bool) -> tuple[Genome | None, bool]:
        """A child of `parent` (replayed later, unless re-derived), and whether making it re-derived the sketch."""
        roll = self._rng.random()
        if roll < self.config.crossover_rate:
            mates = by_signature.get(parent.signature, [])
            if len(mates) > 1:
                return crossover(parent, population[self._rng.choice(mates)], self._rng), False
        sketch = self._sketch(parent.sketch) if structural else None
        if sketch is not None and roll < self.config.crossover_rate + self.config.structural_rate:
            genes = structural_genes(parent)
            child = mutate_structure(parent, self._rng.choice(genes), self._rng) if genes else None
            return (None, False) if child is None else (self._rederive(child, sketch), True)
        child = mutate(parent, self._rng)
        if child is not None and sketch is not None and changes_unit_loops(parent, child):
            return self._rederive(child, sketch), True
        return child, False

    def _rederive(self, genome: Genome, sketch) -> Genome | None:
        return rederive(genome, sketch, self.task, self.target, seed=self._rng.randrange(1, 2**31 - 1))

    def _sketch(self, name: str):
        if self._sketches is None:
            from .sketch import generate_sketches

            self._sketches = {s.name: s for s in generate_sketches(self.task, self.target)}
        return self._sketches.get(name)

    def _scored(self, genomes: list[Genome]) -> tuple[list[Genome], np.ndarray]:
        """The cost model's scores; genomes it cannot read (score -inf or NaN) are dropped."""
        if not genomes:
            return [], np.zeros(0)
        t0 = time.perf_counter()
        scores = np.asarray(self.model.predict(self.task, [g.candidate() for g in genomes]), dtype=float)
        if scores.shape != (len(genomes),):
            raise ValueError(f"cost model returned {scores.shape} scores for {len(genomes)} candidates")
        self.stats.predict_s += time.perf_counter() - t0
        self.stats.scored += len(genomes)
        ok = np.isfinite(scores)
        self.stats.invalid += int((~ok).sum())
        return [g for g, keep in zip(genomes, ok) if keep], scores[ok]


def _selection_weights(scores: np.ndarray) -> np.ndarray:
    """Proportional to score above the worst, plus a floor so every candidate stays selectable."""
    span = float(scores.max() - scores.min()) if len(scores) else 0.0
    if span <= 0 or not math.isfinite(span):
        return np.ones(len(scores))
    return (scores - scores.min()) + 0.05 * span


# ---------------------------------------------------------------------- the tuner's factory
def make_evolutionary_factory(target: Target, database, config, *, evolution: EvolutionConfig = EvolutionConfig(),
                              cost_model: CostModel | None = None, sampler: Sampler | None = None):
    """(factory(task, seed) -> EvolutionarySearch, finish()) sharing one cost model across tasks.

    The model is loaded from `config.cost_model_path` (or the file beside the database) when it
    exists, and (pre)trained on the database's records for this target it has not seen; `finish`
    saves it there, so the next run starts warm even on an empty database.
    `factory.searches` lists the searches made, for their stats.
    """
    path = _model_path(database, config)
    model = cost_model if cost_model is not None else _load_model(database, target, path)
    searches: list[EvolutionarySearch] = []

    def factory(task: Task, seed: int) -> EvolutionarySearch:
        warm = [(r.candidate, r.result.mean) for r in database.best(task.workload_key, target.key, k=evolution.warm_start)]
        search = EvolutionarySearch(task, target, cost_model=model, seed=seed, config=evolution, warm_start=warm,
                                    measured=_measured(database, task.workload_key, target.key), sampler=sampler)
        searches.append(search)
        return search

    def finish() -> None:
        if path is not None:
            model.save(path)

    factory.searches = searches  # type: ignore[attr-defined]
    return factory, finish


def _measured(database, workload_key: str, target_key: str) -> set[str]:
    """Hashes of every measured trace, as stored and pruned (a sampled trace and its pruned form are one program)."""
    seen = set(database.measured_hashes(workload_key, target_key))
    for record in database.records(workload_key, target_key):
        try:
            seen.add(trace_hash(genome_of(record.candidate).trace_json))
        except ValueError:
            continue
    return seen


def _model_path(database, config) -> str | None:
    if getattr(config, "cost_model_path", None):
        return os.fspath(config.cost_model_path)
    db_path = getattr(database, "path", ":memory:")
    return None if db_path == ":memory:" else f"{db_path}.cost_model"


def _load_model(database, target: Target, path: str | None) -> CostModel:
    """The saved model at `path` when it loads (a later run starts warm), else a fresh one; then it learns
    from the database's records of this target that it has not seen (all of them, for a fresh model)."""
    import logging

    from ..cost_model.xgb_model import CostModelError, XGBCostModel

    model = XGBCostModel(target)
    if path is not None and os.path.exists(path):
        try:
            model.load(path)
        except CostModelError as e:  # another version's file: start from the database instead
            logging.getLogger(__name__).warning("not using the saved cost model: %s", e)
            model = XGBCostModel(target)
    if any(s.target_key == target.key and s.trials > 0 for s in database.workloads()):
        model.pretrain_from_database(database, target.key)
    return model
