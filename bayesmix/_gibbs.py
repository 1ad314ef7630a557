"""The K >= 3 references' Gibbs sampler on the CPU: one compiled kernel, frames in parallel.

The same chain as :func:`bayesmix._simplex.simplex_summary` (whitened coordinates, each
conditional a standard normal truncated to an interval, a Metropolis correction for a Dirichlet
with some alpha != 1), written as scalar code per frame (numba): on the CPU it runs about ten
times faster than the vectorised JAX version, whose small-K arrays do not vectorise well. The
random numbers are a counter-based hash of (seed, frame, step), so a frame's draws do not depend
on the number of threads, the chunking, or the other frames.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

__all__ = ["gibbs_summary"]

_SQRT1_2 = 1.0 / math.sqrt(2.0)
_BATCHES = 20


@nb.njit(cache=True, inline="always")
def _mix(z):
    """splitmix64's finaliser: a 64-bit hash."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@nb.njit(cache=True, inline="always")
def _uniform(key, counter):
    """A uniform number in (0, 1) from a 64-bit key and a counter."""
    z = _mix(key + counter * np.uint64(0x9E3779B97F4A7C15))
    return (np.float64(z >> np.uint64(11)) + 0.5) * (1.0 / 9007199254740992.0)


@nb.njit(cache=True)
def _ndtri(p):
    """The standard normal quantile (Wichura's AS 241, PPND16: relative error ~1e-16)."""
    q = p - 0.5
    if abs(q) <= 0.425:
        r = 0.180625 - q * q
        num = (((((((2509.0809287301226727 * r + 33430.575583588128105) * r
                    + 67265.770927008700853) * r + 45921.953931549871457) * r
                  + 13731.693765509461125) * r + 1971.5909503065514427) * r
                + 133.14166789178437745) * r + 3.387132872796366608)  # fmt: skip
        den = (((((((5226.495278852545925 * r + 28729.085735721942674) * r
                    + 39307.89580009271061) * r + 21213.794301586595867) * r
                  + 5394.1960214247511077) * r + 687.1870074920579083) * r
                + 42.313330701600911252) * r + 1.0)  # fmt: skip
        return q * num / den
    r = p if q < 0 else 1.0 - p
    r = math.sqrt(-math.log(r))
    if r <= 5.0:
        r -= 1.6
        num = (((((((7.7454501427834140764e-4 * r + 0.0227238449892691845833) * r
                    + 0.24178072517745061177) * r + 1.27045825245236838258) * r
                  + 3.64784832476320460504) * r + 5.7694972214606914055) * r
                + 4.6303378461565452959) * r + 1.42343711074968357734)  # fmt: skip
        den = (((((((1.05075007164441684324e-9 * r + 5.475938084995344946e-4) * r
                    + 0.0151986665636164571966) * r + 0.14810397642748007459) * r
                  + 0.68976733498510000455) * r + 1.6763848301838038494) * r
                + 2.05319162663775882187) * r + 1.0)  # fmt: skip
    else:
        r -= 5.0
        num = (((((((2.01033439929228813265e-7 * r + 2.71155556874348757815e-5) * r
                    + 0.0012426609473880784386) * r + 0.026532189526576123093) * r
                  + 0.29656057182850489123) * r + 1.7848265399172913358) * r
                + 5.4637849111641143699) * r + 6.6579046435011037772)  # fmt: skip
        den = (((((((2.04426310338993978564e-15 * r + 1.4215117583164458887e-7) * r
                    + 1.8463183175100546818e-5) * r + 7.868691311456132591e-4) * r
                  + 0.0148753612908506148525) * r + 0.13692988092273580531) * r
                + 0.59983220655588793769) * r + 1.0)  # fmt: skip
    val = num / den
    return -val if q < 0 else val


@nb.njit(cache=True)
def _tn(u, a, b):
    """A standard normal truncated to [a, b] by its inverse CDF (as ``_simplex._tn_draw``)."""
    flip = a > 0
    lo, hi = (-b, -a) if flip else (a, b)
    plo = 0.5 * math.erfc(-lo * _SQRT1_2)
    phi = 0.5 * math.erfc(-hi * _SQRT1_2)
    if phi > 1e-300:
        z = _ndtri(plo + u * (phi - plo))
    else:  # deep tail: Exp(|hi|) below hi
        z = hi + math.log(u) / max(-hi, 1.0)
    z = min(max(z, lo), hi)
    return -z if flip else z


@nb.njit(cache=True, inline="always")
def _line_draw(x, f, j, e_j, key, counter):
    """The new whitened coordinate ``j``: a standard normal truncated to where
    ``x + f[:, j] (new - e_j)`` stays >= 0, and the advanced counter."""
    lo, hi = -np.inf, np.inf
    for c in range(x.shape[0]):
        fc = f[c, j]
        if fc > 0:
            lo = max(lo, -x[c] / fc)
        elif fc < 0:
            hi = min(hi, -x[c] / fc)
    counter += np.uint64(1)
    a_j, b_j = e_j + lo, e_j + hi
    # One plain normal draw first, kept if it falls in [a, b] (the common case away from the
    # faces); else the inverse CDF. Both branches give the truncated normal.
    new = _ndtri(_uniform(key, counter))
    if not a_j <= new <= b_j:
        counter += np.uint64(1)
        new = _tn(_uniform(key, counter), a_j, b_j)
    return new, counter


@nb.njit(cache=True)
def _summarise(col, qs, quant):
    """Mean, sd and batch-means Monte Carlo error of one weight's draws (in draw order), then
    its quantiles at ``qs`` into ``quant`` (sorts ``col`` in place)."""
    n_draws = col.shape[0]
    per = n_draws // _BATCHES
    s = 0.0
    for d in range(n_draws):
        s += col[d]
    mu = s / n_draws
    v = 0.0
    for d in range(n_draws):
        v += (col[d] - mu) ** 2
    bv = 0.0
    for bi in range(_BATCHES):
        t = 0.0
        for d in range(bi * per, (bi + 1) * per):
            t += col[d]
        bv += (t / per - mu) ** 2
    col.sort()
    for qi in range(qs.shape[0]):
        pos = qs[qi] * (n_draws - 1)
        lo_i = int(pos)  # pos >= 0: truncation is the floor
        hi_i = min(lo_i + 1, n_draws - 1)
        quant[qi] = col[lo_i] + (pos - lo_i) * (col[hi_i] - col[lo_i])
    return mu, math.sqrt(v / (n_draws - 1)), math.sqrt(bv / (_BATCHES - 1) / _BATCHES)


@nb.njit(parallel=True, cache=True, nogil=True)
def _kernel(w, chol, alpha, s2, x0, index, seed, n_warmup, n_draws, qs, mh,
            mean, sd, quant, mc_se, accept):  # fmt: skip
    n, k = w.shape
    m = k - 1
    sigma = math.sqrt(s2)
    for i in nb.prange(n):
        mi = chol[i]
        h = mi.T @ mi
        # The plane sum x = 1, x = e_K + U t with U = [I; -1]: Ht = U^T H U, rhs = U^T H (w - e_K).
        ht = np.empty((m, m))
        rhs = np.zeros(m)
        for a in range(m):
            for b in range(m):
                ht[a, b] = h[a, b] - h[a, m] - h[m, b] + h[m, m]
            for j in range(k):
                rhs[a] += (h[a, j] - h[m, j]) * (w[i, j] - (1.0 if j == m else 0.0))
        low = np.linalg.cholesky(ht)
        that = np.linalg.solve(ht, rhs)
        li = np.linalg.inv(low)
        f = np.empty((k, m))  # x = xhat + F e, F = sigma U L^{-T}
        for j in range(m):
            tot = 0.0
            for a in range(m):
                f[a, j] = sigma * li[j, a]
                tot += li[j, a]
            f[m, j] = -sigma * tot
        x = np.empty(k)
        for j in range(k):
            x[j] = 0.999 * x0[i, j] + 0.001 / k
        e = np.zeros(m)
        for a in range(m):
            for b in range(a, m):
                e[a] += low[b, a] * (x[b] - that[b])
            e[a] /= sigma
        key = _mix(np.uint64(seed) * np.uint64(0x100000001B3) + np.uint64(index[i]))
        counter = np.uint64(0)
        draws = np.empty((k, n_draws))  # each weight's draws contiguous, for the sort
        xn = np.empty(k)
        acc = 0
        for it in range(n_warmup + n_draws):
            for j in range(m):
                new, counter = _line_draw(x, f, j, e[j], key, counter)
                delta = new - e[j]
                tot = 0.0
                for c in range(k):
                    xn[c] = max(x[c] + f[c, j] * delta, 0.0)
                    tot += xn[c]
                log_r = 0.0
                for c in range(k):
                    xn[c] /= tot
                    if mh and alpha[c] != 1.0:
                        log_r += (alpha[c] - 1.0) * (math.log(max(xn[c], 1e-300))
                                                     - math.log(max(x[c], 1e-300)))  # fmt: skip
                counter += np.uint64(1)
                if (not mh) or math.log(_uniform(key, counter)) < log_r:
                    for c in range(k):
                        x[c] = xn[c]
                    e[j] = new
                    acc += 1
            if it >= n_warmup:
                for c in range(k):
                    draws[c, it - n_warmup] = x[c]
        accept[i] = acc / ((n_warmup + n_draws) * m)
        for c in range(k):
            mean[i, c], sd[i, c], mc_se[i, c] = _summarise(draws[c], qs, quant[i, c])


def gibbs_summary(
    w: np.ndarray, chol: np.ndarray, alpha: np.ndarray, s2: float, x0: np.ndarray,
    index: np.ndarray, *, seed: int, n_warmup: int, n_draws: int, qs: tuple[float, ...],
) -> tuple[np.ndarray, ...]:  # fmt: skip
    """Posterior mean, sd, quantiles (N, K, Q), Monte Carlo error and acceptance rate of every
    frame's K weights given sigma^2, from ``n_draws`` draws after ``n_warmup``, chains started at
    ``x0`` (the MAP). ``index`` (N,) the frames' numbers, which seed their random streams."""
    n, k = w.shape
    out = (np.empty((n, k)), np.empty((n, k)), np.empty((n, k, len(qs))), np.empty((n, k)),
           np.empty(n))  # fmt: skip
    alpha = np.ascontiguousarray(alpha, np.float64)
    mh = bool(np.any(alpha != 1.0))
    _kernel(np.ascontiguousarray(w, np.float64), np.ascontiguousarray(chol, np.float64), alpha,
            float(s2), np.ascontiguousarray(x0, np.float64),
            np.ascontiguousarray(index, np.int64), int(seed), int(n_warmup), int(n_draws),
            np.asarray(qs, np.float64), mh, *out)  # fmt: skip
    return out


_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


@nb.njit(cache=True, inline="always")
def _log_ndtr(z):
    """log Phi(z): erfc down to -30, the asymptotic series below."""
    if z > -30.0:
        return math.log(0.5 * math.erfc(-z * _SQRT1_2))
    r = 1.0 / (z * z)
    return -0.5 * z * z - math.log(-z) - _HALF_LOG_2PI + math.log(1.0 - r + 3.0 * r * r)


@nb.njit(parallel=True, cache=True, nogil=True)
def _gain_kernel(w, chol, alpha, s2, w0, index, seed, n_warmup, n_draws, qs,
                 mean, sd, quant, mc_se, g_mean, g_sd, w_mean, x_best, accept):  # fmt: skip
    """K weights with a gain: w = g x on the positive orthant, Gibbs along whitened directions
    (each conditional a truncated normal) with a Metropolis correction for the prior factor
    prod w_k^(alpha_k - 1) (sum w)^(1 - sum alpha) (a Dirichlet on x times a flat prior on g)."""
    n, k = w.shape
    sigma = math.sqrt(s2)
    a_sum = 0.0
    for c in range(k):
        a_sum += alpha[c]
    for i in nb.prange(n):
        mi = chol[i]
        h = mi.T @ mi
        f = sigma * np.linalg.inv(mi)  # w = what + F e, e ~ N(0, I) before the bounds
        wi = w[i]
        x = np.empty(k)
        for c in range(k):
            x[c] = max(w0[i, c], 1e-9 * (abs(w0[i, c]) + 1.0))
        # e of the start: M (x - what) / sigma
        e = np.zeros(k)
        for a in range(k):
            for b in range(a, k):
                e[a] += mi[a, b] * (x[b] - wi[b])
            e[a] /= sigma
        hw = h @ wi
        key = _mix(np.uint64(seed) * np.uint64(0x100000001B3) + np.uint64(index[i]))
        counter = np.uint64(0)
        draws = np.empty((k, n_draws))
        gains = np.empty(n_draws)
        wsum = np.zeros(k)
        xn = np.empty(k)
        best = -np.inf
        acc = 0
        for it in range(n_warmup + n_draws):
            for j in range(k):
                new, counter = _line_draw(x, f, j, e[j], key, counter)
                delta = new - e[j]
                t_old, t_new = 0.0, 0.0
                log_r = 0.0
                for c in range(k):
                    xn[c] = max(x[c] + f[c, j] * delta, 0.0)
                    t_old += x[c]
                    t_new += xn[c]
                    if alpha[c] != 1.0:
                        log_r += (alpha[c] - 1.0) * (math.log(max(xn[c], 1e-300))
                                                     - math.log(max(x[c], 1e-300)))  # fmt: skip
                log_r += (1.0 - a_sum) * (math.log(max(t_new, 1e-300))
                                          - math.log(max(t_old, 1e-300)))  # fmt: skip
                counter += np.uint64(1)
                if math.log(_uniform(key, counter)) < log_r:
                    for c in range(k):
                        x[c] = xn[c]
                    e[j] = new
                    acc += 1
            if it >= n_warmup:
                d = it - n_warmup
                tot = 0.0
                for c in range(k):
                    tot += x[c]
                    wsum[c] += x[c]
                gains[d] = tot
                # The marginal density of the weights u = w / g (g integrated exactly):
                # log p(u) - log(a) / 2 + b^2 / (2 s2 a) + log Phi(b / (sigma sqrt a)).
                qa, qb, lp = 0.0, 0.0, 0.0
                for c in range(k):
                    u = x[c] / tot
                    draws[c, d] = u
                    qb += u * hw[c]
                    if alpha[c] != 1.0:
                        lp += (alpha[c] - 1.0) * math.log(max(u, 1e-300))
                    for c2 in range(k):
                        qa += u * h[c, c2] * x[c2] / tot
                lp += -0.5 * math.log(qa) + qb * qb / (2.0 * s2 * qa)
                lp += _log_ndtr(qb / (sigma * math.sqrt(qa)))
                if lp > best:
                    best = lp
                    for c in range(k):
                        x_best[i, c] = draws[c, d]
        accept[i] = acc / ((n_warmup + n_draws) * k)
        gm = 0.0
        for d in range(n_draws):
            gm += gains[d]
        gm /= n_draws
        gv = 0.0
        for d in range(n_draws):
            gv += (gains[d] - gm) ** 2
        g_mean[i] = gm
        g_sd[i] = math.sqrt(gv / (n_draws - 1))
        for c in range(k):
            w_mean[i, c] = wsum[c] / n_draws
            mean[i, c], sd[i, c], mc_se[i, c] = _summarise(draws[c], qs, quant[i, c])


def gibbs_gain_summary(
    w: np.ndarray, chol: np.ndarray, alpha: np.ndarray, s2: float, w0: np.ndarray,
    index: np.ndarray, *, seed: int, n_warmup: int, n_draws: int, qs: tuple[float, ...],
) -> tuple[np.ndarray, ...]:  # fmt: skip
    """With a gain: the weights' mean, sd, quantiles (N, K, Q), Monte Carlo error, the gain's
    mean and sd, E[w] (N, K), the draw of highest marginal density of the weights (N, K) and
    the acceptance rate, chains started at ``w0`` (N, K) on the positive orthant."""
    n, k = w.shape
    out = (np.empty((n, k)), np.empty((n, k)), np.empty((n, k, len(qs))), np.empty((n, k)),
           np.empty(n), np.empty(n), np.empty((n, k)), np.empty((n, k)), np.empty(n))
    _gain_kernel(np.ascontiguousarray(w, np.float64), np.ascontiguousarray(chol, np.float64),
                 np.ascontiguousarray(alpha, np.float64), float(s2),
                 np.ascontiguousarray(w0, np.float64), np.ascontiguousarray(index, np.int64),
                 int(seed), int(n_warmup), int(n_draws), np.asarray(qs, np.float64), *out)
    return out
