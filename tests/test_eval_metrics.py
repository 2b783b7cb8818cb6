"""Eval metrics against direct computations with plain loops."""

from __future__ import annotations

import math
import random

import pytest

from steer_cli.evaluate import metrics as M


def random_matrix(problems, samples, seed=0, p=0.4):
    rng = random.Random(seed)
    return [[rng.random() < p for _ in range(samples)] for _ in range(problems)]


def direct_avg(matrix, k=None):
    per_problem = []
    for row in matrix:
        use = row[:k] if k else row
        per_problem.append(sum(use) / len(use))
    return sum(per_problem) / len(per_problem)


@pytest.mark.parametrize("problems,samples,seed", [(1, 1, 0), (30, 32, 1), (7, 3, 2), (500, 1, 3)])
def test_avg_pass_and_mean_at_k(problems, samples, seed):
    m = random_matrix(problems, samples, seed)
    assert M.avg_at_k(m) == pytest.approx(direct_avg(m))
    assert M.pass_at_1(m) == pytest.approx(sum(r[0] for r in m) / problems)
    for k in (1, 2, 8, 100):
        assert M.mean_at_k(m, k) == pytest.approx(direct_avg(m, min(k, samples)))


def test_avg_is_a_mean_of_per_problem_means_not_of_all_cells():
    # Equal sample counts make the two the same; the definition is per problem first.
    m = [[True, True, False, False], [True, False, False, False]]
    assert M.avg_at_k(m) == pytest.approx((0.5 + 0.25) / 2)
    assert M.pass_at_1(m) == 1.0
    assert M.mean_at_k(m, 2) == pytest.approx((1.0 + 0.5) / 2)


def test_mean_std_is_population_std():
    values = [0.1, 0.25, 0.4]
    mean = sum(values) / 3
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / 3)  # ddof = 0
    assert M.mean_std(values) == pytest.approx((mean, std))
    assert M.mean_std([0.3]) == (0.3, 0.0)


def test_primary_metric_names():
    assert M.primary_metric(32) == "avg@32"
    assert M.primary_metric(1) == "pass@1"
    metrics = {"avg@k": 0.1, "pass@1": 0.2, "mean@k": 0.3}
    assert M.primary_value(metrics, "avg@32") == 0.1
    assert M.primary_value(metrics, "pass@1") == 0.2
    assert M.primary_value(metrics, "mean@8") == 0.3


def test_benchmark_summary_and_paper_average():
    seeds = {0: random_matrix(30, 4, 10), 1: random_matrix(30, 4, 11), 2: random_matrix(30, 4, 12)}
    s = M.benchmark_summary(seeds, "avg@4", mean_k=2)
    assert set(s["per_seed"]) == {"0", "1", "2"}
    for seed, m in seeds.items():
        assert s["per_seed"][str(seed)] == pytest.approx(
            {"avg@k": direct_avg(m), "pass@1": sum(r[0] for r in m) / 30, "mean@k": direct_avg(m, 2)})
    vals = [direct_avg(m) for m in seeds.values()]
    mean = sum(vals) / 3
    assert s["mean"] == pytest.approx(mean)
    assert s["std"] == pytest.approx(math.sqrt(sum((v - mean) ** 2 for v in vals) / 3))

    by_bench = {"a": {"0": 0.1, "1": 0.3}, "b": {"0": 0.5, "1": 0.9}}
    per_seed = [(0.1 + 0.5) / 2, (0.3 + 0.9) / 2]  # mean over benchmarks first, per seed
    avg = M.paper_average(by_bench)
    assert avg["mean"] == pytest.approx(sum(per_seed) / 2)
    assert avg["std"] == pytest.approx(abs(per_seed[0] - per_seed[1]) / 2)


def test_bad_inputs_raise():
    with pytest.raises(ValueError):
        M.avg_at_k([])
    with pytest.raises(ValueError):
        M.mean_at_k([[True]], 0)
    with pytest.raises(ValueError):
        M.paper_average({"a": {"0": 0.1}, "b": {"1": 0.2}})
    with pytest.raises(ValueError):
        M.mean_std([])
