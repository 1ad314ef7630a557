"""R-hat and effective sample size of many parameters at once, as ArviZ 0.23 computes them.

:func:`arviz.rhat` and :func:`arviz.ess` loop in Python over the parameters (about half a
millisecond each per call), so a NUTS run with 10^4 to 10^5 per-frame parameters takes minutes
to diagnose. :func:`rhat` and :func:`ess` give the same numbers (Vehtari et al. 2021, as coded
in ``arviz/stats/diagnostics.py`` of ArviZ 0.23) with every step vectorized over the
parameters, a block of parameters at a time:

* chains are split in halves (the middle draw of an odd number of draws is left out);
* rank normalization over all the split draws of a parameter: ranks with ties averaged
  (``scipy.stats.rankdata(method="average")``), Blom's back-transform ``(r - 3/8) / (S + 1/4)``
  and the normal quantile function (``scipy.special.ndtri``, what ``scipy.stats.norm.ppf``
  calls). The ranks come from one ``argsort`` per parameter; ranks are integers or halves, so
  they, and the z-values, are bit-identical to ArviZ's;
* folding ``|x - median(x)|`` over the split draws; tail quantiles by the type-7 rule of
  ``scipy.stats.mstats.mquantiles`` (same arithmetic, so the same draws fall at or below them);
* autocovariances by FFT of all chains of all parameters at once, and Geyer's initial positive
  and initial monotone sequences written with cumulative operations: the first non-positive pair
  sum ends the sum, the monotone step is the running minimum of the pair sums before it, and the
  last even lag is added when ArviZ adds it. ``tau`` is clipped below at ``1 / log10(S)``.

Degenerate input follows ArviZ: NaN for a parameter with a NaN draw, for fewer than 4 draws,
and (R-hat only) for fewer than 2 chains; R-hat is NaN for a constant parameter (0/0) and the ESS
of a parameter whose transformed split draws are constant (within ``finfo(float).resolution``)
is their number ``S = 2 * chain * (draw // 2)``.

ArviZ computes chain variances with a one-pass numba kernel when numba is installed and with
``np.var`` otherwise; these functions use the two-pass ``np.var`` formula, so they agree with
the second to rounding (~1e-14 relative, measured) and with the first to that kernel's rounding
error: ~1e-13 relative for rank-normalized values and raw draws whose mean is within a few sd
of zero, but 1e-7 for raw draws ("split", "identity", "mean") at mean/sd = 1e4.

Parameters are taken in blocks of at most :data:`_BLOCK_DRAWS` draws on up to
:data:`_MAX_THREADS` threads (numpy's sorts and FFTs release the GIL), so memory beyond the input
is a few times 25 MB per thread (under 10x the input for small inputs). On 2 cores, 4 chains x
500 draws x 10,000 parameters take ~1 s for the rank R-hat and ~0.7 s for the bulk or tail
ESS, 7 to 9 times less than ArviZ.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import numpy as np
import scipy.special
from scipy.fftpack import next_fast_len

from bayesmix._errors import InputError

__all__ = ["ESS_METHODS", "RHAT_METHODS", "ess", "rhat"]

#: The R-hat methods: "rank" is max("z_scale", "folded") (ArviZ's default).
RHAT_METHODS = ("rank", "z_scale", "folded", "split", "identity")
#: The ESS methods: "tail" is the smaller of the 5% and 95% quantile ESS (ArviZ's default prob).
ESS_METHODS = ("bulk", "tail", "folded", "mean", "quantile")

#: Blom's offset of the rank back-transform (ArviZ ``_backtransform_ranks``).
_BLOM_C = 3 / 8
#: Draws per block of parameters. The working arrays of a block (sort indices, FFT buffers)
#: take about 12x its size in float64 (~25 MB), one block per thread at a time.
_BLOCK_DRAWS = 1 << 18
#: Threads at most (each holds one block's working arrays).
_MAX_THREADS = 8
#: Fewer draws than this in all are done in one block on the calling thread.
_MIN_THREADED_DRAWS = 1 << 16


def rhat(ary: Any, *, method: str = "rank") -> np.ndarray:
    """R-hat of every parameter, as :func:`arviz.rhat` of ArviZ 0.23.

    Parameters
    ----------
    ary : array_like, shape (chain, draw, *param_shape)
        Draws; real (float, integer or boolean) values.
    method : {"rank", "z_scale", "folded", "split", "identity"}, default "rank"
        ``"z_scale"``: split R-hat of the rank-normalized draws; ``"folded"``: of the
        rank-normalized folded draws ``|x - median|``; ``"rank"``: the larger of the two
        (Vehtari et al. 2021); ``"split"``: split R-hat of the raw draws; ``"identity"``:
        R-hat of the raw, unsplit chains.

    Returns
    -------
    numpy.ndarray, shape param_shape
        float64. NaN where a parameter has a NaN draw, is constant, or when there are fewer
        than 2 chains or 4 draws.

    Raises
    ------
    InputError
        ``method`` is not one of the above, or ``ary`` has fewer than 2 dimensions or is not real.

    Examples
    --------
    >>> import numpy as np
    >>> from bayesmix._convergence import rhat
    >>> draws = np.random.default_rng(0).normal(size=(4, 200, 3))
    >>> rhat(draws).shape
    (3,)
    """
    _check_method(method, RHAT_METHODS, "rhat")
    x, param_shape = _as_draws(ary)
    n_chain, n_draw, _ = x.shape
    if n_chain < 2 or n_draw < 4:
        return np.full(param_shape, np.nan)
    return _by_block(x, param_shape, lambda b: _rhat_block(b, method))


def ess(
    ary: Any,
    *,
    method: str = "bulk",
    prob: float | Sequence[float] | None = None,
) -> np.ndarray:
    """Effective sample size of every parameter, as :func:`arviz.ess` of ArviZ 0.23.

    Parameters
    ----------
    ary : array_like, shape (chain, draw, *param_shape)
        Draws; real (float, integer or boolean) values.
    method : {"bulk", "tail", "folded", "mean", "quantile"}, default "bulk"
        ``"bulk"``: split ESS of the rank-normalized draws; ``"tail"``: the smaller ESS of the
        indicators ``x <= q`` at the quantiles ``prob`` (default 0.05 and 0.95); ``"folded"``:
        of the rank-normalized ``|x - median|``; ``"mean"``: of the raw draws;
        ``"quantile"``: of the indicator at the quantile ``prob`` (required).
    prob : float or (float, float), optional
        Probability in [0, 1]: for ``"quantile"`` one value; for ``"tail"`` ``p`` (meaning
        ``(p, 1 - p)``) or a pair ``(low, high)``. Not allowed with the other methods.

    Returns
    -------
    numpy.ndarray, shape param_shape
        float64 (not relative: up to about ``chain * draw``, more for anticorrelated chains).
        NaN where a parameter has a NaN draw or when there are fewer than 4 draws.

    Raises
    ------
    InputError
        ``method`` is not one of the above, ``prob`` is missing, misplaced or outside [0, 1],
        or ``ary`` has fewer than 2 dimensions or is not real.

    Examples
    --------
    >>> import numpy as np
    >>> from bayesmix._convergence import ess
    >>> draws = np.random.default_rng(0).normal(size=(4, 200, 3))
    >>> ess(draws, method="tail").shape
    (3,)
    """
    _check_method(method, ESS_METHODS, "ess")
    probs = _check_prob(method, prob)
    x, param_shape = _as_draws(ary)
    _, n_draw, _ = x.shape
    if n_draw < 4:
        return np.full(param_shape, np.nan)
    return _by_block(x, param_shape, lambda b: _ess_block(b, method, probs))


# --------------------------------------------------------------------------- input checks


def _check_method(method: str, methods: tuple[str, ...], name: str) -> None:
    if not isinstance(method, str) or method not in methods:
        raise InputError(
            f"{name} method must be one of {', '.join(repr(m) for m in methods)}; got {method!r}."
        )


def _check_prob(method: str, prob: Any) -> tuple[float, ...]:
    """The probabilities of the quantile ESS: () for methods that take none."""
    if method not in ("tail", "quantile"):
        if prob is not None:
            raise InputError(
                f"prob applies to the ess methods 'tail' and 'quantile' only; got prob={prob!r} "
                f"with method {method!r}."
            )
        return ()
    if method == "quantile":
        if prob is None or isinstance(prob, Sequence | np.ndarray):
            raise InputError(
                f"ess method 'quantile' needs one probability prob in [0, 1]; got prob={prob!r}."
            )
        probs: tuple[Any, ...] = (prob,)
    elif prob is None:
        probs = (0.05, 0.95)
    elif isinstance(prob, Sequence | np.ndarray):
        probs = tuple(prob)
        if len(probs) != 2:
            raise InputError(
                f"ess method 'tail' takes prob=p or prob=(low, high); got {len(probs)} values."
            )
    else:
        probs = (prob, 1 - prob)
    for p in probs:
        if isinstance(p, bool) or not isinstance(p, int | float | np.integer | np.floating):
            raise InputError(f"prob must be a number in [0, 1]; got {p!r}.")
        if not 0 <= p <= 1:
            raise InputError(f"prob must be in [0, 1]; got {p!r}.")
    return tuple(float(p) for p in probs)


def _as_draws(ary: Any) -> tuple[np.ndarray, tuple[int, ...]]:
    """``ary`` as (chain, draw, P) real array and its param_shape."""
    a = np.asarray(ary)
    if a.ndim < 2:
        raise InputError(f"draws must have shape (chain, draw, *param_shape); got shape {a.shape}.")
    if a.dtype.kind in "biu":
        a = a.astype(np.float64)
    elif a.dtype.kind != "f":
        raise InputError(f"draws must be real numbers; got dtype {a.dtype}.")
    param_shape = a.shape[2:]
    return a.reshape(*a.shape[:2], int(np.prod(param_shape))), param_shape


def _workers() -> int:
    """Threads for the blocks: the usable cores, at most :data:`_MAX_THREADS`."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, _MAX_THREADS))


def _by_block(
    x: np.ndarray,
    param_shape: tuple[int, ...],
    func: Callable[[np.ndarray], np.ndarray],
) -> np.ndarray:
    """``func`` of blocks (B, chain, draw) of the (chain, draw, P) draws, joined to param_shape.

    Blocks hold at most :data:`_BLOCK_DRAWS` draws and run on up to :func:`_workers` threads
    (numpy's sorts and FFTs release the GIL).
    """
    n_chain, n_draw, n_par = x.shape
    out = np.empty(n_par)
    workers = _workers()
    per_param = max(1, n_chain * n_draw)
    step = max(1, min(_BLOCK_DRAWS // per_param, -(-n_par // workers)))
    if n_par * per_param < _MIN_THREADED_DRAWS:
        step = max(1, n_par)
    starts = range(0, n_par, step)

    def run(start: int) -> None:
        block = np.moveaxis(x[:, :, start : start + step], 2, 0)  # a view: split copies
        with np.errstate(divide="ignore", invalid="ignore"):  # 0/0 of constant parameters
            out[start : start + step] = func(block)

    if len(starts) <= 1 or workers == 1:
        for start in starts:
            run(start)
    else:
        with ThreadPoolExecutor(min(workers, len(starts)), "bayesmix-convergence") as pool:
            list(pool.map(run, starts))
    return out.reshape(param_shape)


# --------------------------------------------------------------------------- transforms


def _has_nan(x: np.ndarray) -> np.ndarray:
    """(B, ...) -> (B,): whether each parameter has a NaN (ArviZ ``not_valid``)."""
    return np.isnan(x).any(axis=tuple(range(1, x.ndim)))


def _split(x: np.ndarray) -> np.ndarray:
    """(B, chain, draw) -> (B, 2 chain, draw // 2) C-contiguous: first halves, then second."""
    b, n_chain, n_draw = x.shape
    half = n_draw // 2
    out = np.empty((b, 2 * n_chain, half), x.dtype)
    out[:, :n_chain] = x[:, :, :half]
    out[:, n_chain:] = x[:, :, n_draw - half :]
    return out


def _sorted_z(srt: np.ndarray, where: np.ndarray) -> np.ndarray:
    """z-values (B, S) of draws whose sorted values (B, S) are ``srt``, sorted position k of
    row b being the draw at flat index ``where[b, k]`` of the (B, S) draws.

    The rank of sorted position k is k + 1 unless the value is tied; a run of ties from
    position first to last gets (first + last) / 2 + 1, as ``rankdata(method="average")``.
    Ranks are integers or halves, looked up in a table of ``ndtri((r - c) / (S - 2c + 1))``.
    """
    b, size = srt.shape
    rank = np.arange(2 * size + 1) * 0.5
    table = scipy.special.ndtri((rank - _BLOM_C) / (size - 2 * _BLOM_C + 1))
    z = np.empty(b * size)
    z[where] = table[2::2]  # the ranks without ties
    new = srt[:, 1:] != srt[:, :-1]  # a new run starts at sorted position k (k >= 1)
    ties = ~new.all(axis=1)
    if ties.any():
        nt = new[ties]
        pos = np.arange(size)
        first = np.zeros((len(nt), size), np.intp)
        first[:, 1:] = np.where(nt, pos[1:], 0)
        np.maximum.accumulate(first, axis=1, out=first)
        last = np.full((len(nt), size), size - 1, np.intp)
        last[:, :-1] = np.where(nt, pos[:-1], size - 1)
        np.minimum.accumulate(last[:, ::-1], axis=1, out=last[:, ::-1])
        first += last
        del last
        first += 2
        z[where[ties]] = table[first]
    return z.reshape(b, size)


class _Ranked(NamedTuple):
    """The split draws (B, M, n) of a block in sorted order, for their rank normalization."""

    where: np.ndarray  #: (B, S) flat indices into the (B, S) draws, in sorted order
    srt: np.ndarray  #: (B, S) the sorted draws
    shape: tuple[int, ...]  #: (B, M, n)


def _rank(s: np.ndarray) -> _Ranked:
    """Sort each parameter's split draws (B, M, n): one ``argsort`` per parameter."""
    b, m, n = s.shape
    size = m * n
    where = np.argsort(s.reshape(b, size), axis=1)
    where += (np.arange(b) * size)[:, None]  # flat indices: plain take and put are fastest
    return _Ranked(where, s.reshape(-1)[where], s.shape)


def _z_bulk(r: _Ranked) -> np.ndarray:
    """Rank-normalized split draws (B, M, n), as ArviZ ``_z_scale``.

    ``norm.ppf((rankdata(s_b, "average") - c) / (S - 2c + 1))`` of each parameter b
    (S = M n, c = 3/8). Rows with a NaN draw come out as garbage: the caller masks them.
    """
    return _sorted_z(r.srt, r.where).reshape(r.shape)


def _z_folded(r: _Ranked) -> tuple[np.ndarray, np.ndarray]:
    """Rank-normalized folded split draws ``|s_b - median(s_b)|`` (B, M, n), as ``_z_fold``.

    Also returns whether each parameter's folded draws have a NaN (B,) (inf - inf: an infinite
    median). The median is the mean of the middle two sorted draws (S is even), as
    ``np.median`` computes it. The folded draws taken in the sorted order of the draws are two
    sorted runs (positions below S/2 reversed, then the rest), so a stable sort (timsort: a
    merge of the runs) orders them in linear time.
    """
    b, size = r.srt.shape
    half = size // 2
    med = np.mean(r.srt[:, half - 1 : half + 1], axis=1)
    runs = np.concatenate((np.arange(half - 1, -1, -1), np.arange(half, size)))
    fold = np.abs(r.srt[:, runs] - med[:, None])
    order = np.argsort(fold, axis=1, kind="stable")
    order += (np.arange(b) * size)[:, None]
    fold = fold.reshape(-1)[order]
    order = r.where[:, runs].reshape(-1)[order]
    return _sorted_z(fold, order).reshape(r.shape), np.isnan(fold).any(axis=1)


def _quantile_type7(x: np.ndarray, probs: tuple[float, ...]) -> list[np.ndarray]:
    """(B, chain, draw) -> per prob, (B,) quantiles over all draws, as ``mquantiles``.

    Same arithmetic as ``scipy.stats.mstats.mquantiles(a, p, alphap=1, betap=1)`` so the
    indicator ``x <= q`` matches ArviZ's even where q lands on tied draws.
    """
    b = len(x)
    flat = x.reshape(b, -1)
    n = flat.shape[1]
    alphap, betap = 1, 1
    p = np.asarray(probs, dtype=np.float64)
    aleph = n * p + (alphap + p * (1.0 - alphap - betap))
    k = np.floor(aleph.clip(1, n - 1)).astype(int)
    gamma = (aleph - k).clip(0, 1)
    kth = np.unique(np.concatenate((k - 1, k)))
    part = np.partition(flat, kth, axis=1)
    return [
        (1.0 - gamma[i : i + 1]) * part[:, k[i] - 1] + gamma[i : i + 1] * part[:, k[i]]
        for i in range(len(probs))
    ]


# --------------------------------------------------------------------------- R-hat


def _rhat_core(y: np.ndarray) -> np.ndarray:
    """Gelman-Rubin R-hat of chains (B, M, n) -> (B,) (ArviZ ``_rhat``, np.var path)."""
    y = np.asarray(y, dtype=np.float64)
    n = y.shape[2]
    chain_mean = y.mean(axis=2)
    chain_var = y.var(axis=2, ddof=1)
    between = n * chain_mean.var(axis=1, ddof=1)
    within = chain_var.mean(axis=1)
    return np.sqrt((between / within + n - 1) / n)


def _rhat_block(x: np.ndarray, method: str) -> np.ndarray:
    """R-hat of a block (B, chain, draw) by ``method``."""
    bad = _has_nan(x)
    if method == "identity":
        out = _rhat_core(np.ascontiguousarray(x))
    elif method == "split":
        out = _rhat_core(_split(x))
    else:
        ranked = _rank(_split(x))
        if method != "folded":
            out = _rhat_core(_z_bulk(ranked))
        if method != "z_scale":
            z_folded, folded_nan = _z_folded(ranked)
            tail = _rhat_core(z_folded)
            tail[folded_nan] = np.nan  # inf - inf where the median is infinite
            # "rank" is Python's max(bulk, tail): bulk unless tail is larger (NaN tail: bulk).
            out = tail if method == "folded" else np.where(tail > out, tail, out)
    out[bad] = np.nan
    return out


# --------------------------------------------------------------------------- ESS


def _ess_core(y: np.ndarray) -> np.ndarray:
    """Split-chain ESS of (B, M, n) chains -> (B,) (ArviZ ``_ess``, not relative).

    ArviZ walks the autocorrelations rho_t in pairs P_j = rho_2j + rho_2j+1 (rho_0 = 1) while
    ``t = 2j - 1 < n - 3`` and the previous pair sum is positive: the last pair computed is K,
    the first with P_K <= 0 (or the last allowed, ``(n - 3) // 2``). Pairs 1 .. K-1 are then
    made monotone (each no larger than the one before: a running minimum) and
    ``tau = -1 + 2 sum_{j<K} P_j + rho_2K``, where rho_2K counts if positive or if P_K >= 0.
    """
    y = np.asarray(y, dtype=np.float64)
    b, m, n = y.shape
    size = m * n
    bad = _has_nan(y)
    flat = y.reshape(b, size)
    const = (flat.max(axis=1) - flat.min(axis=1)) < np.finfo(float).resolution

    # Autocovariance of every chain (ArviZ ``autocov``: FFT of length next_fast_len(2n)).
    nfft = next_fast_len(2 * n)  # scipy.fftpack's (5-smooth), as ArviZ
    chain_mean = y.mean(axis=2)
    spec = np.fft.rfft(y - chain_mean[:, :, None], n=nfft, axis=2)
    # The inverse FFT is linear: the mean over chains of the autocovariances is the inverse FFT
    # of the mean power spectrum (ArviZ averages after; the two differ by rounding).
    power = spec.real**2
    power += spec.imag**2
    del spec
    acov_mean = np.fft.irfft(power.mean(axis=1), n=nfft, axis=1)[:, :n] / n  # (B, n)
    mean_var = acov_mean[:, 0] * n / (n - 1.0)
    var_plus = mean_var * (n - 1.0) / n
    if m > 1:
        var_plus = var_plus + chain_mean.var(axis=1, ddof=1)
    rho = 1.0 - (mean_var[:, None] - acov_mean) / var_plus[:, None]
    rho[:, 0] = 1.0

    jmax = max(0, (n - 3) // 2)
    pairs = rho[:, 0 : 2 * jmax + 2 : 2] + rho[:, 1 : 2 * jmax + 2 : 2]  # (B, jmax + 1)
    stop = ~(pairs > 0)
    last_pair = np.where(stop.any(axis=1), stop.argmax(axis=1), jmax)
    monotone = np.minimum.accumulate(pairs, axis=1)
    before = np.arange(jmax + 1) < last_pair[:, None]
    total = np.where(before, monotone, 0.0).sum(axis=1)
    rows = np.arange(b)
    even = rho[rows, 2 * last_pair]
    keep = (even > 0) | (pairs[rows, last_pair] >= 0)
    tau = -1.0 + 2.0 * total + np.where(keep, even, 0.0)
    floor = 1 / np.log10(size)
    tau = np.where(floor > tau, floor, tau)  # Python's max(tau, floor): NaN stays NaN
    out = size / tau
    out[np.isnan(rho[:, 1])] = np.nan
    out[const] = size
    out[bad] = np.nan
    return out


def _ess_block(x: np.ndarray, method: str, probs: tuple[float, ...]) -> np.ndarray:
    """ESS of a block (B, chain, draw) by ``method``."""
    bad = _has_nan(x)
    if method == "mean":
        out = _ess_core(_split(x))
    elif method == "bulk":
        out = _ess_core(_z_bulk(_rank(_split(x))))
    elif method == "folded":
        z_folded, folded_nan = _z_folded(_rank(_split(x)))
        out = _ess_core(z_folded)
        out[folded_nan] = np.nan
    else:
        x = np.ascontiguousarray(x)
        quantiles = _quantile_type7(x, probs)
        each = [_ess_core(_split(x <= q[:, None, None])) for q in quantiles]
        out = each[0]
        if method == "tail":
            # Python's min(low, high): low unless high is smaller.
            out = np.where(each[1] < out, each[1], out)
    out[bad] = np.nan
    return out
