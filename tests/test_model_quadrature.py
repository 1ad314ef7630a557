"""The background basis and the per-frame gain against brute-force quadrature of the pixels.

Model (frame y of n pixels, references A and B, known noise scale sigma)::

    y = g (x A + (1 - x) B) + sum_p c_p N_p + noise,    noise ~ Normal(0, sigma^2) i.i.d.

with a flat prior on the background coefficients c (improper) and on the gain g > 0 (improper, on
(0, inf); g = 1 without gain), and the prior ``prior`` on x. ``fit_map(..., sigma=...)`` reports
the posterior of each x given sigma, with g and c integrated out.

The reference here shares no maths with bayesmix: the unnormalised joint density
``prior(x) * exp(-||y - g m(x) - N c||^2 / (2 sigma^2))``, ``m(x) = x A + (1 - x) B``, is summed
over a grid in (x, g, c), in log space (``scipy.special.logsumexp``); every nuisance integral is
numeric. The only algebra used is the expansion of the squared norm into the pixel sums ``r.r``,
``F_j.r`` and ``F_j.F_k`` (``F_j`` the pixel column of nuisance j); the cubature check below
evaluates the plain per-pixel sum instead. The grid:

- x: a coarse pass over the prior's bounds finds where the posterior lives (log density within
  ``X_DROP`` of its peak), a fine trapezoid grid of ``N_X`` nodes covers that; quantiles by
  inverting the cumulative trapezoid sum;
- at each x, the nuisances (g > 0 and/or c): a tensor Gauss-Legendre grid (``N_NODES`` a side)
  on a box of ``K_SD`` sd around the least-squares (g, c) at that x, its axes sheared along the
  Cholesky factor of their covariance (Jacobian 1), the g axis cut at g = 0. The least squares
  only place the nodes; the value is the weighted sum of the integrand over them. The reference
  raises if the outermost nodes of any box carry non-negligible density (within ``EDGE_DROP``
  in log of the joint peak), so a misplaced box cannot pass silently.

How accurate it is: ``test_reference_converged`` (marked slow) reruns every frame of every case
with twice the nodes per nuisance axis, a box half as wide again and twice the x nodes: the mean
and sd of x, g and c move by < 3e-6 of their posterior sd, the quantiles by < 1e-4 sd (linear
interpolation of the cdf), against a test tolerance ``TOL_SD`` = 0.05 sd. The reference also
matches the closed-form truncated normal (no gain, with and without background) to < 1e-4 sd,
and its nuisance integral matches adaptive ``scipy.integrate.cubature`` of the per-pixel sum
(cut at g = 0 included) to 1e-7 relative (measured: 1e-9), which bounds its effect on the mean
of x by ~2e-7 sd.

Each frame of a case is made with a different character: high signal (iron-rich), low signal
(gain near 0, x barely seen), x near a bound of the prior, x mid-range; and a frame with no
mixture at all (g = 0), whose posterior of x must stay close to the prior.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import scipy_logpdf
from scipy import integrate, special, stats

import bayesmix
from bayesmix import priors as P

#: Agreement required between bayesmix and the quadrature, in posterior sd (of x, g or c).
TOL_SD = 0.05
#: Half-width of the nuisance box at each x, in conditional sd.
K_SD = 9.0
#: Gauss-Legendre nodes per nuisance axis.
N_NODES = 32
#: Nodes of the fine x grid (over where the posterior lives) and of the coarse one (the bounds).
N_X, N_COARSE = 1201, 161
#: The posterior of x is followed down to exp(-X_DROP) of its peak.
X_DROP = 40.0
#: The box edges must lie below exp(-EDGE_DROP) of the peak.
EDGE_DROP = 25.0
QS = (0.05, 0.5, 0.95)


# ---------------------------------------------------------------------------------------------
# The reference: grid quadrature of the all-pixel likelihood
# ---------------------------------------------------------------------------------------------


def background_basis(kind, shape):
    """The background images N_p, shape (P, *shape), built from the model's definition.

    Parameters
    ----------
    kind : None, 'constant', 'linear' or ndarray
        None: no background (P = 0); 'constant': one image of ones; 'linear': ones, then for
        each frame axis a ramp ``linspace(-1, 1, size)`` along it; an array is used as given.
    shape : tuple of int
        Frame shape S.
    """
    if kind is None:
        return np.zeros((0, *shape))
    if isinstance(kind, np.ndarray):
        return np.asarray(kind, np.float64)
    out = [np.ones(shape)]
    if kind == "linear":
        for axis, size in enumerate(shape):
            others = [i for i in range(len(shape)) if i != axis]
            out.append(np.broadcast_to(np.expand_dims(np.linspace(-1.0, 1.0, size), others), shape))
    return np.stack(out)


def quadrature_posterior(
    y, ref_a, ref_b, basis, gain, sigma, prior, *, k_sd=K_SD, n_nodes=N_NODES, n_x=N_X,
    n_coarse=N_COARSE,
):  # fmt: skip
    """Posterior of x (and of g and c) for one frame by brute-force grid quadrature.

    Parameters
    ----------
    y, ref_a, ref_b : ndarray, shape S
        The frame and the references.
    basis : ndarray, shape (P, *S)
        Background images (P may be 0).
    gain : bool
        Whether the frame has a free gain g > 0 (flat prior); else g = 1.
    sigma : float
        Known noise scale.
    prior : bayesmix prior on x
        Its density is taken from scipy.stats (``conftest.scipy_logpdf``).
    k_sd : float
        Half-width of the nuisance box at each x, in conditional sd.
    n_nodes : int
        Gauss-Legendre nodes per nuisance axis.
    n_x, n_coarse : int
        Nodes of the fine and the coarse x grids.

    Returns
    -------
    dict
        ``mean``, ``sd``, ``quantiles`` (at ``QS``) of x; ``g_mean``, ``g_sd``, ``gx_mean``
        (E[g x]) with gain; ``c_mean``, ``c_sd`` (shape (P,)); ``edge``, the largest joint log
        density on the outermost nodes of the boxes relative to the peak; ``log_post``, the
        unnormalised log posterior of x as a function (for checks).
    """
    y = np.asarray(y, np.float64).ravel()
    a = np.asarray(ref_a, np.float64).ravel()
    b = np.asarray(ref_b, np.float64).ravel()
    nb = np.asarray(basis, np.float64).reshape(len(basis), y.size)
    lo, hi = prior.bounds
    k = len(nb) + int(gain)  # nuisances: (g, c_1..c_P) or (c_1..c_P)

    # Tensor Gauss-Legendre grid on the unit cube [0, 1]^k, mapped to each x's box below.
    t, wt = np.polynomial.legendre.leggauss(n_nodes)
    t, wt = 0.5 * (t + 1.0), 0.5 * wt
    if k:
        unit = np.stack(np.meshgrid(*[t] * k, indexing="ij"), axis=-1).reshape(-1, k)
        log_unit_w = np.sum(np.log(np.meshgrid(*[wt] * k, indexing="ij")), axis=0).ravel()
    else:
        unit, log_unit_w = np.zeros((1, 0)), np.zeros(1)
    low_face, high_face = unit == t[0], unit == t[-1]  # the outermost nodes, (T, k)

    def features(x):
        """The nuisances' pixel columns at weights x, shape (len(x), k, n), and the offset."""
        m = x[:, None] * a + (1.0 - x[:, None]) * b
        rest = np.broadcast_to(nb, (len(x), *nb.shape))
        if gain:
            return np.concatenate([m[:, None, :], rest], axis=1), np.zeros_like(m)
        return rest, m

    def chunk(x):
        """Nuisance integral at each x: log of it, conditional moments, peak and edge height."""
        feats, off = features(x)
        r = y - off
        rr = np.einsum("cn,cn->c", r, r)
        fr = np.einsum("cjn,cn->cj", feats, r)
        ff = np.einsum("cjn,ckn->cjk", feats, feats)
        nc = len(x)
        if k:
            # The box at this x: around the least-squares (g, c), sheared along the Cholesky
            # factor of their covariance sigma^2 ff^-1 (theta = centre + shear phi, shear unit
            # lower triangular: Jacobian 1, g = centre[0] + phi[0]), half-width k_sd sd of each
            # phi; the g axis is cut at g = 0 and then reaches to where the density has fallen
            # by exp(-k_sd^2 / 2) from the cut. This only places the nodes: the integral is the
            # sum of the integrand over them, and the edge check below catches a misplaced box.
            centre = np.linalg.solve(ff, fr[..., None])[..., 0]
            chol = np.linalg.cholesky(sigma**2 * np.linalg.inv(ff))
            sd = np.diagonal(chol, axis1=1, axis2=2)
            shear = chol / sd[:, None, :]
            left, right = -k_sd * sd, k_sd * sd
            cut = np.zeros((nc, k), bool)
            if gain:
                cut[:, 0] = -centre[:, 0] > left[:, 0]
                left[:, 0] = np.maximum(left[:, 0], -centre[:, 0])
                right[:, 0] = np.hypot(np.maximum(-centre[:, 0], 0.0), k_sd * sd[:, 0])
            phi = left[:, None, :] + (right - left)[:, None, :] * unit  # (nc, T, k)
            theta = centre[:, None, :] + np.einsum("ctj,cij->cti", phi, shear)
            log_w = log_unit_w + np.sum(np.log(right - left), axis=1)[:, None]
        else:
            theta, log_w, cut = np.zeros((nc, 1, 0)), np.zeros((nc, 1)), np.zeros((nc, 0), bool)
        # SSE at every (x, theta) node from the pixel sums (k <= 3 nuisances, elementwise).
        sse = np.repeat(rr[:, None], theta.shape[1], axis=1)
        for j in range(k):
            inner = -2.0 * fr[:, j, None] + ff[:, j, j, None] * theta[:, :, j]
            for jj in range(j + 1, k):
                inner += 2.0 * ff[:, j, jj, None] * theta[:, :, jj]
            sse += inner * theta[:, :, j]
        raw = -0.5 * sse / sigma**2
        logl = raw + log_w
        top = logl.max(axis=1, keepdims=True)
        e = np.exp(logl - top)
        s0 = e.sum(axis=1)
        mom1 = np.einsum("ct,ctj->cj", e, theta) / s0[:, None]
        mom2 = np.einsum("ct,ctj->cj", e, theta**2) / s0[:, None]
        # The cut at g = 0 is an end of the domain, not an edge of the box.
        outer = np.any((low_face & ~cut[:, None, :]) | high_face, axis=2)  # (nc, T)
        edge = np.where(outer, raw, -np.inf).max(axis=1)
        return top[:, 0] + np.log(s0), mom1, mom2, raw.max(axis=1), edge

    def log_post(xs):
        """Unnormalised log posterior of x at ``xs``, conditional moments of the nuisances, and
        the largest joint log density on the box edges relative to the joint peak."""
        parts = [chunk(xs[i : i + 64]) for i in range(0, len(xs), 64)]
        log_m, mom1, mom2, top, edge = (np.concatenate(v) for v in zip(*parts, strict=True))
        lp = scipy_logpdf(prior, xs)
        return lp + log_m, mom1, mom2, np.max(lp + edge) - np.max(lp + top)

    coarse = np.linspace(lo, hi, n_coarse)
    lp, *_ = log_post(coarse)
    keep = np.flatnonzero(lp > lp.max() - X_DROP)
    x_lo, x_hi = coarse[max(keep[0] - 1, 0)], coarse[min(keep[-1] + 1, n_coarse - 1)]
    xs = np.linspace(x_lo, x_hi, n_x)
    lp, m1, m2, edge_height = log_post(xs)
    if edge_height > -EDGE_DROP:
        raise AssertionError(f"quadrature box too narrow: edge at {edge_height:.1f} of the peak")
    w = np.full(n_x, xs[1] - xs[0])
    w[[0, -1]] *= 0.5
    log_z = special.logsumexp(lp, b=w)
    dens = np.exp(lp - log_z)
    px = dens * w  # posterior mass at each node (trapezoid)
    mean = float(px @ xs)
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (dens[1:] + dens[:-1]) * np.diff(xs))])
    th_mean = px @ m1
    out = {
        "mean": mean,
        "sd": float(np.sqrt(px @ (xs - mean) ** 2)),
        "quantiles": np.interp(QS, cdf / cdf[-1], xs),
        "c_mean": th_mean[int(gain) :],
        "c_sd": np.sqrt(np.maximum(px @ m2 - th_mean**2, 0.0))[int(gain) :],
        "edge": edge_height,
        "log_post": lambda x: log_post(np.asarray(x, np.float64))[0],
    }
    if gain:
        out["g_mean"] = float(th_mean[0])
        out["g_sd"] = float(np.sqrt(px @ m2[:, 0] - th_mean[0] ** 2))
        out["gx_mean"] = float(px @ (xs * m1[:, 0]))
    return out


# ---------------------------------------------------------------------------------------------
# The cases: frames of different character, made from known (x, g, c) with fixed noise
# ---------------------------------------------------------------------------------------------


def _images(shape, seed):
    """Two distinct positive reference images (fixed seed)."""
    rng = np.random.default_rng(seed)
    return 1.0 + 0.35 * rng.normal(size=shape), 0.8 + 0.35 * rng.normal(size=shape)


def _featureless_b(shape, seed):
    """A structured reference A and a nearly flat, darker reference B (fixed seed)."""
    rng = np.random.default_rng(seed)
    return 2.0 + 0.5 * rng.normal(size=shape), 0.5 + 0.05 * rng.normal(size=shape)


def _spectra(size):
    """Two L-edge-like reference spectra: peaks at different energies on a common edge step."""
    e = np.linspace(0.0, 1.0, size)
    step = 0.4 / (1.0 + np.exp(-(e - 0.55) / 0.04))
    ref_a = 0.2 + step + 1.0 * np.exp(-0.5 * ((e - 0.35) / 0.05) ** 2)
    ref_b = 0.2 + step + 0.8 * np.exp(-0.5 * ((e - 0.45) / 0.05) ** 2)
    return ref_a, ref_b


def _blob(shape):
    """A user background image: a smooth off-centre blob (for ``background=<array>``)."""
    ii, jj = np.meshgrid(*(np.arange(s, dtype=float) for s in shape), indexing="ij")
    return np.exp(-0.5 * ((ii - 1.0) ** 2 + (jj - 3.0) ** 2) / 2.0**2)[None]


#: Per case: frame shape, references, background, gain, sigma, prior and the frames as
#: (label, x, g, c) before noise.
CASES = {
    "constant-gain": dict(
        shape=(4, 5),
        refs=lambda: _images((4, 5), 7),
        background="constant",
        gain=True,
        sigma=0.05,
        prior=P.TruncatedNormal(0.55, 0.15, 0.0, 1.0),
        frames=[
            ("iron-rich", 0.92, 1.6, [0.3]),
            ("low-signal", 0.40, 0.06, [0.5]),
            ("near-bound", 0.0, 1.5, [-0.2]),
            ("mid-range", 0.50, 0.5, [0.1]),
        ],
    ),
    "custom-gain": dict(
        shape=(4, 5),
        refs=lambda: _images((4, 5), 8),
        background="blob",
        gain=True,
        sigma=0.05,
        prior=P.TruncatedNormal(0.55, 0.15, 0.0, 1.0),
        frames=[
            ("iron-rich", 0.95, 1.4, [0.6]),
            ("low-signal", 0.6, 0.03, [1.0]),
            ("near-bound", 0.02, 1.2, [-0.3]),
            ("mid-range", 0.45, 0.7, [0.2]),
        ],
    ),
    # B nearly featureless and darker than A: the frame's brightness is shared between the gain,
    # x and the background, so g and x are strongly correlated a posteriori.
    "featureless-b": dict(
        shape=(4, 5),
        refs=lambda: _featureless_b((4, 5), 0),
        background="constant",
        gain=True,
        sigma=0.1,
        prior=P.TruncatedNormal(0.55, 0.15, 0.0, 1.0),
        frames=[
            ("dim", 0.5, 0.3, [1.0]),
            ("dim-iron-poor", 0.2, 0.5, [0.0]),
            ("bright", 0.5, 1.0, [0.0]),
        ],
    ),
    "linear-spectra": dict(
        shape=(24,),
        refs=lambda: _spectra(24),
        background="linear",
        gain=False,
        sigma=0.08,
        prior=P.TruncatedNormal(0.55, 0.15, 0.0, 1.0),
        frames=[
            ("iron-rich", 0.97, 1.0, [0.2, 0.1]),
            ("near-bound", 0.0, 1.0, [-0.1, 0.3]),
            ("mid-range", 0.5, 1.0, [0.5, -0.2]),
            ("strong-background", 0.75, 1.0, [3.0, 1.5]),
        ],
    ),
    "gain-beta": dict(
        shape=(4, 4),
        refs=lambda: _images((4, 4), 9),
        background=None,
        gain=True,
        sigma=0.05,
        prior=P.Beta(2.0, 3.0),
        frames=[
            ("iron-rich", 0.9, 1.5, []),
            ("low-signal", 0.5, 0.02, []),
            ("near-bound", 0.02, 1.2, []),
            ("mid-range", 0.5, 0.8, []),
        ],
    ),
    "gain-uniform": dict(
        shape=(4, 4),
        refs=lambda: _images((4, 4), 9),
        background=None,
        gain=True,
        sigma=0.05,
        prior=P.Uniform(0.0, 1.0),
        frames=[
            ("iron-rich", 0.9, 1.5, []),
            ("low-signal", 0.5, 0.02, []),
            ("near-bound", 0.99, 1.2, []),
            ("mid-range", 0.5, 0.8, []),
        ],
    ),
    "no-mixture-constant": dict(
        shape=(4, 5),
        refs=lambda: _images((4, 5), 7),
        background="constant",
        gain=True,
        sigma=0.05,
        prior=P.TruncatedNormal(0.55, 0.15, 0.0, 1.0),
        frames=[("no-mixture", 0.5, 0.0, [0.4]), ("no-mixture-dark", 0.5, 0.0, [0.0])],
    ),
    "no-mixture-none": dict(
        shape=(4, 5),
        refs=lambda: _images((4, 5), 7),
        background=None,
        gain=True,
        sigma=0.05,
        prior=P.TruncatedNormal(0.55, 0.15, 0.0, 1.0),
        frames=[("no-mixture", 0.5, 0.0, [])],
    ),
}


def make_case(name, seed=0):
    """The frames, references, background argument and basis of case ``name``.

    Returns
    -------
    dict
        ``frames`` (N, *S), ``ref_a``, ``ref_b``, ``background`` (the ``fit_map`` argument),
        ``basis`` (P, *S), ``gain``, ``sigma``, ``prior``, ``labels``.
    """
    spec = CASES[name]
    shape = spec["shape"]
    ref_a, ref_b = spec["refs"]()
    background = _blob(shape) if spec["background"] == "blob" else spec["background"]
    basis = background_basis(background, shape)
    rng = np.random.default_rng(seed)
    frames = []
    for _, x, g, c in spec["frames"]:
        clean = g * (x * ref_a + (1.0 - x) * ref_b) + np.tensordot(c, basis, axes=1)
        frames.append(clean + spec["sigma"] * rng.normal(size=shape))
    return dict(
        frames=np.stack(frames),
        ref_a=ref_a,
        ref_b=ref_b,
        background=background,
        basis=basis,
        gain=spec["gain"],
        sigma=spec["sigma"],
        prior=spec["prior"],
        labels=[f[0] for f in spec["frames"]],
    )


def reference(case, **grid):
    """The quadrature posterior of every frame of a case (``make_case`` output)."""
    return [
        quadrature_posterior(
            y,
            case["ref_a"],
            case["ref_b"],
            case["basis"],
            case["gain"],
            case["sigma"],
            case["prior"],
            **grid,
        )
        for y in case["frames"]
    ]


_REFERENCES: dict[str, tuple[dict, list[dict]]] = {}


def case_and_reference(name):
    """``make_case(name)`` and its quadrature posteriors, computed once per session."""
    if name not in _REFERENCES:
        case = make_case(name)
        _REFERENCES[name] = (case, reference(case))
    return _REFERENCES[name]


# ---------------------------------------------------------------------------------------------
# The reference checked on its own
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("background", [None, "constant", "linear"])
@pytest.mark.parametrize("x_true", [0.9, 0.5, 0.02, -0.05])
def test_reference_matches_closed_form(background, x_true):
    """Without gain the posterior of x is a truncated normal: precision dd/sigma^2 + 1/tau^2,
    dd = ||(A - B)_perp||^2 and xhat = (y - B)_perp.(A - B)_perp / dd, with _perp the part
    orthogonal to the background images (least squares); scipy.stats.truncnorm gives its mean,
    sd and quantiles. The quadrature (which integrates the background numerically) must match
    them to 1e-3 sd (it does to ~1e-4)."""
    rng = np.random.default_rng(1)
    shape, sigma, prior = (20,), 0.1, P.TruncatedNormal(0.55, 0.15, 0.0, 1.0)
    ref_a, ref_b = 1.0 + 0.4 * rng.normal(size=shape), 0.9 + 0.4 * rng.normal(size=shape)
    basis = background_basis(background, shape)
    y = (
        x_true * ref_a
        + (1 - x_true) * ref_b
        + np.tensordot(rng.normal(size=len(basis)), basis, 1)
        + sigma * rng.normal(size=shape)
    )
    got = quadrature_posterior(y, ref_a, ref_b, basis, False, sigma, prior)

    d, r = ref_a - ref_b, y - ref_b
    if len(basis):
        q, _ = np.linalg.qr(basis.reshape(len(basis), -1).T)
        d, r = d - q @ (q.T @ d), r - q @ (q.T @ r)
    dd = d @ d
    lam = dd / sigma**2 + 1.0 / prior.scale**2
    m = (r @ d / sigma**2 + prior.loc / prior.scale**2) / lam
    s = lam**-0.5
    tn = stats.truncnorm((prior.low - m) / s, (prior.high - m) / s, loc=m, scale=s)
    sd = tn.std()
    assert abs(got["mean"] - tn.mean()) < 1e-3 * sd
    assert abs(got["sd"] - sd) < 1e-3 * sd
    np.testing.assert_allclose(got["quantiles"], tn.ppf(QS), rtol=0, atol=1e-3 * sd)


@pytest.mark.parametrize(
    ("name", "label"),
    [
        ("constant-gain", "low-signal"),
        ("constant-gain", "near-bound"),
        ("linear-spectra", "mid-range"),
        ("no-mixture-none", "no-mixture"),
    ],
)
def test_reference_nuisance_integral_matches_cubature(name, label):
    """The reference's integral over the nuisances (g > 0 and/or c) at fixed x, against adaptive
    ``scipy.integrate.cubature`` of the plain per-pixel sum of squares on a wider, axis-aligned
    box of 12 sd (this also checks the expanded sum of squares the grid uses), at the 5, 50 and
    95% quantiles of x
    (where the posterior lives): to 1e-7 relative (measured: ~1e-9). A relative error eps(x) of
    this integral moves the posterior mean of x by at most about 2 max|eps| sd, so this bounds
    the reference's error from the nuisance grid by ~2e-7 sd."""
    case, refs = case_and_reference(name)
    i = case["labels"].index(label)
    y = case["frames"][i].ravel()
    ref_a, ref_b = case["ref_a"].ravel(), case["ref_b"].ravel()
    basis = case["basis"].reshape(len(case["basis"]), y.size)
    sigma, gain = case["sigma"], case["gain"]
    xs = refs[i]["quantiles"]
    grid = refs[i]["log_post"](xs) - scipy_logpdf(case["prior"], xs)

    exact = []
    for x in xs:
        m = x * ref_a + (1 - x) * ref_b
        cols = np.column_stack([m, *basis]) if gain else basis.T
        rhs = y if gain else y - m
        coef, *_ = np.linalg.lstsq(cols, rhs, rcond=None)
        sd = sigma * np.sqrt(np.diag(np.linalg.inv(cols.T @ cols)))
        shift = np.sum((rhs - cols @ coef) ** 2) / (2 * sigma**2)

        def integrand(theta, m=m, shift=shift):
            """exp(-SSE / (2 sigma^2) + shift) at each row of theta, pixel by pixel."""
            mu = (theta[:, :1] * m if gain else m) + theta[:, int(gain) :] @ basis
            return np.exp(-np.sum((y - mu) ** 2, axis=1) / (2 * sigma**2) + shift)

        lower, upper = coef - 12 * sd, coef + 12 * sd
        if gain:
            lower[0], upper[0] = 0.0, max(upper[0], 12 * sd[0])
        res = integrate.cubature(integrand, lower, upper, rtol=1e-8, atol=0)
        assert res.status == "converged"
        val = res.estimate
        exact.append(np.log(val) - shift)
    np.testing.assert_allclose(grid, exact, rtol=0, atol=1e-7)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_reference_converged(name):
    """The reference against itself on a finer, wider grid (nuisance resolution doubled, box
    half as wide again, x grid doubled): every summary moves by < 1e-3 of its posterior sd
    (measured: means and sds of x, g and c by < 3e-6 sd, quantiles of x by < 1e-4 sd), so the
    reference's own error is far below ``TOL_SD``."""
    case, coarse = case_and_reference(name)
    fine = reference(case, k_sd=1.5 * K_SD, n_nodes=2 * N_NODES, n_x=2 * N_X, n_coarse=2 * N_COARSE)
    for ref, fin in zip(coarse, fine, strict=True):
        s = fin["sd"]
        assert abs(ref["mean"] - fin["mean"]) < 1e-3 * s
        assert abs(ref["sd"] - s) < 1e-3 * s
        np.testing.assert_allclose(ref["quantiles"], fin["quantiles"], rtol=0, atol=1e-3 * s)
        if case["gain"]:
            assert abs(ref["g_mean"] - fin["g_mean"]) < 1e-3 * fin["g_sd"]
            assert abs(ref["g_sd"] - fin["g_sd"]) < 1e-3 * fin["g_sd"]
        assert np.all(np.abs(ref["c_mean"] - fin["c_mean"]) < 1e-3 * fin["c_sd"])


# ---------------------------------------------------------------------------------------------
# bayesmix against the reference
# ---------------------------------------------------------------------------------------------


def fit(case):
    """``bayesmix.fit_map`` on a case, with the known sigma."""
    return bayesmix.fit_map(
        case["frames"], case["ref_a"], case["ref_b"], background=case["background"],
        gain=case["gain"], sigma=case["sigma"], prior=case["prior"],
    )  # fmt: skip


def agreement(res, case, refs, interval=False):
    """bayesmix's errors against the quadrature, each in units of the reference's posterior sd.

    Returns
    -------
    dict
        ``{frame label: {quantity: error / sd}}`` for the mean, sd and quantiles of x, the 90%
        interval (if ``interval``: its own compilation, so asked for in one test only), and (as
        the model has them) the gain's mean and sd and each background coefficient's mean.
    """
    quant = res.quantiles(list(QS))
    lo, hi = res.interval(0.9) if interval else (None, None)
    out = {}
    for i, (label, ref) in enumerate(zip(case["labels"], refs, strict=True)):
        s = ref["sd"]
        err = {"mean": (res.mean[i] - ref["mean"]) / s, "sd": (res.sd[i] - s) / s}
        for q, got, want in zip(QS, quant[i], ref["quantiles"], strict=True):
            err[f"q{q:g}"] = (got - want) / s
        if interval:
            err["interval_lo"] = (lo[i] - ref["quantiles"][0]) / s
            err["interval_hi"] = (hi[i] - ref["quantiles"][-1]) / s
        if case["gain"]:
            err["gain"] = (res.gain[i] - ref["g_mean"]) / ref["g_sd"]
            err["gain_sd"] = (res.gain_sd[i] - ref["g_sd"]) / ref["g_sd"]
        for p in range(len(case["basis"])):
            err[f"c{p}"] = (res.background[i, p] - ref["c_mean"][p]) / ref["c_sd"][p]
        out[label] = err
    return out


def assert_agrees(res, case, refs, tol=TOL_SD, interval=False):
    """Every error of :func:`agreement` below ``tol`` (in sd), with all failures reported."""
    bad = [
        f"{label}: {q} off by {e:+.3f} sd"
        for label, errs in agreement(res, case, refs, interval).items()
        for q, e in errs.items()
        if not abs(e) < tol
    ]
    assert not bad, "bayesmix differs from the quadrature:\n" + "\n".join(bad)


@pytest.mark.parametrize("name", ["constant-gain", "custom-gain", "featureless-b"])
def test_background_and_gain(name):
    """background='constant' (and a user basis image) with gain=True, sigma known: the posterior
    mean, sd and 5/50/95% quantiles of x (and the 90% interval) within 0.05 posterior sd of the
    quadrature over (x, g, c); the posterior mean and sd of the gain within 0.05 sd of g, and
    the posterior mean of the background coefficient within 0.05 sd of c, all from the same
    quadrature.

    'featureless-b' has a nearly flat B, darker than A by 1.5 on average: g and x are strongly
    correlated (posterior correlation about -0.8) and c moves with g x (A and B differ in their
    projections on the background). E[c | y] is linear in E[(g x, g (1 - x)) | y], which differs
    from (E[g] E[x], E[g] (1 - E[x])) by cov(g, x): it needs E[g x]."""
    case, refs = case_and_reference(name)
    res = fit(case)
    n = len(case["frames"])
    assert res.mean.shape == res.sd.shape == res.gain.shape == res.gain_sd.shape == (n,)
    assert res.background.shape == (n, 1)
    assert_agrees(res, case, refs, interval=True)


def test_linear_background_spectra():
    """background='linear' on 1-D spectra (shape (24,): ones and one ramp), gain=False: mean,
    sd, quantiles of x and the posterior means of the two background coefficients within 0.05
    posterior sd of the 3-D grid quadrature over (x, c0, c1)."""
    case, refs = case_and_reference("linear-spectra")
    res = fit(case)
    assert res.background.shape == (4, 2)
    assert_agrees(res, case, refs)


@pytest.mark.parametrize("name", ["gain-beta", "gain-uniform"])
def test_gain_without_background(name):
    """gain=True, background=None, with a Beta(2, 3) and a Uniform(0, 1) prior: mean, sd,
    quantiles of x and the gain's mean and sd within 0.05 posterior sd of the 2-D grid
    quadrature over (x, g)."""
    case, refs = case_and_reference(name)
    assert_agrees(fit(case), case, refs)


@pytest.mark.filterwarnings("ignore:the frames say little about x:RuntimeWarning")
@pytest.mark.parametrize("name", ["no-mixture-constant", "no-mixture-none"])
def test_no_mixture_leaves_the_prior(name):
    """Frames with no trace of the references (y = background + noise, true gain 0): the data
    say nothing about x, so its posterior stays close to the prior: sd above 0.6 of the prior's
    sd (scipy.stats.truncnorm), both in bayesmix and in the quadrature; and bayesmix matches the
    quadrature (mean, sd, quantiles of x, gain, background) within 0.05 posterior sd."""
    case, refs = case_and_reference(name)
    prior = case["prior"]
    prior_sd = stats.truncnorm(
        (prior.low - prior.loc) / prior.scale, (prior.high - prior.loc) / prior.scale,
        loc=prior.loc, scale=prior.scale,
    ).std()  # fmt: skip
    res = fit(case)
    assert np.all([ref["sd"] > 0.6 * prior_sd for ref in refs])
    assert np.all(res.sd > 0.6 * prior_sd)
    assert_agrees(res, case, refs)


def test_linear_basis_on_images_is_the_documented_one():
    """background='linear' on (H, W) images is the three images ones, ramp down the rows and
    ramp along the columns (``linspace(-1, 1, size)`` each): the fit equals the fit with those
    images passed as an array (same x posterior, same coefficients, in the same order). A 4-D
    quadrature is too slow for the test suite; the 1-D case above checks the numbers."""
    case = make_case("constant-gain")
    shape = case["ref_a"].shape
    basis = background_basis("linear", shape)
    rng = np.random.default_rng(3)
    frames = case["frames"] + np.tensordot(rng.normal(size=(len(case["frames"]), 2)), basis[1:], 1)
    kw = dict(gain=True, sigma=case["sigma"], prior=case["prior"])
    named = bayesmix.fit_map(frames, case["ref_a"], case["ref_b"], background="linear", **kw)
    given = bayesmix.fit_map(frames, case["ref_a"], case["ref_b"], background=basis, **kw)
    assert named.background.shape == (len(frames), 3)
    for attr in ("mean", "sd", "gain", "gain_sd", "background"):
        np.testing.assert_allclose(
            getattr(named, attr), getattr(given, attr), rtol=1e-9, atol=1e-12
        )
    np.testing.assert_allclose(named.quantiles(list(QS)), given.quantiles(list(QS)), rtol=1e-9)
