"""Evolutionary search: mutations on real TVM traces, the policy with fake cost models and measurers.

Schedules are real (sampled from the CPU sketches and replayed); the cost model and the
measurer are fakes whose preferences are known, so every assertion can fail for a reason.
"""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import tvm
import tvm_ffi
from tvm import te, topi

from tilecraft.compiler.ir import TensorType
from tilecraft.compiler.task import Task, workload_key
from tilecraft.search import mutation as M
from tilecraft.search.database import Database, trace_hash
from tilecraft.search.evolutionary import EvolutionarySearch, EvolutionConfig, make_evolutionary_factory
from tilecraft.search.measure_types import Candidate, MeasureResult, Record
from tilecraft.search.policies import RandomPolicy
from tilecraft.search.sampling import sample_candidates
from tilecraft.search.sketch import generate_sketches
from tilecraft.search.tuner import TuneConfig, tune_tasks
from tilecraft.targets.base import resolve_target

TARGET = resolve_target("llvm")
SMALL = EvolutionConfig(population=64, generations=3, first_samples=16, samples_per_round=4, structural_per_round=4, carry=32)


def make_task(name: str, args, out, flops: float) -> Task:
    mod = tvm.IRModule({"main": te.create_prim_func([*args, out])})
    types = tuple(TensorType(tuple(int(x) for x in t.shape), str(t.dtype)) for t in (*args, out))
    return Task(name, workload_key(mod, types), mod, types, flops)


def matmul_task(n: int = 128) -> Task:
    A = te.placeholder((n, n), name="A"); B = te.placeholder((n, n), name="B")
    k = te.reduce_axis((0, n), "k")
    C = te.compute((n, n), lambda i, j: te.sum(A[i, k] * B[k, j], axis=k), name="C")
    return make_task(f"matmul{n}", (A, B), C, 2.0 * n**3)


def softmax_task() -> Task:
    A = te.placeholder((32, 256), name="A")
    return make_task("softmax", (A,), topi.nn.softmax(A), 32 * 256 * 5.0)


@pytest.fixture(scope="module")
def mm() -> Task:
    return matmul_task()


@pytest.fixture(scope="module")
def mm_samples(mm) -> list[Candidate]:
    return sample_candidates(mm, TARGET, n=8, rng_seed=3)


def tiles(cand: Candidate) -> list[tuple[int, ...]]:
    g = M.genome_of(cand)
    return [d for gene, d in zip(g.genes, g.decisions) if gene.kind == M.TILE]


def categoricals(cand: Candidate) -> list[int]:
    """Live categoricals: the auto-unroll index of each loop nest, the matmul's first."""
    g = M.genome_of(cand)
    return [d for gene, d in zip(g.genes, g.decisions) if gene.kind == M.CATEGORICAL and gene.live]


def same_program(task: Task, a: Candidate, b: Candidate) -> bool:
    return bool(tvm_ffi.structural_equal(a.apply(task.mod).mod, b.apply(task.mod).mod))


# --------------------------------------------------------------------------- mutation (real traces)
def test_pruned_trace_is_shorter_and_replays_to_the_same_program(mm, mm_samples):
    for cand in mm_samples[:3]:
        genome = M.genome_of(cand)
        assert len(json.loads(genome.insts)) < len(json.loads(cand.trace_json)[0])
        assert same_program(mm, cand, genome.candidate())
        assert [g.kind for g in genome.genes].count(M.TILE) >= 3  # i, j (4 levels), k (2 levels), maybe more


def test_tile_mutations_keep_the_extent_change_decisions_and_replay(mm, mm_samples):
    rng = random.Random(0)
    sketches = {s.name: s for s in generate_sketches(mm, TARGET)}
    changed = rederived = tile_moves = 0
    for cand in mm_samples[:3]:
        parent = M.genome_of(cand)
        for _ in range(10):
            child = M.mutate(parent, rng)
            assert child is not None and child.decisions != parent.decisions
            for gene, decision, old in zip(child.genes, child.decisions, parent.decisions):
                if gene.kind == M.TILE:  # the product stays the loop's extent (the matmul's i, j, k: 128)
                    assert math.prod(decision) == math.prod(old) == gene.extent and decision[-1] <= gene.max_innermost
            assert [math.prod(t) for t in tiles(child.candidate())[:3]] == [128, 128, 128]
            if M.changes_unit_loops(parent, child):  # the rules' structure may follow: re-derive, keeping the decisions
                made = M.rederive(child, sketches[child.sketch], mm, TARGET, seed=7)
                assert made is not None and made.decisions == child.decisions
                rederived += 1
            else:
                made = child
            assert M.realize(made, mm.mod) is not None, "a mutated trace must replay"
            if any(g.kind == M.TILE and a != b for g, a, b in zip(parent.genes, parent.decisions, child.decisions)):
                tile_moves += 1
                changed += not same_program(mm, made.candidate(), cand)
    # every tile move changes the program (an unroll index may not: sampling.py annotates the fused loop twice)
    assert changed == tile_moves >= 15 and 0 < rederived < 30


def test_mutate_tile_moves_one_factor():
    rng = random.Random(1)
    for _ in range(200):
        new = M.mutate_tile((4, 8, 2, 2), 16, rng)
        assert new is not None and math.prod(new) == 128 and new[-1] <= 16 and new != (4, 8, 2, 2)
        assert sum(a != b for a, b in zip(new, (4, 8, 2, 2))) == 2
    assert M.mutate_tile((1, 1, 1), 4, rng) is None  # nothing to move


def test_a_wrong_tile_product_is_rejected_before_replay(mm, mm_samples):
    parent = M.genome_of(mm_samples[0])
    i = next(k for k, g in enumerate(parent.genes) if g.kind == M.TILE)
    assert M.realize(parent.with_decision(i, (3, 3, 3, 3)), mm.mod) is None  # TVM itself would accept it


def test_rederive_changes_parallel_granularity(mm, mm_samples):
    rng = random.Random(2)
    sketches = {s.name: s for s in generate_sketches(mm, TARGET)}
    parent = M.genome_of(mm_samples[1])
    gene = M.structural_genes(parent)[0]  # a dead categorical: how many outer loops are fused and parallel
    assert not parent.genes[gene].live and parent.genes[gene].kind == M.CATEGORICAL
    kids = [M.rederive(M.mutate_structure(parent, gene, rng), sketches[parent.sketch], mm, TARGET, seed=k + 1)
            for k in range(6)]
    kids = [k for k in kids if k is not None]
    assert kids
    for kid in kids:
        assert kid.decisions[gene] != parent.decisions[gene]
        tile_genes = [k for k, g in enumerate(parent.genes) if g.kind == M.TILE]
        assert [kid.decisions[k] for k in tile_genes] == [parent.decisions[k] for k in tile_genes]  # the rest is kept
        assert M.realize(kid, mm.mod) is not None
        assert not same_program(mm, kid.candidate(), parent.candidate())


def test_rederive_moves_a_compute_location():
    task = softmax_task()
    sketches = {s.name: s for s in generate_sketches(task, TARGET)}
    rng = random.Random(3)
    moved = 0
    for cand in sample_candidates(task, TARGET, n=4, rng_seed=1):
        parent = M.genome_of(cand)
        locations = [k for k, g in enumerate(parent.genes) if g.kind == M.LOCATION]
        assert locations and set(locations) <= set(M.structural_genes(parent))
        for k in range(3):
            child = M.mutate_structure(parent, rng.choice(locations), rng)
            kid = M.rederive(child, sketches[parent.sketch], task, TARGET, seed=k + 1)
            if kid is not None and M.realize(kid, task.mod) is not None:
                moved += kid.decisions != parent.decisions and not same_program(task, kid.candidate(), cand)
    assert moved >= 2


def test_crossover_takes_decisions_from_both_parents(mm):
    cands = sample_candidates(mm, TARGET, n=24, rng_seed=5)
    genomes = [M.genome_of(c) for c in cands]
    pair = next((a, b) for a in genomes for b in genomes
                if a is not b and a.signature == b.signature and sum(x != y for x, y in zip(a.decisions, b.decisions)) >= 3)
    a, b = pair
    rng = random.Random(4)
    kids = [k for k in (M.crossover(a, b, rng) for _ in range(20)) if k is not None]
    assert kids
    for kid in kids:
        assert all(d in (x, y) for d, x, y in zip(kid.decisions, a.decisions, b.decisions))
        assert kid.decisions not in (a.decisions, b.decisions)
        assert M.realize(kid, mm.mod) is not None
    assert M.crossover(a, M.genome_of(Candidate("[[],[]]")), rng) is None  # different sketches do not mate


# --------------------------------------------------------------------------- the policy (fake cost models)
class PreferenceModel:
    """Scores a candidate by how close its decisions are to a known preference."""

    def __init__(self, j_inner: int = 16, unroll_index: int = 3):
        self.j_inner, self.unroll_index, self.updates = j_inner, unroll_index, 0

    def predict(self, task, candidates):
        return np.array([-abs(math.log2(tiles(c)[1][-1] / self.j_inner)) - (categoricals(c)[0] != self.unroll_index)
                         for c in candidates])

    def update(self, task, candidates, results):
        self.updates += 1

    def save(self, path):
        pass


def prefers(cand: Candidate) -> bool:
    return tiles(cand)[1][-1] == 16 and categoricals(cand)[0] == 3


def test_batch_concentrates_on_what_the_model_prefers(mm):
    search = EvolutionarySearch(mm, TARGET, cost_model=PreferenceModel(), seed=1, measured=set(), config=SMALL)
    shares = []
    for _ in range(3):  # each round goes on from the previous one's best-scored
        batch = search.propose(16)
        assert len(batch) == 16 and (batch[0].sketch == "default") == (not shares)  # the default goes first, once
        shares.append(np.mean([prefers(c) for c in batch]))
        search.observe(batch, [MeasureResult((1e-3,))] * len(batch))
    random_share = np.mean([prefers(c) for c in sample_candidates(mm, TARGET, n=32, rng_seed=9)])
    assert random_share < 0.2 and shares[-1] >= 0.75 and shares[-1] > shares[0]
    assert search.model.updates == 3
    assert search.stats.scored > 100 and search.stats.candidates_per_s > 0


def test_never_proposes_a_measured_candidate_or_one_twice(mm, mm_samples):
    db = Database(":memory:")
    db.add_workload(mm)
    db.commit([Record(mm.workload_key, TARGET.key, c, MeasureResult((1e-3 * (k + 1),)), mm.name)
               for k, c in enumerate(mm_samples)])  # stored as sampled: full traces

    def sampler(task, target, *, n, rng_seed):  # keeps offering the measured ones
        return list(mm_samples) + sample_candidates(task, target, n=n, rng_seed=rng_seed)

    factory, finish = make_evolutionary_factory(TARGET, db, TuneConfig(), evolution=SMALL, cost_model=PreferenceModel(),
                                                sampler=sampler)
    search = factory(mm, 0)
    assert len(search._best) == len(mm_samples)  # warm start from the database's best
    measured = {trace_hash(c.trace_json) for c in mm_samples} | {trace_hash(M.genome_of(c).trace_json) for c in mm_samples}
    proposed: list[str] = []
    for _ in range(3):
        batch = search.propose(16)
        assert len(batch) == 16
        proposed += [trace_hash(c.trace_json) for c in batch]
        search.observe(batch[:8], [MeasureResult((1e-3,))] * 8)  # half the batch dropped: still never again
    assert len(set(proposed)) == len(proposed)
    assert not set(proposed) & measured
    finish()  # in-memory database and no cost_model_path: nothing to save, no error


# --------------------------------------------------------------------------- end to end with tune_tasks
def fake_cost(cand: Candidate) -> float:
    """A known landscape over the decisions: optimum 1 ms at i-inner 4, j-inner 16, k-inner 4, unroll index 2."""
    (ti, tj, tk), unroll = tiles(cand)[:3], categoricals(cand)[0]
    return 1e-3 * (1 + (math.log2(ti[-1]) - 2) ** 2 + (math.log2(tj[-1]) - 4) ** 2 + (math.log2(tk[-1]) - 2) ** 2
                   + (unroll != 2))


class FakeMeasurer:
    def measure(self, task, candidates):
        return [MeasureResult((fake_cost(c),)) for c in candidates]


class RidgeModel:
    """A small learned model: ridge regression of -log(cost) on the decisions (log2 factors, squares, one-hots)."""

    def __init__(self):
        self.x, self.y, self.w = [], [], None

    @staticmethod
    def features(cand: Candidate) -> np.ndarray:
        logs = [math.log2(f) for t in tiles(cand)[:3] for f in t]
        onehot = [float(categoricals(cand)[0] == k) for k in range(4)]
        return np.array([1.0, *logs, *(v * v for v in logs), *onehot])

    def update(self, task, candidates, results):
        for c, r in zip(candidates, results):
            self.x.append(self.features(c))
            self.y.append(-math.log(r.mean))
        x, y = np.stack(self.x), np.array(self.y)
        self.w = np.linalg.solve(x.T @ x + 1e-2 * np.eye(x.shape[1]), x.T @ y)

    def predict(self, task, candidates):
        if self.w is None:
            return np.zeros(len(candidates))
        return np.stack([self.features(c) for c in candidates]) @ self.w

    def save(self, path):
        pass


def trials_to_reach(result, cost: float) -> float:
    return next((t for t, lat in result.curve if lat <= cost * (1 + 1e-9)), math.inf)


def test_guided_search_finds_the_optimum_faster_than_random(mm):
    config = TuneConfig(trials=80, batch_size=16, progress=False, seed=0)
    db_evo, db_rand = Database(":memory:"), Database(":memory:")
    factory, finish = make_evolutionary_factory(TARGET, db_evo, config, evolution=SMALL, cost_model=RidgeModel())
    guided = tune_tasks([mm], TARGET, measurer=FakeMeasurer(), database=db_evo, policy_factory=factory, config=config)
    finish()

    def random_factory(task, seed):
        return RandomPolicy(task, TARGET, seed=seed, measured=db_rand.measured_hashes(task.workload_key, TARGET.key))

    rand = tune_tasks([mm], TARGET, measurer=FakeMeasurer(), database=db_rand, policy_factory=random_factory, config=config)
    assert guided.trials == rand.trials == 80
    best_random = rand.tasks[0].best_cost
    assert guided.tasks[0].best_cost == pytest.approx(1e-3)  # the optimum
    assert guided.tasks[0].best_cost < best_random
    assert trials_to_reach(guided, best_random) <= 0.5 * 80
    assert len({r.candidate.trace_json for r in db_evo.records()}) == 80  # nothing measured twice
    stats = factory.searches[0].stats
    assert stats.rounds == 5 and stats.candidates_per_s > 0


def test_factory_pretrains_saves_and_loads_the_real_cost_model(tmp_path, mm, mm_samples):
    path = str(tmp_path / "tuning.db")
    with Database(path) as db:
        db.add_workload(mm)
        db.commit([Record(mm.workload_key, TARGET.key, c, MeasureResult((1e-3 * (k + 1),)), mm.name)
                   for k, c in enumerate(mm_samples)])
        factory, finish = make_evolutionary_factory(TARGET, db, TuneConfig(), evolution=SMALL)
        model = factory(mm, 0).model
        assert model.num_samples == len(mm_samples)  # pretrained from the database's records
        finish()
    saved = tmp_path / "tuning.db.cost_model"
    assert saved.exists()
    with Database(path) as db:
        factory, _ = make_evolutionary_factory(TARGET, db, TuneConfig(cost_model_path=str(saved)), evolution=SMALL)
        again = factory(mm, 0).model
        assert again.num_samples == len(mm_samples)
        np.testing.assert_allclose(again.predict(mm, mm_samples), model.predict(mm, mm_samples))


def test_a_later_run_starts_warm_from_the_saved_model_and_catches_up(tmp_path, mm, mm_samples):
    saved = str(tmp_path / "model.npz")
    config = TuneConfig(cost_model_path=saved)
    samples = sample_candidates(mm, TARGET, n=12, rng_seed=5)
    first, later = samples[:9], samples[9:]  # >= XGBConfig.min_samples, so the first run trains
    with Database(str(tmp_path / "a.db")) as db:
        db.add_workload(mm)
        db.commit([Record(mm.workload_key, TARGET.key, c, MeasureResult((1e-3 * (k + 1),)), mm.name)
                   for k, c in enumerate(first)])
        factory, finish = make_evolutionary_factory(TARGET, db, config, evolution=SMALL)
        assert factory(mm, 0).model.num_samples == len(first)
        finish()
    # another run, another (empty) database: the saved model is loaded, trained, nothing re-learned
    with Database(str(tmp_path / "b.db")) as db:
        factory, _ = make_evolutionary_factory(TARGET, db, config, evolution=SMALL)
        model = factory(mm, 0).model
        assert model.trained and model.num_samples == len(first)
    # a database with the old records and new ones: only the new ones are added
    with Database(str(tmp_path / "a.db")) as db:
        db.commit([Record(mm.workload_key, TARGET.key, c, MeasureResult((2e-3,)), mm.name) for c in later])
        factory, finish = make_evolutionary_factory(TARGET, db, config, evolution=SMALL)
        assert factory(mm, 0).model.num_samples == len(samples)
        finish()


def test_an_unreadable_saved_model_falls_back_to_the_database(tmp_path, mm, mm_samples):
    saved = tmp_path / "model.npz"
    saved.write_bytes(b"not a model")
    with Database(str(tmp_path / "a.db")) as db:
        db.add_workload(mm)
        db.commit([Record(mm.workload_key, TARGET.key, c, MeasureResult((1e-3 * (k + 1),)), mm.name)
                   for k, c in enumerate(mm_samples)])
        factory, _ = make_evolutionary_factory(TARGET, db, TuneConfig(cost_model_path=str(saved)), evolution=SMALL)
        model = factory(mm, 0).model
        assert model.trained and model.num_samples == len(mm_samples)


def test_the_default_strategy_is_the_evolutionary_search(tmp_path, mm):
    from tilecraft.search.evolutionary import EvolutionarySearch
    from tilecraft.search.policies import make_policy_factory

    assert TuneConfig().strategy == "evolutionary"
    with Database(str(tmp_path / "a.db")) as db:
        factory, _ = make_policy_factory(TARGET, db, TuneConfig())
        assert isinstance(factory(mm, 0), EvolutionarySearch)
