"""The one quadrature reference for a frame's posterior of x given sigma, shared by the tests.

``prior(x) * exp(-lik (x - xhat)^2 / 2)`` on the prior's support (truncated normal, uniform,
Beta), integrated by ``scipy.integrate.quad``, its mode by ``scipy.optimize`` (polished on the
analytic gradient) and its quantiles by ``scipy.optimize.brentq`` on the quad CDF. It shares no
code with bayesmix. Used by test_posterior (the closed forms and the Beta grid), test_map (the
all-pixel posterior) and test_properties (Beta shapes just above one, beyond a bound).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import integrate, optimize

from bayesmix import priors as P

EPS = float(np.finfo(np.float64).eps)


class RefPosterior:
    """Unnormalised posterior of one frame, exp(log prior(x) - lik (x - xhat)^2 / 2), in numpy.

    ``log prior`` is written out here up to a constant (checked against ``prior.log_prob`` and
    scipy.stats in ``test_reference_log_prior_matches_prior_log_prob``); plain Python floats so
    that quad's thousands of evaluations stay fast.
    """

    def __init__(self, prior, xhat, lik):
        self.xhat, self.lik = float(xhat), float(lik)
        self.lo, self.hi = prior.bounds
        if isinstance(prior, P.TruncatedNormal):
            mu, tau = prior.loc, prior.scale
            self.log_prior = lambda x: -0.5 * ((x - mu) / tau) ** 2
            self.dlog_prior = lambda x: -(x - mu) / tau**2
        elif isinstance(prior, P.Uniform):
            self.log_prior = lambda x: 0.0
            self.dlog_prior = lambda x: 0.0
        else:
            a1, b1 = prior.a - 1.0, prior.b - 1.0

            def log_prior(x):
                out = 0.0
                if a1:
                    out += a1 * math.log(x) if x > 0 else -math.inf
                if b1:
                    out += b1 * math.log1p(-x) if x < 1 else -math.inf
                return out

            def dlog_prior(x):
                return (a1 / x if a1 else 0.0) - (b1 / (1.0 - x) if b1 else 0.0)

            self.log_prior, self.dlog_prior = log_prior, dlog_prior
        self._find_mode()
        self._find_support()
        self._moments()

    def logpost(self, x):
        return self.log_prior(x) - 0.5 * self.lik * (x - self.xhat) ** 2

    def grad(self, x):
        return self.dlog_prior(x) - self.lik * (x - self.xhat)

    def _find_mode(self):
        lo, hi = self.lo, self.hi
        res = optimize.minimize_scalar(
            lambda x: -self.logpost(x), bounds=(lo, hi), method="bounded", options={"xatol": 1e-14}
        )
        self.mode_brent = res.x
        # Bounded Brent stops at sqrt(eps) |x| (6e-6 sd for a 1e-3-wide peak at 0.4) and never
        # lands exactly on a bound, so polish: the log posterior is concave (the priors are
        # log-concave), hence the mode is a bound where the one-sided slope points outwards
        # (KKT), else the root of the analytic gradient.
        if math.isfinite(self.logpost(lo)) and self.grad(lo) <= 0:
            self.mode = lo
        elif math.isfinite(self.logpost(hi)) and self.grad(hi) >= 0:
            self.mode = hi
        else:
            left = lo if lo > 0 else 1e-300
            right = float(np.nextafter(hi, lo))
            self.mode = optimize.brentq(self.grad, left, right, xtol=1e-300, rtol=4 * EPS)
        self.at_bound = self.mode in (lo, hi)
        self.lpmax = self.logpost(self.mode)

    def _find_support(self):
        """[L, R]: where the density exceeds e^-60 of its peak (log-concave: one interval)."""
        lo, hi, x0, cut = self.lo, self.hi, self.mode, self.lpmax - 60.0

        def f(x):
            return self.logpost(x) - cut

        lo_in, hi_in = float(np.nextafter(lo, hi)), float(np.nextafter(hi, lo))
        self.L = lo if x0 == lo or f(lo_in) >= 0 else optimize.brentq(f, lo_in, x0, rtol=4 * EPS)
        self.R = hi if x0 == hi or f(hi_in) >= 0 else optimize.brentq(f, x0, hi_in, rtol=4 * EPS)
        # break points from the mode outwards, geometric, so quad resolves a narrow peak or a
        # steep exponential against a bound
        fr = np.array([1e-4, 1e-3, 1e-2, 0.05, 0.15, 0.3, 0.6])
        pts = np.r_[x0 - (x0 - self.L) * fr, x0, x0 + (self.R - x0) * fr]
        self.pts = np.unique(pts[(pts > self.L) & (pts < self.R)])

    def dens(self, x):
        return math.exp(self.logpost(x) - self.lpmax)

    def _quad(self, g, a, b, epsabs=0.0):
        pts = self.pts[(self.pts > a) & (self.pts < b)]
        val, _ = integrate.quad(
            g, a, b, points=pts if pts.size else None, epsabs=epsabs, epsrel=1e-11, limit=500
        )
        return val

    def _moments(self):
        x0 = self.mode
        self.z = self._quad(self.dens, self.L, self.R)
        # The first moment about the mode can be ~0 (a symmetric posterior): an absolute target
        # of 1e-13 z (R - L), i.e. ~1e-12 sd on the mean, instead of an unreachable relative one.
        eps_m1 = 1e-13 * self.z * (self.R - self.L)
        m1 = self._quad(lambda x: (x - x0) * self.dens(x), self.L, self.R, eps_m1)
        self.mean = x0 + m1 / self.z
        var = self._quad(lambda x: (x - self.mean) ** 2 * self.dens(x), self.L, self.R) / self.z
        self.sd = math.sqrt(var)

    def cdf(self, x):
        return self._quad(self.dens, self.L, x) / self.z

    def quantile(self, q):
        return optimize.brentq(
            lambda x: self.cdf(x) - q, self.L, self.R, xtol=1e-12 * self.sd, rtol=4 * EPS
        )
