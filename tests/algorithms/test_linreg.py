"""Linear regression: the normal equations in one pass equal numpy's least squares (exactly
the same bits for any sharding with exact sums; singular systems named, ill-conditioned ones
flagged); gradient descent converges to it whatever runs the per-step combine (serially, the
fold runtime, the tree or ring all-reduce)."""

import json
import pickle
import sys

import cloudpickle
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mergeagg as ma
from mergeagg import cli
from mergeagg.algorithms.linreg import (
    Fit,
    fit,
    gradient,
    linreg,
    normal_equations,
    rows_of,
    run_linreg,
    solve_normal,
)
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
    job = linreg(method="gd", steps=7)
    assert pickle.loads(pickle.dumps(job)) == job
    model = Fit(np.array([1.0]), 2.0, 0.5, 3, True)
    assert ma.fingerprint(pickle.loads(pickle.dumps(model))) == ma.fingerprint(model)


def write_csv(path, X, y, names):
    rows = "".join(",".join(repr(v) for v in (*x, t)) + "\n"
                   for x, t in zip(X.tolist(), y.tolist()))
    path.write_text(",".join(names) + "\n" + rows)


def summary(capsys):
    return [ln for ln in capsys.readouterr().out.splitlines() if not ln.startswith("fingerprint")]


def test_cli_fits_a_csv(tmp_path, capsys):
    rng = np.random.default_rng(2)
    X = rng.standard_normal((80, 2))
    y = X @ [3.0, -1.0] + 2.0
    path = tmp_path / "data.csv"
    write_csv(path, X, y, ["a", "b", "y"])
    out = tmp_path / "fit.json"
    assert cli.main(["run", "linreg", str(path), "--workers", "0", "--json", str(out)]) == 0
    assert "linear model by the normal equations (80 rows): coef [a 3, b -1]" in summary(
        capsys)[0]
    doc = json.loads(out.read_text())
    np.testing.assert_allclose(doc["value"]["coef"], [3.0, -1.0], atol=1e-12)
    assert doc["value"]["intercept"] == pytest.approx(2.0, abs=1e-12)
    assert doc["value"]["method"] == "normal" and doc["value"]["columns"] == ["a", "b"]
    assert cli.main(["run", "linreg", str(path), "--workers", "0", "--method", "gd"]) == 0
    assert "gradient steps (converged, 80 rows)" in summary(capsys)[0]


def badly_scaled(n=710, seed=7):
    """Like the issue's CSV: two features with large means, so the intercept's column is
    nearly collinear with them and gradient descent crawls."""
    rng = np.random.default_rng(seed)
    X = np.column_stack([rng.uniform(1, 9, n).round(3), rng.normal(25, 4, n).round(3)])
    y = (X @ [830.4, 438.6] - 2132.2 + rng.normal(0, 300, n)).round(2)
    return X, y


def test_cli_solves_the_badly_scaled_csv_of_the_issue_in_one_pass(tmp_path, capsys):
    X, y = badly_scaled()
    path = tmp_path / "prices.csv"
    write_csv(path, X, y, ["rooms", "area", "price"])
    ref = np.linalg.lstsq(np.hstack([X, np.ones((len(y), 1))]), y, rcond=None)[0]
    out = tmp_path / "fit.json"
    for extra in ([], ["--exact", "--split-size", "1K"]):
        assert cli.main(["run", "linreg", str(path), "--workers", "0", "--json", str(out),
                         *extra]) == 0
        capsys.readouterr()
        value = json.loads(out.read_text())["value"]
        got = np.append(value["coef"], value["intercept"])
        np.testing.assert_allclose(got, ref, rtol=1e-10)
        assert value["rows"] == 710 and value["steps"] == 0
    # gradient descent is still there, and its report covers every run of the job
    src = ma.files(path, format="csv")
    result = run_linreg(linreg(method="gd", steps=20), src, workers=0)
    assert result.report.counters["runs"] == 21  # the step size's Gram, then 20 steps
    assert not result.value.converged and result.value.steps == 20


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 4), st.booleans(), st.data())
def test_normal_equations_equal_lstsq_for_any_sharding(seed, width, intercept, data):
    rng = np.random.default_rng(seed)
    n = width + 1 + int(rng.integers(0, 60))
    scales = 10.0 ** rng.integers(-3, 4, width)
    X = rng.standard_normal((n, width)) * scales + rng.normal(0, 5, width)
    y = X @ rng.standard_normal(width) + rng.standard_normal(n)
    cuts = sorted(data.draw(st.lists(st.integers(0, n), max_size=4)))
    bounds = [0, *cuts, n]
    shards = [(X[a:b], y[a:b]) for a, b in zip(bounds, bounds[1:])]
    design = np.hstack([X, np.ones((n, 1))]) if intercept else X
    ref = np.linalg.lstsq(design, y, rcond=None)[0]
    got = normal_equations(intercept).reduce(shards)
    params_ = np.append(got.coef, got.intercept) if intercept else got.coef
    # normal equations lose accuracy as the condition number (reported) grows
    tol = 1e-13 * max(got.condition, 1.0) * 10
    np.testing.assert_allclose(params_, ref, rtol=tol, atol=tol * np.abs(ref).max())
    assert got.rows == n and got.method == "normal" and got.converged
    exact = normal_equations(intercept, exact=True)
    whole = exact.reduce([(X, y)])
    assert ma.fingerprint(exact.reduce(shards)) == ma.fingerprint(whole)
    np.testing.assert_allclose(whole.coef, got.coef, rtol=tol, atol=tol * np.abs(ref).max())


def test_exact_fits_are_the_same_bits_on_workers_and_any_split_size(tmp_path):
    X, y = badly_scaled(n=400, seed=3)
    path = tmp_path / "p.csv"
    write_csv(path, X, y, ["a", "b", "y"])
    prints = {ma.run(normal_equations(exact=True), ma.files(path, format="csv",
                                                             split_size=size),
                     workers=w).fingerprint for size, w in (("1M", 0), ("1K", 0), ("700", 2))}
    assert len(prints) == 1


def test_ill_conditioned_and_singular_systems(tmp_path, capsys):
    rng = np.random.default_rng(11)
    n = 500
    x1 = rng.standard_normal(n)
    x2 = x1 + 1e-6 * rng.standard_normal(n)  # nearly collinear: cond(X) ~ 1e6
    X = np.column_stack([x1, x2])
    y = x1 - 2 * x2 + 0.1 * rng.standard_normal(n)
    ref = np.linalg.lstsq(np.hstack([X, np.ones((n, 1))]), y, rcond=None)[0]
    got = normal_equations().reduce([(X[:200], y[:200]), (X[200:], y[200:])])
    assert 1e11 < got.condition < 1e14  # cond(X)^2, column-scaled
    # the coefficients carry about 16 - log10(condition) correct digits, not more
    err = np.abs(np.append(got.coef, got.intercept) - ref).max() / np.abs(ref).max()
    assert err < 100 * got.condition * np.finfo(float).eps
    path = tmp_path / "ill.csv"
    write_csv(path, X, y, ["u", "v", "y"])
    assert cli.main(["run", "linreg", str(path), "--workers", "0"]) == 0
    assert any(ln.startswith("warning: ill-conditioned") for ln in summary(capsys))
    # exactly collinear (a duplicated column) or a constant column: a named error
    dup = tmp_path / "dup.csv"
    write_csv(dup, np.column_stack([x1, 2 * x1]), y, ["u", "twice_u", "y"])
    assert cli.main(["run", "linreg", str(dup), "--workers", "0"]) != 0
    err = capsys.readouterr().err
    assert "singular (rank 2 of 3): 'u' and 'twice_u' are linearly dependent" in err
    const = np.column_stack([x1, np.full(n, 3.0)])
    with pytest.raises(ValueError, match="column 2 and the intercept are linearly"):
        normal_equations().reduce([(const, y)])
    with pytest.raises(ValueError, match="fewer rows than columns"):
        normal_equations().reduce([(X[:2], y[:2])])
    with pytest.raises(ValueError, match="column 1 is all zero"):
        normal_equations(intercept=False).reduce([(np.zeros((3, 1)), y[:3])])


def test_normal_equations_edge_cases():
    agg = normal_equations(exact=True)
    rows = [[1.0, 1.0], [2.0, 3.0], [3.0, 5.0]]
    assert ma.fingerprint(agg.reduce([[], rows, []])) == ma.fingerprint(agg.reduce([rows]))
    with pytest.raises(ValueError, match="no rows"):
        agg.reduce([[], []])
    with pytest.raises(ValueError, match=r"column 'b' holds 'n/a' \(record 1 of"):
        agg.reduce([[{"a": "1", "b": "n/a", "y": "2"}]])
    with pytest.raises(ValueError, match="different columns"):
        normal_equations().reduce([[{"a": "1", "y": "2"}], [{"b": "1", "y": "2"}]])
    with pytest.raises(ValueError, match="exact sums apply to the normal equations"):
        linreg(method="gd", exact=True)
    back = pickle.loads(pickle.dumps(agg))
    part = agg.partial(rows)
    assert ma.fingerprint(pickle.loads(pickle.dumps(part))) == ma.fingerprint(part)
    assert ma.fingerprint(solve_normal(back.partial(rows))) == ma.fingerprint(
        agg.reduce([rows]))


@pytest.mark.slow
def test_gradient_descent_from_the_cli_runner_runs_every_step_on_one_session():
    # <= fan_in shards: the session's fold is the serial loop's order, so bitwise equal.
    shards, _ref = problem(parts=3)
    serial = fit(shards, steps=4, tol=0.0)
    out = run_linreg(linreg(method="gd", steps=4, tol=0.0), shards, workers=2)
    assert ma.fingerprint(out.value) == ma.fingerprint(serial)
    assert out.report.counters["runs"] == 5 and out.report.workers == 2
