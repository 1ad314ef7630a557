"""Vectorized R-hat and ESS (bayesmix._convergence) against ArviZ 0.23, parameter by parameter.

Tolerance: rank-normalized values and Geyer's truncation are computed the same way, so the only
differences are the order of floating-point sums (np.var over a batch vs one parameter, the
chain mean of the autocovariances taken before the inverse FFT) and, when numba is installed,
ArviZ's one-pass variance kernel ``sum(x^2)/n - mean^2``. Measured: 7e-15 relative against
ArviZ's numpy path, 2e-13 against its numba path (draws whose mean is within a few sd of 0),
so rtol 1e-10 leaves a wide margin. For raw draws far from zero the numba kernel itself loses
digits (1e-7 relative at mean/sd = 1e4); those are compared with ArviZ's numpy path.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from bayesmix._convergence import ESS_METHODS, RHAT_METHODS, ess, rhat
from bayesmix._errors import InputError

RTOL = 1e-10

#: (method, prob) pairs compared with az.ess.
ESS_CASES = [(m, None) for m in ESS_METHODS if m != "quantile"] + [
    ("quantile", 0.3),
    ("quantile", 0.5),
    ("tail", 0.1),
]


def _ar1(rng, phi, shape):
    """AR(1) chains along axis 1 of ``shape`` (chain, draw, ...), stationary start."""
    e = rng.normal(size=shape)
    x = np.empty(shape)
    x[:, 0] = e[:, 0] / np.sqrt(1 - phi**2)
    for t in range(1, shape[1]):
        x[:, t] = phi * x[:, t - 1] + e[:, t]
    return x


def _constant(rng):
    x = rng.normal(size=(4, 100, 6))
    x[2, :, 0] = 0.7  # one chain stuck
    x[:, :, 1] = 3.0  # the whole parameter constant: R-hat NaN, ESS = number of split draws
    x[:, 5, 2] = np.nan  # a NaN draw: NaN
    x[0, 3, 3] = np.inf  # an infinite draw: ranks still fine
    x[:, :60, 4] = np.inf  # infinite median: folded draws NaN
    x[1, :, 5] = -np.inf  # a chain at -inf
    return x


def _case(name):
    rng = np.random.default_rng(list(CASES).index(name))
    return CASES[name](rng)


CASES = {
    "iid": lambda rng: rng.normal(size=(4, 101, 8)),  # odd draws: middle draw left out
    "ar1_0.8": lambda rng: _ar1(rng, 0.8, (4, 200, 8)),
    "ar1_-0.3": lambda rng: _ar1(rng, -0.3, (4, 200, 8)),
    "shifted_chain": lambda rng: (
        rng.normal(size=(4, 100, 8)) + np.array([0, 1, 0, 0])[:, None, None]
    ),
    "constant": _constant,
    "ties_poisson": lambda rng: rng.poisson(2.0, size=(4, 100, 8)).astype(float),
    "ties_binary": lambda rng: rng.integers(0, 2, size=(3, 51, 8)),
    "one_chain": lambda rng: _ar1(rng, 0.5, (1, 100, 6)),
    "short": lambda rng: _ar1(rng, 0.9, (2, 7, 6)),
    "param_2d": lambda rng: _ar1(rng, 0.6, (3, 80, 3, 4)),
}


def _dataset(x):
    import xarray as xr

    dims = ("chain", "draw", "p", "q")[: x.ndim]
    return xr.Dataset({"v": (dims, x)})


def _assert_same(ours, theirs, rtol=RTOL):
    assert ours.shape == theirs.shape
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(theirs))
    np.testing.assert_allclose(ours, theirs, rtol=rtol, atol=0)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("name", list(CASES))
def test_matches_arviz(name):
    import arviz as az

    x = _case(name)
    ds = _dataset(x)
    for method in RHAT_METHODS:
        theirs = az.rhat(ds, method=method)["v"].values
        _assert_same(rhat(x, method=method), theirs)
    for method, prob in ESS_CASES:
        theirs = az.ess(ds, method=method, prob=prob)["v"].values
        _assert_same(ess(x, method=method, prob=prob), theirs)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_degenerate_cases_as_arviz():
    x = _case("constant")
    r = rhat(x)
    assert np.isnan(r[[1, 2]]).all() and np.isfinite(r[[0, 3, 4, 5]]).all()
    e = ess(x)
    assert e[1] == 400  # constant: the number of split draws, as ArviZ
    assert np.isnan(e[2])
    assert np.isnan(ess(x, method="folded")[4])  # |inf - inf|
    assert np.isnan(rhat(_case("one_chain"))).all()
    assert np.isnan(ess(x[:, :3])).all()  # fewer than 4 draws


def test_raw_draws_far_from_zero_match_arviz_numpy_path(monkeypatch):
    import arviz as az
    from arviz.utils import Numba

    monkeypatch.setattr(Numba, "numba_flag", False)
    x = _ar1(np.random.default_rng(5), 0.5, (4, 60, 6)) + 1e4
    ds = _dataset(x)
    for method in ("split", "identity", "rank"):
        _assert_same(rhat(x, method=method), az.rhat(ds, method=method)["v"].values, 1e-13)
    for method in ("mean", "bulk", "tail"):
        _assert_same(ess(x, method=method), az.ess(ds, method=method)["v"].values, 1e-13)


def test_z_values_bit_identical_to_arviz():
    from arviz.stats.diagnostics import _split_chains, _z_fold, _z_scale

    from bayesmix._convergence import _rank, _split, _z_bulk, _z_folded

    x = np.random.default_rng(3).poisson(3.0, size=(3, 41, 5)).astype(float)
    x[:, :, 4] = np.random.default_rng(4).normal(size=(3, 41))
    ranked = _rank(_split(np.moveaxis(x, 2, 0)))
    bulk, (folded, _) = _z_bulk(ranked), _z_folded(ranked)
    for i in range(x.shape[2]):
        split = _split_chains(x[:, :, i])
        np.testing.assert_array_equal(bulk[i], _z_scale(split))
        np.testing.assert_array_equal(folded[i], _z_fold(split))


def test_blocks_and_threads_do_not_change_numbers(monkeypatch):
    import bayesmix._convergence as conv

    x = _ar1(np.random.default_rng(6), 0.7, (4, 64, 50))
    whole = [rhat(x), ess(x), ess(x, method="tail")]
    monkeypatch.setattr(conv, "_BLOCK_DRAWS", 3 * 4 * 64)
    monkeypatch.setattr(conv, "_MIN_THREADED_DRAWS", 0)
    monkeypatch.setattr(conv, "_MAX_THREADS", 3)
    for ours, ref in zip([rhat(x), ess(x), ess(x, method="tail")], whole, strict=True):
        np.testing.assert_array_equal(ours, ref)


def test_input_types():
    x = np.random.default_rng(7).normal(size=(2, 50, 3))
    np.testing.assert_allclose(rhat(x.tolist()), rhat(x), rtol=0)
    assert rhat(x[:, :, 0]).shape == ()
    assert ess(np.zeros((2, 10, 0))).shape == (0,)
    x32 = x.astype(np.float32)
    assert ess(x32).dtype == np.float64


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (
            lambda x: rhat(x, method="bulk"),
            r"rhat method must be one of 'rank', 'z_scale', 'folded', 'split', 'identity'; got 'bulk'",
        ),
        (
            lambda x: ess(x, method="rank"),
            r"ess method must be one of 'bulk', 'tail', 'folded', 'mean', 'quantile'; got 'rank'",
        ),
        (lambda x: ess(x, method="quantile"), r"needs one probability"),
        (
            lambda x: ess(x, method="bulk", prob=0.1),
            r"prob applies to the ess methods 'tail' and 'quantile' only",
        ),
        (lambda x: ess(x, method="tail", prob=1.5), r"prob must be in \[0, 1\]"),
        (lambda x: rhat(x[0, 0]), r"shape \(chain, draw, \*param_shape\)"),
        (lambda x: rhat(x.astype(complex)), r"real numbers"),
    ],
)
def test_bad_input_raises(call, match):
    x = np.zeros((2, 10, 3))
    with pytest.raises(InputError, match=match):
        call(x)


@pytest.mark.parametrize(
    "which",
    [
        # One timing in the default run (the file stays under 5 s, half of it importing ArviZ);
        # the others with `-m slow`.
        "ess bulk",
        pytest.param("rhat rank", marks=pytest.mark.slow),
        pytest.param("ess tail", marks=pytest.mark.slow),
    ],
)
def test_timing_against_arviz(which):
    """4 chains x 500 draws x 10,000 parameters; ArviZ on 500 of them, scaled (printed)."""
    import arviz as az

    x = np.random.default_rng(8).standard_normal((4, 500, 10_000), dtype=np.float32)
    x = x.astype(np.float64)
    sub = _dataset(x[:, :, :500])
    az.rhat(sub.isel(p=slice(0, 2)))  # compile ArviZ's numba kernels outside the timing
    ours_call, theirs_call = {
        "rhat rank": (lambda: rhat(x), lambda: az.rhat(sub)),
        "ess bulk": (lambda: ess(x), lambda: az.ess(sub)),
        "ess tail": (lambda: ess(x, method="tail"), lambda: az.ess(sub, method="tail")),
    }[which]
    t0 = time.perf_counter()
    ours_call()
    ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    theirs_call()
    theirs = (time.perf_counter() - t0) * x.shape[2] / 500
    print(
        f"\n{which}, 4 x 500 x 10,000: bayesmix {ours:.2f} s, ArviZ {theirs:.2f} s (scaled "
        f"from 500 parameters): x{theirs / ours:.1f}"
    )
    assert theirs > ours
