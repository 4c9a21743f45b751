"""Linear regression by gradient descent: converges to numpy's least squares whatever runs
the per-step combine (serially, the fold runtime, the tree or ring all-reduce)."""

import json
import pickle
import sys

import cloudpickle
import numpy as np
import pytest

import mergeagg as ma
from mergeagg import cli
from mergeagg.algorithms.linreg import Fit, fit, gradient, linreg, rows_of
from mergeagg.runtime.allreduce import allreduce

cloudpickle.register_pickle_by_value(sys.modules[__name__])

TRUE_W = [1.5, -2.0, 0.25, 3.0]


def problem(n=600, parts=3, seed=1, noise=0.1):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, len(TRUE_W)))
    y = X @ TRUE_W + 0.7 + noise * rng.standard_normal(n)
    shards = [(X[i::parts], y[i::parts]) for i in range(parts)]
    ref = np.linalg.lstsq(np.hstack([X, np.ones((n, 1))]), y, rcond=None)[0]
    return shards, ref


def params(model):
    return np.append(model.coef, model.intercept)


def test_converges_to_least_squares_serially():
    shards, ref = problem()
    model = fit(shards, tol=1e-12)
    assert model.converged and model.steps < 100
    np.testing.assert_allclose(params(model), ref, rtol=0, atol=1e-9)
    # the noise keeps the optimum off the true weights: the fit is lstsq's, not TRUE_W's
    assert np.abs(params(model)[:-1] - TRUE_W).max() > 1e-4


def test_converges_without_intercept_and_with_a_given_step():
    rng = np.random.default_rng(5)
    X = rng.standard_normal((200, 2))
    y = X @ [2.0, -1.0] + 0.05 * rng.standard_normal(200)
    model = fit([(X[:90], y[:90]), (X[90:], y[90:])], intercept=False, lr=0.5, steps=2000)
    ref = np.linalg.lstsq(X, y, rcond=None)[0]
    assert model.converged and model.intercept == 0.0
    np.testing.assert_allclose(model.coef, ref, atol=1e-8)


def test_ring_allreduce_training_converges():
    shards, ref = problem()
    model = fit(shards, lambda agg, s: allreduce(agg, s, algorithm="ring").value)
    assert model.converged
    np.testing.assert_allclose(params(model), ref, rtol=0, atol=1e-9)


@pytest.mark.slow
def test_fold_runtime_and_tree_follow_the_serial_trajectory_bitwise():
    # <= fan_in shards: the fold tree is one left-to-right level, the serial loop's order.
    shards, _ref = problem(parts=3)
    serial = fit(shards, steps=2, tol=0.0)
    run = fit(shards, lambda agg, s: ma.run(agg, s, workers=2).value, steps=2, tol=0.0)
    tree = fit(shards, lambda agg, s: allreduce(agg, s, algorithm="tree").value, steps=2,
               tol=0.0)
    assert serial.steps == run.steps == tree.steps == 2
    assert ma.fingerprint(serial) == ma.fingerprint(run) == ma.fingerprint(tree)


def test_gradient_is_the_full_data_gradient():
    shards, _ref = problem(n=50, parts=4)
    w = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    acc = gradient(w).reduce(shards)
    X = np.vstack([rows_of(s)[0] for s in shards])
    y = np.concatenate([s[1] for s in shards])
    r = X @ w - y
    np.testing.assert_allclose(acc[:-2], X.T @ r, rtol=1e-12)
    assert acc[-2] == pytest.approx(r @ r) and acc[-1] == 50.0


def test_rows_of_shapes_and_errors():
    X, y = rows_of(np.array([[1.0, 2.0, 3.0]]), intercept=False)
    assert X.tolist() == [[1.0, 2.0]] and y.tolist() == [3.0]
    X, y = rows_of([{"y": "5", "a": "1", "b": "2"}])
    assert X.tolist() == [[1.0, 2.0, 1.0]] and y.tolist() == [5.0]
    with pytest.raises(ValueError, match="at least two numbers"):
        rows_of([[1.0]])
    with pytest.raises(ValueError, match="one target per row"):
        rows_of(([[1.0], [2.0]], [1.0]))
    with pytest.raises(ValueError, match="steps"):
        fit([([[1.0]], [1.0])], steps=0)
    with pytest.raises(ValueError, match="nothing to fit"):
        fit([([[0.0]], [1.0])], intercept=False)


def test_job_and_fit_pickle():
    job = linreg(steps=7)
    assert pickle.loads(pickle.dumps(job)) == job
    model = Fit(np.array([1.0]), 2.0, 0.5, 3, True)
    assert ma.fingerprint(pickle.loads(pickle.dumps(model))) == ma.fingerprint(model)


def test_cli_fits_a_csv(tmp_path, capsys):
    rng = np.random.default_rng(2)
    X = rng.standard_normal((80, 2))
    y = X @ [3.0, -1.0] + 2.0
    path = tmp_path / "data.csv"
    rows = "".join(f"{a},{b},{t}\n" for (a, b), t in zip(X.tolist(), y.tolist()))
    path.write_text("a,b,y\n" + rows)
    out = tmp_path / "fit.json"
    assert cli.main(["run", "linreg", str(path), "--workers", "0", "--json", str(out)]) == 0
    assert "converged" in capsys.readouterr().out
    doc = json.loads(out.read_text())
    np.testing.assert_allclose(doc["value"]["coef"], [3.0, -1.0], atol=1e-8)
    assert doc["value"]["intercept"] == pytest.approx(2.0, abs=1e-8)
