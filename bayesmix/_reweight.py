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

import numpy as np
from scipy.special import gammaln

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

    def start(self, res: Any, n_terms: int) -> None:
        """Begin a pass at the fit ``res`` (the model has ``n_terms`` linear terms)."""
        n_bg = n_terms - (2 if res.simplex is None else res.n_refs)
        n_pix = np.asarray(res.stats.n, np.float64) + n_bg
        # The residual at a fitted mean is short of the noise by the terms fitted.
        self.dof_factor = n_pix / np.maximum(n_pix - n_terms, 1.0)
        self.sigma2 = float(res.sigma) ** 2

    def base_weights(self, start, y, ok, mean):
        return np.broadcast_to(self.base(start, y, ok, mean), y.shape)


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

    def start(self, res, n_terms):
        super().start(res, n_terms)
        self.sums = np.zeros(5)  # weighted: n, sum m, sum m^2, sum r2, sum m r2

    def __call__(self, start, y, ok, mean):
        factor = self.dof_factor[start : start + len(y), None]
        r2 = np.where(ok, (y - mean) ** 2 * factor, 0.0)
        m = np.where(ok, mean, 0.0)
        # Least squares of r^2 on the fitted mean, weighted by 1 / var(r^2) ~ 1 / v^2 at the
        # current estimate (Poisson-like before there is one). The fitted mean is itself noisy
        # (about h v, h = terms / pixels): gain and read noise separate well only when the
        # frames' means span a range much wider than that (documented).
        if self.ready:
            var = self.noise.variance(mean, self.gain, self.read2)
        else:
            var = np.maximum(np.abs(m), np.finfo(np.float64).tiny)
        om = np.where(ok, 1.0 / var**2, 0.0)
        self.sums += [om.sum(), (om * m).sum(), (om * m * m).sum(), (om * r2).sum(),
                      (om * m * r2).sum()]  # fmt: skip
        if not self.ready:
            return np.ones(y.shape[1])
        return 1.0 / var

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
            raise ValueError(
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

    def start(self, res, n_terms):
        super().start(res, n_terms)
        self.counts = np.zeros(len(_LOG_U) + 1)
        self.moments = np.zeros(4)  # pixels, sum w, sum dw r / dr, sum (w r)^2 / s^2
        self.t_loglik = np.zeros(self.n_frames)
        self.w_loglik = np.zeros(self.n_frames)

    def __call__(self, start, y, ok, mean):
        bw = self.base_weights(start, y, ok, mean)
        r2 = (y - mean) ** 2
        u = np.where(ok, r2 * bw / self.sigma2, 0.0)
        df = self.df
        w = bw * (df + 1.0) / (df + u)
        stop = start + len(y)
        uc = u * self.dof_factor[start:stop, None]
        tw = (df + 1.0) / (df + uc)
        self.moments += [ok.sum(), np.sum(tw, where=ok),
                         np.sum((df + 1.0) * (df - uc) / (df + uc) ** 2, where=ok),
                         np.sum(tw * tw * uc, where=ok)]  # fmt: skip
        log_scale = 0.5 * np.log(self.sigma2 / np.where(ok, bw, 1.0))
        self.t_loglik[start:stop] = np.sum(np.where(
            ok, _t_const(df) - log_scale - 0.5 * (df + 1.0) * np.log1p(u / df), 0.0), axis=1)
        self.w_loglik[start:stop] = np.sum(np.where(
            ok, 0.5 * np.log(w / (2.0 * np.pi * self.sigma2)) - 0.5 * w * r2 / self.sigma2, 0.0),
            axis=1)  # fmt: skip
        if self.noise.df is None:
            lu = np.log(np.maximum((u * self.dof_factor[start:stop, None])[ok], 1e-300))
            idx = np.searchsorted(_LOG_U, lu)
            self.counts += np.bincount(idx, minlength=len(self.counts))
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

    def sandwich_sigma(self) -> float:
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
