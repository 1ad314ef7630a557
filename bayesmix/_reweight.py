"""Pixel weights re-made from the current fit: Poisson counts and Student-t outliers.

Each noise model whose pixel variance depends on the fit registers a re-weigher (dispatch on the
noise model's type). Per pass it gives every pixel its weight at the current fitted mean
(:mod:`bayesmix._weighted` turns them into statistics), and accumulates what it learns about the
noise itself (Poisson-Gaussian gain and read noise, Student-t degrees of freedom) and each
frame's log-likelihood under the exact pixel model, in the frame order the pass reads.
"""

from __future__ import annotations

import math
from typing import Any

import numba as nb
import numpy as np
from scipy.special import gammaln

from bayesmix._errors import InputError
from bayesmix.noise import PoissonGaussian, StudentT

__all__ = ["reweigher"]

_REWEIGHERS: dict[type, type] = {}


def _register(noise_type: type):
    def deco(cls: type) -> type:
        _REWEIGHERS[noise_type] = cls
        return cls

    return deco


def reweigher(noise: Any, base: Any, n_frames: int) -> Any:
    """The re-weigher of ``noise`` (a registered noise model type)."""
    return _REWEIGHERS[type(noise)](noise, base, n_frames)


class _Reweigher:
    per_frame = True

    def __init__(self, noise: Any, base: Any, n_frames: int) -> None:
        self.noise, self.base, self.n_frames = noise, base, n_frames
        self.ready = True

    def start(self, res: Any, n_terms: int, n_bg: int) -> None:
        """Begin a pass at the fit ``res``: the model fits ``n_terms`` free linear terms,
        ``n_bg`` of them background."""
        n_pix = np.asarray(res.stats.n, np.float64) + n_bg
        # The residual at a fitted mean is short of the noise by the terms fitted.
        self.dof_factor = n_pix / np.maximum(n_pix - n_terms, 1.0)
        self.sigma2 = float(res.sigma) ** 2

    def interval_sigma(self) -> float | None:
        """The scale the final intervals use, where it is not the fitted sigma (None)."""
        return None


@_register(PoissonGaussian)
class _PoissonGaussian(_Reweigher):
    """Weights 1 / (gain * mean + read^2); gain and read^2 by least squares of the residuals'
    squares on the fitted mean (each corrected for the terms fitted)."""

    def __init__(self, noise, base, n_frames):
        super().__init__(noise, base, n_frames)
        self.gain = noise.gain
        self.read2 = None if noise.read_sd is None else noise.read_sd**2
        self.ready = self.gain is not None and self.read2 is not None
        self.history: list[tuple[float, float]] = []

    def start(self, res, n_terms, n_bg):
        super().start(res, n_terms, n_bg)
        self.sums = np.zeros(5)  # weighted: n, sum m, sum m^2, sum r2, sum m r2

    def __call__(self, start, y, ok, mean):
        from bayesmix.noise import _MIN_COUNTS

        m = len(y)
        w = np.empty(y.shape)
        sums = np.empty((m, 5))
        ready = bool(self.ready)
        _pg_kernel(y, ok, mean, self.dof_factor[start : start + m], float(self.gain or 1.0),
                   float(self.read2 or 0.0), ready, _MIN_COUNTS, w, sums)  # fmt: skip
        # Least squares of r^2 on the fitted mean, weighted by 1 / var(r^2) ~ 1 / v^2 at the
        # current estimate (Poisson-like before there is one). The fitted mean is itself noisy
        # (about h v, h = terms / pixels): gain and read noise separate well only when the
        # frames' means span a range much wider than that (documented).
        self.sums += sums.sum(axis=0)
        return w

    def finish(self) -> None:
        n, sm, smm, sr, smr = self.sums
        if self.noise.gain is None and self.noise.read_sd is None:
            det = n * smm - sm * sm
            gain = (n * smr - sm * sr) / det if det > 0 else sr / max(sm, 1e-300)
            read2 = (sr - gain * sm) / n
            if read2 < 0:
                read2, gain = 0.0, smr / max(smm, 1e-300)
        elif self.noise.gain is None:
            read2 = self.read2
            gain = (smr - read2 * sm) / max(smm, 1e-300)
        else:
            gain = self.gain
            read2 = max((sr - gain * sm) / n, 0.0) if self.noise.read_sd is None else self.read2
        if not (gain > 0 and math.isfinite(gain)):
            raise InputError(
                "the residuals do not grow with the signal: a Poisson-Gaussian gain cannot be "
                f"learned from these frames (least squares gave {gain:.3g}); are they counts? "
                "pass PoissonGaussian(gain=...) or use noise='gaussian'"
            )
        self.history.append((gain, read2))
        self.gain, self.read2 = float(gain), float(read2)
        self.ready = True

    def sigma(self, sigma_user):
        return 1.0 if sigma_user is None else sigma_user

    def settled(self) -> bool:
        if len(self.history) < 2:
            return self.noise.gain is not None and self.noise.read_sd is not None
        (g0, v0), (g1, v1) = self.history[-2:]
        return abs(g1 - g0) <= 1e-3 * g1 and abs(v1 - v0) <= 1e-3 * max(v1, g1)

    def loglik(self, gauss: np.ndarray) -> np.ndarray:
        # The Gaussian approximation at the fitted variance (with its Jacobian).
        return gauss

    def params(self) -> dict[str, float]:
        return {"noise_gain": self.gain, "noise_read_sd": math.sqrt(self.read2)}


# Bins of log(u) for learning the degrees of freedom, u = squared standardised residual.
_LOG_U = np.linspace(-30.0, 30.0, 601)
_LOG_U_STEP = float(_LOG_U[1] - _LOG_U[0])


@nb.njit(parallel=True, cache=True, nogil=True)
def _t_kernel(y, ok, mean, bw, lbw, factor, sigma2, df, tconst, learn,
              w_out, t_ll, w_ll, counts, moments):  # fmt: skip
    """Per pixel of a block of frames: the EM weight, the t and weighted-Gaussian
    log-likelihoods (summed per frame), the histogram of log u (every 7th pixel: plenty for one
    number) and the sandwich's moments. One logarithm per pixel."""
    m, p = y.shape
    shared = bw.shape[0] == 1
    nb_ = counts.shape[1]
    half_log_s2 = 0.5 * np.log(sigma2)
    log_2pi_s2 = np.log(2.0 * np.pi * sigma2)
    log_ratio = np.log((df + 1.0) / df)
    for i in nb.prange(m):
        b_i = bw[0] if shared else bw[i]
        l_i = lbw[0] if shared else lbw[i]
        tl, wl = 0.0, 0.0
        s0, s1, s2, s3 = 0.0, 0.0, 0.0, 0.0
        for q in range(p):
            if not ok[i, q]:
                w_out[i, q] = 0.0
                continue
            r = y[i, q] - mean[i, q]
            r2 = r * r
            bq = b_i[q]
            u = r2 * bq / sigma2
            w = bq * (df + 1.0) / (df + u)
            w_out[i, q] = w
            lg = np.log1p(u / df)
            tl += tconst - half_log_s2 + 0.5 * l_i[q] - 0.5 * (df + 1.0) * lg
            # log w = log b + log((df + 1) / df) - log(1 + u / df)
            wl += 0.5 * (l_i[q] + log_ratio - lg - log_2pi_s2) - 0.5 * w * r2 / sigma2
            uc = u * factor[i]
            tw = (df + 1.0) / (df + uc)
            s0 += 1.0
            s1 += tw
            s2 += (df + 1.0) * (df - uc) / (df + uc) ** 2
            s3 += tw * tw * uc
            if learn and q % 7 == 0:
                lu = np.log(max(uc, 1e-300))
                k = int(np.ceil((lu - _LOG_U[0]) / _LOG_U_STEP))
                counts[i, min(max(k, 0), nb_ - 1)] += 1.0
        t_ll[i] = tl
        w_ll[i] = wl
        moments[i, 0] = s0
        moments[i, 1] = s1
        moments[i, 2] = s2
        moments[i, 3] = s3


@nb.njit(parallel=True, cache=True, nogil=True)
def _pg_kernel(y, ok, mean, factor, gain, read2, ready, min_counts, w_out, sums):
    """Per pixel: the Poisson-Gaussian weight at the fitted mean and the weighted sums of the
    least squares of r^2 on the mean (per frame)."""
    m, p = y.shape
    for i in nb.prange(m):
        a0, a1, a2, a3, a4 = 0.0, 0.0, 0.0, 0.0, 0.0
        for q in range(p):
            if not ok[i, q]:
                w_out[i, q] = 0.0
                continue
            mu = mean[i, q]
            r = y[i, q] - mu
            r2 = r * r * factor[i]
            if ready:
                var = gain * gain * max(mu / gain, min_counts) + read2
            else:
                var = max(abs(mu), 1e-300)
            om = 1.0 / (var * var)
            a0 += om
            a1 += om * mu
            a2 += om * mu * mu
            a3 += om * r2
            a4 += om * mu * r2
            w_out[i, q] = 1.0 / var if ready else 1.0
        sums[i, 0] = a0
        sums[i, 1] = a1
        sums[i, 2] = a2
        sums[i, 3] = a3
        sums[i, 4] = a4
_DFS = np.geomspace(0.3, 1000.0, 400)


def _t_const(df):
    return gammaln(0.5 * (df + 1.0)) - gammaln(0.5 * df) - 0.5 * np.log(df * np.pi)


@_register(StudentT)
class _StudentT(_Reweigher):
    """EM weights (df + 1) / (df + r^2 / s^2) per pixel; df by maximising the t likelihood of
    the standardised residuals (binned in log u); per frame, the t log-likelihood at the fit."""

    def __init__(self, noise, base, n_frames):
        super().__init__(noise, base, n_frames)
        self.df = 4.0 if noise.df is None else noise.df
        self.history = [self.df]

    def start(self, res, n_terms, n_bg):
        super().start(res, n_terms, n_bg)
        self.counts = np.zeros(len(_LOG_U) + 1)
        self.moments = np.zeros(4)  # pixels, sum w, sum dw r / dr, sum (w r)^2 / s^2
        self.t_loglik = np.zeros(self.n_frames)
        self.w_loglik = np.zeros(self.n_frames)

    def __call__(self, start, y, ok, mean):
        m = len(y)
        stop = start + m
        bw = np.asarray(self.base(start, y, ok, mean), np.float64)
        bw = bw.reshape(1, -1) if bw.ndim == 1 else np.ascontiguousarray(bw)
        with np.errstate(divide="ignore"):
            lbw = np.log(bw)
        w = np.empty(y.shape)
        t_ll, w_ll = np.empty(m), np.empty(m)
        learn = self.noise.df is None
        counts = np.zeros((m, len(_LOG_U) + 1)) if learn else np.zeros((1, 1))
        moments = np.empty((m, 4))
        _t_kernel(y, ok, mean, bw, lbw, self.dof_factor[start:stop], self.sigma2, self.df,
                  float(_t_const(self.df)), learn, w, t_ll, w_ll, counts, moments)  # fmt: skip
        self.t_loglik[start:stop] = t_ll
        self.w_loglik[start:stop] = w_ll
        self.moments += moments.sum(axis=0)
        if learn:
            self.counts += counts.sum(axis=0)
        return w

    def finish(self) -> None:
        if self.noise.df is not None:
            return
        centres = np.concatenate([[_LOG_U[0]], 0.5 * (_LOG_U[1:] + _LOG_U[:-1]), [_LOG_U[-1]]])
        u = np.exp(centres)
        ll = self.counts @ (_t_const(_DFS)[None, :]
                            - 0.5 * (_DFS + 1.0)[None, :] * np.log1p(u[:, None] / _DFS))
        self.df = float(_DFS[int(np.argmax(ll))])
        self.history.append(self.df)

    def sigma(self, sigma_user):
        return sigma_user

    def interval_sigma(self) -> float:
        """The scale that gives the weighted likelihood the spread of the estimator.

        The weights solve :math:`\\sum_p w(u_p) r_p \\phi_p = 0`; its sandwich covariance,
        with pixels exchangeable, is :math:`\\overline{w^2 r^2} / \\bar h^2\\, \\Phi^{-1}`
        (:math:`h = \\partial (w r) / \\partial r`), where the weighted Gaussian says
        :math:`\\sigma^2 / \\bar w\\, \\Phi^{-1}`: equal when the pixels are Student-t, honest
        when they are not (Gaussian pixels with a few outliers).
        """
        n, sw, sh, swu = self.moments
        return math.sqrt(self.sigma2 * (swu / n) * (sw / n)) / max(sh / n, 1e-12)

    def settled(self) -> bool:
        if self.noise.df is not None:
            return True
        # Above 100 degrees of freedom every weight of a pixel within 3 scales of the fit is
        # within 5% of 1: the pixels are Gaussian for x's purposes.
        prev, last = self.history[-2:]
        return abs(math.log(last / prev)) < 0.02 or min(prev, last) >= 100.0

    def loglik(self, gauss: np.ndarray) -> np.ndarray:
        # Laplace: the t likelihood at the fit, plus the weighted Gaussian's evidence over its
        # own value at the fit (the integral over the weights, with the converged weights).
        return self.t_loglik + gauss - self.w_loglik

    def params(self) -> dict[str, float]:
        return {"noise_df": self.df}
