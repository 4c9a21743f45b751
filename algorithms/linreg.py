"""Linear regression, two ways: the normal equations in one pass, or gradient descent.

**Normal equations** (:func:`normal_equations`, the catalog's default). A shard's partial is
its share of the Gram statistics ``X^T X``, ``X^T y``, ``y^T y`` and the row count; the
combine adds them, and the finalize solves ``X^T X w = X^T y`` (by least squares on the
column-scaled Gram matrix). One pass over the data, whatever the number of features, and
``exact=True`` keeps every sum as an exact float sum (:class:`~mergeagg.algorithms._exact.
ExactSum`), so the Gram matrix, and the fit, are the same bits for every split layout.
A singular system (collinear columns, fewer rows than columns) is a ``ValueError`` naming
the columns; an ill-conditioned one is solved and its condition number reported.

**Gradient descent** (:func:`fit`). Each step is one aggregation over the shards. A shard's
partial is its share of the gradient of the squared loss at the current weights, packed
with its squared residuals and row count into one float64 vector ``[X^T (Xw - y),
sum (Xw - y)^2, n]``; the combine is the element-wise sum, so the combined vector is the
full-data gradient. That is exactly what data-parallel training's all-reduce computes: the
step can be combined by the fold runtime (``mergeagg.run``), by the tree or ring all-reduce
(``mergeagg.runtime.allreduce.allreduce`` with the ``SUM`` view), or serially, and
:func:`fit` takes that choice as its ``runner`` (this module never imports the runtime).
The step size is ``1 / L``, with ``L`` the largest eigenvalue of ``X^T X / n``, found by
one preliminary aggregation of the (small, ``d x d``) Gram matrix; with it gradient descent
converges to the least-squares solution at the rate ``1 - mu / L`` per step, which is slow
when the features are badly scaled (``mu / L`` small).

>>> rng = np.random.default_rng(0)
>>> X = rng.standard_normal((300, 3)); y = X @ [1.0, -2.0, 0.5] + 4.0
>>> shards = [(X[i::3], y[i::3]) for i in range(3)]
>>> model = normal_equations().reduce(shards)
>>> np.round(model.coef, 6).tolist(), round(model.intercept, 6), model.method
([1.0, -2.0, 0.5], 4.0, 'normal')
>>> model = fit(shards)
>>> np.round(model.coef, 6).tolist(), round(model.intercept, 6), model.converged
([1.0, -2.0, 0.5], 4.0, True)
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass

import numpy as np

from mergeagg.aggregator import Aggregator
from mergeagg.algorithms._exact import ExactSum
from mergeagg.algorithms.registry import Entry, Flag

__all__ = ["gradient", "gram", "fit", "serial_runner", "rows_of", "Fit", "Moments",
           "normal_equations", "solve_normal", "LinregJob", "linreg", "run_linreg",
           "METHODS", "ILL_CONDITIONED"]

METHODS = ("normal", "gd")
ILL_CONDITIONED = 1e10  # condition numbers above this are flagged in the summary


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
            keys = _dict_columns(records[0])
            records = [_dict_row(r, keys, i) for i, r in enumerate(records)]
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


def _dict_columns(rec):
    """The keys of a dict record, the target (``"y"``, else the last key) last."""
    return [k for k in rec if k != "y"] + (["y"] if "y" in rec else [])


def _dict_row(rec, keys=None, index=None):
    keys = _dict_columns(rec) if keys is None else keys
    try:
        return [float(rec[k]) for k in keys]
    except ValueError:
        bad = next(k for k in keys if not _is_number(rec[k]))
        where = "" if index is None else f" (record {index + 1} of this shard)"
        raise ValueError(f"linreg needs numbers: column {bad!r} holds {rec[bad]!r}"
                         f"{where}") from None
    except KeyError as exc:
        raise ValueError(f"linreg: a record lacks the column {exc.args[0]!r} "
                         f"(its columns are {list(rec)})") from None


def _is_number(text):
    try:
        float(text)
    except (TypeError, ValueError):
        return False
    return True


def _add(a, b):
    if isinstance(b, np.ndarray) and not b.size:  # an empty shard's gram: the identity
        return a
    if isinstance(a, np.ndarray) and not a.size:
        return b.copy()  # never hand out the right operand itself
    a += b
    return a


def _is_empty(shard):
    if isinstance(shard, tuple) and len(shard) == 2:
        return len(shard[1]) == 0
    return len(shard) == 0


def _gradient_partial(w, intercept, shard):
    shard = shard if isinstance(shard, (tuple, np.ndarray, list)) else list(shard)
    if _is_empty(shard):
        return np.zeros(w.shape[0] + 2)
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
    shard = shard if isinstance(shard, (tuple, np.ndarray, list)) else list(shard)
    if _is_empty(shard):
        return np.zeros(0)  # its width is not known here: the identity of _add
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
    """A fitted model: ``coef`` (features), ``intercept``, the ``loss`` (half the mean
    squared residual), the gradient ``steps`` taken and whether the fit ``converged``.

    ``method`` is ``"gd"`` (gradient descent: ``converged`` says whether the gradient norm
    met the tolerance) or ``"normal"`` (the normal equations: ``steps`` is 0, ``converged``
    True); ``rows`` is the number of rows fitted; ``condition`` the condition number of the
    column-scaled Gram matrix the normal equations solved (about ``condition * 1e-16`` is
    the relative error to expect); ``columns`` the feature names of CSV / dict records.
    Cost: O(features) memory; fingerprints as a dataclass, so fits compare by fingerprint.

    >>> Fit(np.array([1.0]), 0.0, 0.0, 3, True).steps
    3
    """

    coef: np.ndarray
    intercept: float
    loss: float
    steps: int
    converged: bool
    rows: int = 0
    method: str = "gd"
    condition: float | None = None
    columns: tuple | None = None

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
    return Fit(coef=coef, intercept=icpt, loss=loss, steps=step, converged=converged,
               rows=int(n))


def _width(shards, intercept):
    for shard in _shards_of(shards):
        shard = shard if isinstance(shard, (tuple, np.ndarray, list)) else list(shard)
        if not _is_empty(shard):
            return rows_of(shard, intercept)[0].shape[1]
    raise ValueError("linreg needs at least one row: every shard is empty")


def _shards_of(shards):
    read = getattr(shards, "read", None)  # a mergeagg Source: read its splits in order
    if read is not None:
        return (read(sp) for sp in shards.splits())
    return iter(shards)


# -- the normal equations --------------------------------------------------------------------


@dataclass(slots=True)
class Moments:
    """The Gram statistics of some rows: the accumulator of :func:`normal_equations`.

    ``sums`` packs the upper triangle of ``X^T X`` (row by row), then ``X^T y``, then
    ``y^T y``: a float64 vector, or a list of :class:`~mergeagg.algorithms._exact.ExactSum`
    when ``exact``. ``width`` is the number of columns of ``X`` (the intercept's column of
    ones included, last), ``rows`` the row count, ``columns`` the feature names of dict
    records (else ``None``). No rows: ``width`` 0 and empty ``sums``. Cost: O(width**2).

    >>> m = normal_equations(intercept=False).partial([[1.0, 2.0, 5.0]])
    >>> m.width, m.rows, m.sums.tolist()  # [x1x1, x1x2, x2x2, x1y, x2y, yy]
    (2, 1, [1.0, 2.0, 4.0, 5.0, 10.0, 25.0])
    """

    width: int
    rows: int
    sums: object
    exact: bool = False
    columns: tuple | None = None

    def floats(self):
        """``(X^T X, X^T y, y^T y)`` as float64 arrays (exact sums rounded once each).

        Cost: O(width**2).
        """
        d = self.width
        flat = (np.array([s.value() for s in self.sums], dtype=np.float64) if self.exact
                else np.asarray(self.sums, dtype=np.float64))
        g = np.zeros((d, d))
        iu = np.triu_indices(d)
        g[iu] = flat[: iu[0].shape[0]]
        g.T[iu] = flat[: iu[0].shape[0]]
        k = iu[0].shape[0]
        return g, flat[k:k + d], float(flat[k + d])


def _columns_of(shard):
    if isinstance(shard, list) and shard and isinstance(shard[0], dict):
        return tuple(_dict_columns(shard[0])[:-1])
    return None


def _moments_partial(intercept, exact, shard):
    records = shard if isinstance(shard, (tuple, np.ndarray, list)) else list(shard)
    if len(records) == 0:
        return Moments(0, 0, [] if exact else np.zeros(0), exact)
    X, y = rows_of(records, intercept)
    d = X.shape[1]
    iu, ju = np.triu_indices(d)
    if not exact:
        sums = np.concatenate([(X.T @ X)[iu, ju], X.T @ y, [y @ y]])
    else:
        sums = []
        for i, j in zip(iu.tolist(), ju.tolist()):
            sums.append(_exact_sum(X[:, i] * X[:, j]))
        sums += [_exact_sum(X[:, i] * y) for i in range(d)] + [_exact_sum(y * y)]
    return Moments(d, X.shape[0], sums, exact, _columns_of(records))


def _exact_sum(values):
    s = ExactSum()
    s.add_floats(values)
    return s


def _moments_combine(a, b):
    if b.rows == 0:
        return a
    if a.rows == 0:
        sums = [ExactSum().merge(s) for s in b.sums] if b.exact else b.sums.copy()
        return Moments(b.width, b.rows, sums, b.exact, b.columns)
    if (a.width, a.columns) != (b.width, b.columns):
        raise ValueError(f"linreg: shards with different columns meet: "
                         f"{a.columns or a.width} and {b.columns or b.width}")
    if a.exact:
        for mine, theirs in zip(a.sums, b.sums):
            mine.merge(theirs)
    else:
        a.sums += b.sums
    a.rows += b.rows
    return a


def solve_normal(moments, intercept=True):
    """The least-squares :class:`Fit` from :class:`Moments`: solve ``X^T X w = X^T y``.

    The Gram matrix is scaled to unit diagonal (so the answer does not depend on the
    features' units) and solved by ``numpy.linalg.lstsq``. Raises ``ValueError`` when there
    are no rows or when the scaled matrix is singular to working precision (its rank below
    its width: collinear or constant columns, or fewer rows than columns), naming the
    columns involved. An ill-conditioned system is solved; ``Fit.condition`` says how
    ill (expect a relative error of about ``condition * 1e-16`` in the coefficients).
    Cost: O(width**3).

    >>> agg = normal_equations()
    >>> m = agg.combine(agg.partial([[0.0, 1.0], [1.0, 3.0]]), agg.partial([[2.0, 5.0]]))
    >>> f = solve_normal(m); f.coef.round(12).tolist(), round(f.intercept, 12), f.rows
    ([2.0], 1.0, 3)
    >>> agg.reduce([[[1.0, 2.0, 3.0], [2.0, 4.0, 5.0]]])
    Traceback (most recent call last):
    ...
    ValueError: linreg: the normal equations are singular (rank 2 of 3): column 1 and ...
    """
    if moments.rows == 0:
        raise ValueError("linreg: no rows to fit")
    g, b, yy = moments.floats()
    d = moments.width
    diag = np.diag(g).copy()
    names = _names(moments, intercept)
    zero = np.flatnonzero(diag == 0)
    if zero.size:
        raise ValueError(f"linreg: {_listed([names[i] for i in zero])} "
                         f"{'is' if zero.size == 1 else 'are'} all zero: nothing to fit")
    scale = 1.0 / np.sqrt(diag)
    gs = g * scale[:, None] * scale[None, :]
    eig, vec = np.linalg.eigh(gs)
    top = float(eig[-1])
    tiny = top * d * np.finfo(np.float64).eps
    rank = int(np.count_nonzero(eig > tiny))
    if rank < d:
        null = vec[:, eig <= tiny]
        weight = np.abs(null).max(axis=1)
        involved = [names[i] for i in np.flatnonzero(weight > 1e-3)]
        raise ValueError(
            f"linreg: the normal equations are singular (rank {rank} of {d}): "
            f"{_listed(involved)} are linearly dependent (collinear or constant columns, or "
            f"fewer rows than columns); drop one of them")
    condition = top / float(eig[0])
    ws = np.linalg.lstsq(gs, b * scale, rcond=None)[0]
    w = ws * scale
    sse = max(0.0, yy - 2.0 * float(w @ b) + float(w @ g @ w))
    coef, icpt = (w[:-1], float(w[-1])) if intercept else (w, 0.0)
    return Fit(coef=coef, intercept=icpt, loss=sse / (2 * moments.rows), steps=0,
               converged=True, rows=moments.rows, method="normal", condition=condition,
               columns=moments.columns)


def _names(moments, intercept):
    feats = moments.width - (1 if intercept else 0)
    names = (list(moments.columns) if moments.columns is not None and len(moments.columns)
             == feats else [f"column {i + 1}" for i in range(feats)])
    names = [repr(n) if moments.columns is not None else n for n in names]
    return names + (["the intercept"] if intercept else [])


def _listed(items):
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


class _Solve:
    """The finalize of :func:`normal_equations` (picklable: no closure)."""

    __slots__ = ("intercept",)

    def __init__(self, intercept):
        self.intercept = intercept

    def __getstate__(self):
        return self.intercept

    def __setstate__(self, state):
        self.intercept = state

    def __call__(self, moments):
        return solve_normal(moments, self.intercept)


def normal_equations(intercept=True, exact=False):
    """An Aggregator fitting least squares in one pass: Gram statistics, then a solve.

    Partial: the shard's :class:`Moments`; combine: their sum (in place on the first
    operand); finalize: :func:`solve_normal`, whose :class:`Fit` is the value. With
    ``exact=True`` every sum is exact (products rounded once per row, then summed without
    error), so the fit is the same bits for every split layout; otherwise sums are float
    and the fit equal within rounding. Cost: O(rows x width**2) per shard (exact: about 15x
    more), O(width**2) per combine, O(width**3) for the solve.

    >>> agg = normal_equations(exact=True)
    >>> one = agg.reduce([[[0.1, 0.3], [0.2, 0.5], [0.3, 0.7]]])
    >>> two = agg.reduce([[[0.3, 0.7]], [[0.1, 0.3], [0.2, 0.5]]])
    >>> from mergeagg import fingerprint
    >>> fingerprint(one) == fingerprint(two), one.coef.round(12).tolist(), round(one.intercept, 12)
    (True, [2.0], 0.1)
    """
    if not isinstance(exact, bool):
        raise TypeError(f"exact must be a bool, got {type(exact).__name__}")
    intercept = bool(intercept)
    return Aggregator(functools.partial(_moments_partial, intercept, exact), _moments_combine,
                      _Solve(intercept), name="linreg-normal")


# -- the catalog entry ------------------------------------------------------------------------


@dataclass
class LinregJob:
    """The catalog's job: a method and its settings, run by :func:`run_linreg`.

    Cost: nothing until run (see :func:`normal_equations` and :func:`fit`).

    >>> LinregJob().method
    'normal'
    """

    method: str = "normal"
    exact: bool = False
    steps: int = 500
    tol: float = 1e-10
    intercept: bool = True


def linreg(method="normal", exact=False, steps=500, tol=1e-10, intercept=True):
    """The catalog entry's job: least squares by the normal equations (one pass, the
    default) or by gradient descent (``method="gd"``: ``steps`` aggregations at most).

    ``exact`` (normal equations only) sums exactly, for the same bits in every split
    layout. Cost: as :func:`normal_equations` or :func:`fit`.

    >>> linreg(method="gd", steps=50)
    LinregJob(method='gd', exact=False, steps=50, tol=1e-10, intercept=True)
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if exact and method != "normal":
        raise ValueError("exact sums apply to the normal equations (method 'normal'); "
                         "gradient descent sums in floats")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    return LinregJob(method=method, exact=bool(exact), steps=steps, tol=tol,
                     intercept=bool(intercept))


@dataclass
class _FitResult:
    value: Fit
    fingerprint: str
    report: object


def run_linreg(job, source, **run_options):
    """The CLI's runner for ``linreg``: one ``mergeagg.run`` of :func:`normal_equations`,
    or :func:`fit` with the jobs of a ``mergeagg.Session`` as its runner (one job per step,
    the workers started once; with injected ``faults``, one ``mergeagg.run`` per step).

    The facade's ``run`` is looked up at call time (this module imports no runtime);
    ``run_options`` are ``mergeagg.run``'s. Returns what ``run`` returns, with the
    :class:`Fit` as its value; for gradient descent the report is the last run's, with
    the whole job's wall time, phases, bytes read, failures and backups summed over every
    run (``counters["runs"]`` counts them). Cost: as the method's.

    >>> out = run_linreg(linreg(), [[[0.0, 1.0], [1.0, 3.0]]], workers=0)
    >>> out.value.coef.round(8).tolist(), round(out.value.intercept, 8)
    ([2.0], 1.0)
    >>> run_linreg(linreg(method="gd"), [([[0.0], [1.0]], [1.0, 3.0])], workers=0).value.steps > 1
    True
    """
    import mergeagg

    if job.method == "normal":
        return mergeagg.run(normal_equations(job.intercept, job.exact), source, **run_options)
    runs = []
    start = time.perf_counter()
    if run_options.get("faults") is not None:
        # Injected faults kill workers: every step gets a fresh pool, as mergeagg.run does.
        def runner(aggregator, shards):
            runs.append(mergeagg.run(aggregator, shards, **run_options))
            return runs[-1].value

        model = fit(source, runner, steps=job.steps, tol=job.tol, intercept=job.intercept)
    else:
        # One session for every step: the workers start once, not once per step.
        options = dict(run_options)
        per_job = {k: options.pop(k) for k in ("fan_in", "progress") if k in options}
        options.pop("faults", None)
        workers = options.pop("workers", None)
        backend = options.pop("backend", "local")
        if backend not in ("local", None):
            workers = None  # a Dask session's workers are the cluster's
        with mergeagg.Session(workers=workers, backend=backend or "local",
                              **options) as session:
            def runner(aggregator, shards):
                runs.append(session.run(aggregator, shards, **per_job))
                return runs[-1].value

            model = fit(source, runner, steps=job.steps, tol=job.tol,
                        intercept=job.intercept)
    return _FitResult(model, mergeagg.fingerprint(model),
                      _whole_job(runs, time.perf_counter() - start))


def _whole_job(runs, seconds):
    report = runs[-1].report
    for r in runs[:-1]:
        rep = r.report
        report.bytes_read += rep.bytes_read
        report.failures = rep.failures + report.failures
        report.backups_launched += rep.backups_launched
        report.backups_won += rep.backups_won
        report.workers_lost += rep.workers_lost
        for k, v in rep.phases.items():
            report.phases[k] = report.phases.get(k, 0.0) + v
    report.wall_seconds = seconds
    report.counters["runs"] = len(runs)
    return report


def _summarize(value, params):
    names = (list(value.columns) if value.columns is not None
             and len(value.columns) == len(value.coef) else None)
    if names:
        coef = ", ".join(f"{n} {c:.6g}" for n, c in zip(names, value.coef))
    else:
        coef = ", ".join(f"{c:.6g}" for c in value.coef)
    if value.method == "normal":
        head = f"linear model by the normal equations ({value.rows} rows"
        if params.get("exact"):
            head += ", exact sums"
        head += ")"
    else:
        state = "converged" if value.converged else "not converged"
        head = f"linear model after {value.steps} gradient steps ({state}, {value.rows} rows)"
    lines = [f"{head}: coef [{coef}], intercept {value.intercept:.6g}, "
             f"loss {value.loss:.6g}"]
    if value.condition is not None:
        lines.append(f"condition number {value.condition:.3g} (column-scaled Gram matrix)")
        if value.condition > ILL_CONDITIONED:
            lines.append(f"warning: ill-conditioned; expect about "
                         f"{max(0, 16 - round(math.log10(value.condition)))} correct digits "
                         "in the coefficients (nearly collinear columns)")
    if value.method == "gd" and not value.converged:
        lines.append("warning: gradient descent stopped before converging; the normal "
                     "equations (--method normal) solve it in one pass")
    return lines


def _jsonable(value):
    return {"coef": value.coef.tolist(), "intercept": value.intercept, "loss": value.loss,
            "steps": value.steps, "converged": value.converged, "rows": value.rows,
            "method": value.method, "condition": value.condition,
            "columns": None if value.columns is None else list(value.columns)}


ENTRY = Entry(
    name="linreg",
    summary="fit a linear model by least squares: the normal equations in one pass, or "
            "gradient descent (CSV, target last or named y)",
    factory=linreg,
    flags=(
        Flag("--method", default="normal", choices=METHODS,
             help="normal: solve the normal equations in one pass (default); gd: gradient "
                  "descent, one job per step"),
        Flag("--exact", action="store_true", default=False,
             help="exact float sums: the same bits for every split layout (normal only)"),
        Flag("--no-intercept", action="store_false", default=True, dest="intercept",
             help="fit without an intercept"),
        Flag("--steps", type=int, default=500, help="gd: at most this many steps (500)"),
        Flag("--tol", type=float, default=1e-10,
             help="gd: stop at |gradient| <= tol (1 + |w|)"),
    ),
    input_format="csv",
    summarize=_summarize,
    jsonable=_jsonable,
    runner=run_linreg,
)
