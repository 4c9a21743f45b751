"""Linear regression by gradient descent: data-parallel training as a mergeable aggregation.

Each step is one aggregation over the shards. A shard's partial is its share of the
gradient of the squared loss at the current weights, packed with its squared residuals
and row count into one float64 vector ``[X^T (Xw - y), sum (Xw - y)^2, n]``; the combine
is the element-wise sum, so the combined vector is the full-data gradient. That is exactly
what data-parallel training's all-reduce computes: the step can be combined by the fold
runtime (``mergeagg.run``), by the tree or ring all-reduce
(``mergeagg.runtime.allreduce.allreduce`` with the ``SUM`` view), or serially, and
:func:`fit` takes that choice as its ``runner`` (this module never imports the runtime).

The step size is ``1 / L``, with ``L`` the largest eigenvalue of ``X^T X / n``, found by
one preliminary aggregation of the (small, ``d x d``) Gram matrix; with it gradient descent
converges to the least-squares solution at the rate ``1 - mu / L`` per step.

>>> rng = np.random.default_rng(0)
>>> X = rng.standard_normal((300, 3)); y = X @ [1.0, -2.0, 0.5] + 4.0
>>> shards = [(X[i::3], y[i::3]) for i in range(3)]
>>> model = fit(shards)
>>> np.round(model.coef, 6).tolist(), round(model.intercept, 6), model.converged
([1.0, -2.0, 0.5], 4.0, True)
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from mergeagg.aggregator import Aggregator
from mergeagg.algorithms.registry import Entry, Flag

__all__ = ["gradient", "gram", "fit", "serial_runner", "rows_of", "Fit", "GradientDescent",
           "linreg"]


def rows_of(shard, intercept=True):
    """``(X, y)`` as float64 arrays from a shard; the last column is the target.

    A shard is an ``(X, y)`` pair, a 2-D array, or records (sequences of numbers or CSV
    dicts; a dict's target is its ``"y"`` field, else its last one). With ``intercept``
    a column of ones is appended to ``X``. Cost: O(size of the shard).

    >>> X, y = rows_of([[1, 2, 3], [4, 5, 6]])
    >>> X.tolist(), y.tolist()
    ([[1.0, 2.0, 1.0], [4.0, 5.0, 1.0]], [3.0, 6.0])
    """
    if isinstance(shard, tuple) and len(shard) == 2:
        X = np.asarray(shard[0], dtype=np.float64)
        y = np.asarray(shard[1], dtype=np.float64)
    else:
        records = shard if isinstance(shard, np.ndarray) else list(shard)
        if len(records) and isinstance(records[0], dict):
            records = [_dict_row(r) for r in records]
        data = np.asarray(records, dtype=np.float64)
        if data.ndim != 2 or data.shape[1] < 2:
            raise ValueError(f"a linreg shard needs rows of at least two numbers (features, "
                             f"then the target), got an array of shape {data.shape}")
        X, y = data[:, :-1], data[:, -1]
    if X.ndim != 2 or y.shape != (X.shape[0],):
        raise ValueError(f"X must be 2-D with one target per row; got X {X.shape}, y {y.shape}")
    if intercept:
        X = np.hstack([X, np.ones((X.shape[0], 1))])
    return X, y


def _dict_row(rec):
    keys = [k for k in rec if k != "y"] + (["y"] if "y" in rec else [])
    return [float(rec[k]) for k in keys]


def _add(a, b):
    a += b
    return a


def _gradient_partial(w, intercept, shard):
    X, y = rows_of(shard, intercept)
    r = X @ w - y
    return np.concatenate([X.T @ r, [r @ r, float(X.shape[0])]])


def gradient(w, intercept=True):
    """The Aggregator of one step: the packed gradient ``[X^T (Xw - y), SSE, n]`` at ``w``.

    ``w`` includes the intercept as its last entry when ``intercept``. The accumulator is a
    float64 vector of ``len(w) + 2`` entries; combine: element-wise sum (in place on the
    first operand). Cost: O(rows x features) per shard, O(features) per combine.

    >>> g = gradient(np.zeros(2)).reduce([[[1.0, 2.0]], [[3.0, 4.0]]])
    >>> g.tolist()  # d/dw of 0.5 * SSE, then SSE and n
    [-14.0, -6.0, 20.0, 2.0]
    """
    w = np.asarray(w, dtype=np.float64)
    return Aggregator(functools.partial(_gradient_partial, w, bool(intercept)), _add,
                      name="linreg-gradient")


def _gram_partial(intercept, shard):
    X, _y = rows_of(shard, intercept)
    return np.concatenate([(X.T @ X).reshape(-1), [float(X.shape[0])]])


def gram(intercept=True):
    """The Aggregator of ``[X^T X (flattened), n]``, to choose the step size.

    Cost: O(rows x features^2) per shard, O(features^2) per combine.

    >>> gram(False).reduce([[[1.0, 0.0]], [[2.0, 0.0]]]).tolist()
    [5.0, 2.0]
    """
    return Aggregator(functools.partial(_gram_partial, bool(intercept)), _add,
                      name="linreg-gram")


def serial_runner(aggregator, shards):
    """Run an aggregation in this process, left to right (the reference runner).

    >>> serial_runner(Aggregator(sum, _add), [[1, 2], [3]])
    6
    """
    return aggregator.reduce(shards)


@dataclass
class Fit:
    """A fitted model: ``coef`` (features), ``intercept``, the last ``loss`` (half the mean
    squared residual), the ``steps`` taken and whether the gradient norm met the tolerance.

    Cost: O(features) memory; fingerprints as a dataclass, so fits compare by fingerprint.

    >>> Fit(np.array([1.0]), 0.0, 0.0, 3, True).steps
    3
    """

    coef: np.ndarray
    intercept: float
    loss: float
    steps: int
    converged: bool

    def predict(self, X):
        """``X @ coef + intercept``. Cost: O(rows x features).

        >>> Fit(np.array([2.0]), 1.0, 0.0, 1, True).predict([[3.0]]).tolist()
        [7.0]
        """
        return np.asarray(X, dtype=np.float64) @ self.coef + self.intercept


def fit(shards, runner=serial_runner, *, steps=500, tol=1e-10, lr=None, intercept=True,
        callback=None):
    """Fit least squares by full-batch gradient descent; each step is one aggregation.

    ``runner(aggregator, shards) -> combined accumulator`` does the combining: the default
    runs serially; ``lambda agg, s: mergeagg.run(agg, s, workers=2).value`` uses the fold
    runtime; ``lambda agg, s: allreduce(agg, s, algorithm="ring").value`` the ring
    all-reduce. ``lr`` defaults to ``1 / L`` (one extra aggregation of the Gram matrix).
    Stops when the gradient's norm is at most ``tol * (1 + |w|)`` or after ``steps``
    steps. ``callback(step, w, loss)`` is called after every step.

    Cost: ``steps`` aggregations of O(rows x features) each (plus one of O(rows x
    features^2) when ``lr`` is None); O(features^3) for the step size.

    >>> fit([([[0.0], [1.0]], [1.0, 3.0])]).coef.round(8).tolist()
    [2.0]
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    if lr is None:
        g = np.asarray(runner(gram(intercept), shards), dtype=np.float64)
        n = g[-1]
        d = math.isqrt(g.shape[0] - 1)
        top = float(np.linalg.eigvalsh(g[:-1].reshape(d, d) / n)[-1])
        if not top > 0:
            raise ValueError("the features are all zero: nothing to fit")
        lr = 1.0 / top
    elif not lr > 0:
        raise ValueError(f"lr must be positive, got {lr!r}")
    w = None
    loss, converged, step = math.inf, False, 0
    for step in range(1, steps + 1):
        if w is None:  # the width comes from the first shard the runner sees
            w = np.zeros(_width(shards, intercept))
        acc = np.asarray(runner(gradient(w, intercept), shards), dtype=np.float64)
        n = acc[-1]
        grad = acc[:-2] / n
        loss = float(acc[-2] / (2 * n))
        w = w - lr * grad
        if callback is not None:
            callback(step, w, loss)
        if np.linalg.norm(grad) <= tol * (1.0 + np.linalg.norm(w)):
            converged = True
            break
    coef, icpt = (w[:-1], float(w[-1])) if intercept else (w, 0.0)
    return Fit(coef=coef, intercept=icpt, loss=loss, steps=step, converged=converged)


def _width(shards, intercept):
    first = _first_shard(shards)
    return rows_of(first, intercept)[0].shape[1]


def _first_shard(shards):
    read = getattr(shards, "read", None)  # a mergeagg Source: read its first split
    if read is not None:
        return read(shards.splits()[0])
    return next(iter(shards))


@dataclass
class GradientDescent:
    """The catalog's job: :func:`fit`'s settings, run by :func:`run_fit` from the CLI.

    Cost: nothing until run (see :func:`fit`).

    >>> GradientDescent().steps
    500
    """

    steps: int = 500
    tol: float = 1e-10
    intercept: bool = True


def linreg(steps=500, tol=1e-10, intercept=True):
    """The catalog entry's job: fit least squares by gradient descent (see :func:`fit`).

    Cost: as :func:`fit`.

    >>> linreg(steps=50)
    GradientDescent(steps=50, tol=1e-10, intercept=True)
    """
    return GradientDescent(steps=steps, tol=tol, intercept=intercept)


@dataclass
class _FitResult:
    value: Fit
    fingerprint: str
    report: object


def run_fit(job, source, **run_options):
    """The CLI's runner for ``linreg``: :func:`fit` with ``mergeagg.run`` as the runner.

    The facade's ``run`` is looked up at call time (this module imports no runtime);
    ``run_options`` are ``mergeagg.run``'s. Returns what ``run`` returns, with the
    :class:`Fit` as its value and the last step's report. Cost: as :func:`fit`, each step
    one ``mergeagg.run``.

    >>> out = run_fit(linreg(), [([[0.0], [1.0]], [1.0, 3.0])], workers=0)
    >>> out.value.coef.round(8).tolist(), round(out.value.intercept, 8)
    ([2.0], 1.0)
    """
    import mergeagg

    last = {}

    def runner(aggregator, shards):
        last["result"] = mergeagg.run(aggregator, shards, **run_options)
        return last["result"].value

    model = fit(source, runner, steps=job.steps, tol=job.tol, intercept=job.intercept)
    return _FitResult(model, mergeagg.fingerprint(model), last["result"].report)


def _summarize(value, params):
    coef = ", ".join(f"{c:.6g}" for c in value.coef)
    state = "converged" if value.converged else "not converged"
    return [f"linear model after {value.steps} gradient steps ({state}): coef [{coef}], "
            f"intercept {value.intercept:.6g}, loss {value.loss:.6g}"]


def _jsonable(value):
    return {"coef": value.coef.tolist(), "intercept": value.intercept, "loss": value.loss,
            "steps": value.steps, "converged": value.converged}


ENTRY = Entry(
    name="linreg",
    summary="fit a linear model by gradient descent (CSV, target last or named y)",
    factory=linreg,
    flags=(
        Flag("--steps", type=int, default=500, help="at most this many steps (default 500)"),
        Flag("--tol", type=float, default=1e-10, help="stop at |gradient| <= tol (1 + |w|)"),
    ),
    input_format="csv",
    summarize=_summarize,
    jsonable=_jsonable,
    runner=run_fit,
)
