"""The background basis and the per-frame gain against brute-force quadrature of the pixels.

Model (frame y of n pixels, references A and B, known noise scale sigma)::

    y = g (x A + (1 - x) B) + sum_p c_p N_p + noise,    noise ~ Normal(0, sigma^2) i.i.d.

with a flat prior on the background coefficients c (improper) and on the gain g > 0 (improper, on
(0, inf); g = 1 without gain), and the prior ``prior`` on x. ``fit_map(..., sigma=...)`` reports
the posterior of each x given sigma, with g and c integrated out.

The reference here shares no maths with bayesmix: the unnormalised joint density
``prior(x) * exp(-||y - g m(x) - N c||^2 / (2 sigma^2))``, ``m(x) = x A + (1 - x) B``, is summed
on a rectangular grid over (x, g, c) (every nuisance integral numeric, on its own axis), in log
space. The only algebra used is the expansion of the squared norm into the pixel sums
``r.r``, ``F_j.r`` and ``F_j.F_k`` (checked against the plain per-pixel sum below). The grid:

- nuisance axes: a box of half-width ``K_SD`` posterior sd around the unconstrained least-squares
  fit of the linear model in (u, v, c) = (g x, g (1 - x), c) (the likelihood is negligible
  outside it whatever the bounded prior of x does), cut at g = 0; spacing a fraction of the
  smallest conditional sd ``sigma / ||F_j||``. Simpson weights on the g axis (the cut at g = 0
  is an end point with a non-zero slope), trapezoid on the c axes (a Gaussian on a grid much
  wider than it: exponentially accurate). The reference checks that the box edges carry no mass
  (log density below the peak by more than ``EDGE_DROP``) and raises otherwise;
- x: a coarse pass over the prior's bounds finds where the posterior lives (log density within
  ``X_DROP`` of its peak), a fine trapezoid grid covers that; quantiles by inverting the
  cumulative trapezoid sum.

How accurate it is: ``test_reference_converged`` (marked slow) doubles the nuisance resolution,
widens the box by half and doubles the x grid, for every frame of every case: mean, sd and
quantiles of x move by < 1e-4 posterior sd, the posterior mean of g and c by < 1e-4 of theirs,
against a test tolerance of ``TOL_SD`` = 0.05 sd. The reference also matches the closed-form
truncated normal (no gain, no background; no gain, constant background) to < 1e-4 sd, and its
g-c integral matches adaptive ``scipy.integrate.cubature`` to 1e-4 (relative), cut at g = 0 included.

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
#: Half-width of the nuisance box, in sd of the unconstrained least-squares fit.
K_SD = 10.0
#: Grid points per smallest conditional sd on the nuisance axes.
PER_SD = 4.0
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


def _simpson_weights(n, h):
    """Composite Simpson weights for ``n`` (odd) equally spaced nodes ``h`` apart."""
    w = np.ones(n)
    w[1:-1:2] = 4.0
    w[2:-1:2] = 2.0
    return w * h / 3.0


def _axis(lo, hi, h, simpson):
    """Nodes and weights of one nuisance axis on [lo, hi] with spacing at most ``h``."""
    n = max(int(np.ceil((hi - lo) / h)) + 1, 5)
    n += 1 - n % 2  # odd, for Simpson
    nodes = np.linspace(lo, hi, n)
    step = nodes[1] - nodes[0]
    if simpson:
        return nodes, _simpson_weights(n, step)
    w = np.full(n, step)
    w[[0, -1]] *= 0.5
    return nodes, w


def quadrature_posterior(
    y, ref_a, ref_b, basis, gain, sigma, prior, *, k_sd=K_SD, per_sd=PER_SD, n_x=1201, n_coarse=161
):
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
    k_sd, per_sd : float
        Box half-width (in least-squares sd) and resolution (nodes per conditional sd) of the
        nuisance axes.
    n_x, n_coarse : int
        Nodes of the fine and the coarse x grids.

    Returns
    -------
    dict
        ``mean``, ``sd``, ``quantiles`` (at ``QS``) of x; ``g_mean``, ``g_sd`` (gain only);
        ``c_mean``, ``c_sd`` (shape (P,)); ``edge`` the largest log density on the box edges
        relative to the peak; ``n_nodes`` the nuisance grid size.
    """
    y = np.asarray(y, np.float64).ravel()
    a = np.asarray(ref_a, np.float64).ravel()
    b = np.asarray(ref_b, np.float64).ravel()
    nb = np.asarray(basis, np.float64).reshape(len(basis), y.size)
    lo, hi = prior.bounds

    # The box: unconstrained least squares of the linear model, covariance sigma^2 (M'M)^-1.
    if gain:
        design = np.column_stack([a, b, *nb])
        coef, *_ = np.linalg.lstsq(design, y, rcond=None)
        cov = sigma**2 * np.linalg.inv(design.T @ design)
        lin = np.zeros((1 + len(nb), 2 + len(nb)))  # (g, c) = lin @ (u, v, c)
        lin[0, :2] = 1.0
        lin[1:, 2:] = np.eye(len(nb))
    else:
        design = np.column_stack([a - b, *nb])
        coef, *_ = np.linalg.lstsq(design, y - b, rcond=None)
        cov = sigma**2 * np.linalg.inv(design.T @ design)
        lin = np.zeros((len(nb), 1 + len(nb)))  # c = lin @ (x, c)
        lin[:, 1:] = np.eye(len(nb))
    centre = lin @ coef
    if len(centre):
        # Sheared axes: theta = centre + shear @ phi with shear unit lower triangular (Jacobian 1,
        # g = centre[0] + phi[0] untouched), from the Cholesky factor of the least-squares
        # covariance, so the phi are uncorrelated under it and the box hugs the likelihood.
        chol = np.linalg.cholesky(lin @ cov @ lin.T)
        scale = np.diag(chol)
        shear = chol / scale
    else:
        scale, shear = np.zeros(0), np.zeros((0, 0))

    def features(x):
        """The nuisances' pixel columns at weight x, shape (len(x), k, n), and the offset."""
        m = x[:, None] * a + (1.0 - x[:, None]) * b
        rest = np.broadcast_to(nb, (len(x), *nb.shape))
        if gain:
            return np.concatenate([m[:, None, :], rest], axis=1), np.zeros_like(m)
        return rest, m

    # Smallest conditional sd along each phi axis: sigma / max over x of ||(F(x) shear)_j||, the
    # column being affine in x, its norm is largest at a bound.
    ends = features(np.array([lo, hi]))[0]
    col_norm = np.linalg.norm(np.einsum("cjn,jk->ckn", ends, shear), axis=2).max(axis=0)
    axes, cut = [], []
    for j, (s0, fn) in enumerate(zip(scale, col_norm, strict=True)):
        left, right = -k_sd * s0, k_sd * s0
        is_gain = gain and j == 0
        if is_gain and left < -centre[0]:  # g = centre[0] + phi[0] > 0
            left = -centre[0]
            right = max(right, left + k_sd * s0)
        axes.append(_axis(left, right, sigma / fn / per_sd, simpson=is_gain))
        cut.append(is_gain and left == -centre[0])
    if axes:
        grids = np.meshgrid(*[ax[0] for ax in axes], indexing="ij")
        phi = np.stack([g.ravel() for g in grids], axis=1)
        theta = centre + phi @ shear.T
        wgrid = np.meshgrid(*[ax[1] for ax in axes], indexing="ij")
        log_w = np.sum([np.log(w.ravel()) for w in wgrid], axis=0)
        # Box-edge nodes (the g = 0 cut is a true end of the domain, not an edge).
        edge = np.zeros(len(theta), bool)
        for j, (g, ax) in enumerate(zip(grids, axes, strict=True)):
            on_lo = (g.ravel() == ax[0][0]) & (not cut[j])
            edge |= on_lo | (g.ravel() == ax[0][-1])
    else:
        theta, log_w, edge = np.zeros((1, 0)), np.zeros(1), np.zeros(1, bool)
    k = theta.shape[1]

    def log_post(xs):
        """Log posterior of x (unnormalised) at ``xs``, the conditional moments of the nuisances,
        and the joint log density at the peak and on the box edges."""
        out_log, out_m1, out_m2, top_raw, edge_raw = [], [], [], [], []
        for start in range(0, len(xs), 32):
            feats, off = features(xs[start : start + 32])
            r = y - off
            rr = np.einsum("cn,cn->c", r, r)
            fr = np.einsum("cjn,cn->cj", feats, r)
            ff = np.einsum("cjn,ckn->cjk", feats, feats)
            # SSE at every (x, theta) node, (nc, T): elementwise over the k <= 3 nuisances (BLAS
            # would gain nothing on these thin products, and its threads cost a lot).
            sse = np.repeat(rr[:, None], len(theta), axis=1)
            for j in range(k):
                inner = -2.0 * fr[:, j, None] + ff[:, j, j, None] * theta[:, j]
                for jj in range(j + 1, k):
                    inner += 2.0 * ff[:, j, jj, None] * theta[:, jj]
                sse += inner * theta[:, j]
            raw = -0.5 * sse / sigma**2
            logl = raw + log_w
            top = logl.max(axis=1, keepdims=True)
            e = np.exp(logl - top)
            s0 = e.sum(axis=1)
            out_log.append(top[:, 0] + np.log(s0))
            mom1, mom2 = np.zeros((len(r), k)), np.zeros((len(r), k))
            for j in range(k):
                mom1[:, j] = (e * theta[:, j]).sum(axis=1) / s0
                mom2[:, j] = (e * theta[:, j] ** 2).sum(axis=1) / s0
            out_m1.append(mom1)
            out_m2.append(mom2)
            top_raw.append(raw.max(axis=1))
            edge_raw.append(raw[:, edge].max(axis=1) if edge.any() else np.full(len(r), -np.inf))
        lp = scipy_logpdf(prior, xs)
        peak = np.max(lp + np.concatenate(top_raw))
        edge_height = np.max(lp + np.concatenate(edge_raw)) - peak
        return (
            lp + np.concatenate(out_log),
            np.concatenate(out_m1),
            np.concatenate(out_m2),
            edge_height,
        )

    coarse = np.linspace(lo, hi, n_coarse)
    lp, *_ = log_post(coarse)
    keep = np.flatnonzero(lp > lp.max() - X_DROP)
    x_lo, x_hi = coarse[max(keep[0] - 1, 0)], coarse[min(keep[-1] + 1, n_coarse - 1)]
    xs = np.linspace(x_lo, x_hi, n_x)
    lp, m1, m2, edge_height = log_post(xs)
    w = np.full(n_x, xs[1] - xs[0])
    w[[0, -1]] *= 0.5
    log_z = special.logsumexp(lp, b=w)
    dens = np.exp(lp - log_z)
    px = dens * w  # posterior mass at each node
    mean = float(px @ xs)
    sd = float(np.sqrt(px @ (xs - mean) ** 2))
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (dens[1:] + dens[:-1]) * np.diff(xs))])
    quant = np.interp(QS, cdf / cdf[-1], xs)
    th_mean = px @ m1
    th_sd = np.sqrt(np.maximum(px @ m2 - th_mean**2, 0.0))
    if edge_height > -EDGE_DROP:
        raise AssertionError(f"quadrature box too narrow: edge at {edge_height:.1f} of the peak")
    out = {
        "mean": mean,
        "sd": sd,
        "quantiles": quant,
        "n_nodes": len(theta),
        "edge": edge_height,
        "log_post": log_post,
    }
    if gain:
        out["g_mean"], out["g_sd"] = float(th_mean[0]), float(th_sd[0])
        out["gx_mean"] = float(px @ (xs * m1[:, 0]))  # E[g x]
    out["c_mean"], out["c_sd"] = th_mean[int(gain) :], th_sd[int(gain) :]
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
    # x and the background, so g and x are strongly correlated (cov(g, x) / (sd_g sd_x) ~ -0.4).
    "featureless-b": dict(
        shape=(4, 5), refs=lambda: _featureless_b((4, 5), 0), background="constant", gain=True,
        sigma=0.1, prior=P.TruncatedNormal(0.55, 0.15, 0.0, 1.0),
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
    """The reference's integral over the nuisances (g > 0 and/or c) at fixed x, against
    ``scipy.integrate.cubature`` (adaptive) of the plain per-pixel sum of squares (adaptive quadrature; also
    checks the expanded sum of squares the grid uses), at the 5, 50 and 95% quantiles of x
    (where the posterior lives; the grid's box is built to cover only that): to 1e-4 relative.
    A relative error eps(x) of this integral moves the posterior mean of x by at most about
    2 max|eps| sd, so this bounds the reference's error from the nuisance grid by ~2e-4 sd."""
    case, refs = case_and_reference(name)
    i = case["labels"].index(label)
    y = case["frames"][i].ravel()
    ref_a, ref_b = case["ref_a"].ravel(), case["ref_b"].ravel()
    basis = case["basis"].reshape(len(case["basis"]), y.size)
    sigma, gain = case["sigma"], case["gain"]
    xs = refs[i]["quantiles"]
    grid = refs[i]["log_post"](xs)[0] - scipy_logpdf(case["prior"], xs)

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
        res = integrate.cubature(integrand, lower, upper, rtol=1e-10, atol=0)
        assert res.status == "converged"
        val = res.estimate
        exact.append(np.log(val) - shift)
    np.testing.assert_allclose(grid, exact, rtol=0, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_reference_converged(name):
    """The reference against itself on a finer, wider grid (nuisance resolution doubled, box
    half as wide again, x grid doubled): every summary moves by < 1e-3 of its posterior sd (the
    largest change measured is 3e-4 sd, the gain sd of the no-mixture frame; most are < 1e-4),
    so the reference's own error is far below ``TOL_SD``."""
    case, coarse = case_and_reference(name)
    fine = reference(case, k_sd=1.5 * K_SD, per_sd=2 * PER_SD, n_x=2401, n_coarse=321)
    for ref, fin in zip(coarse, fine, strict=True):
        s = fin["sd"]
        assert abs(ref["mean"] - fin["mean"]) < 1e-3 * s
        assert abs(ref["sd"] - s) < 1e-3 * s
        np.testing.assert_allclose(ref["quantiles"], fin["quantiles"], rtol=0, atol=1e-3 * s)
        if case["gain"]:
            assert abs(ref["g_mean"] - fin["g_mean"]) < 1e-3 * fin["g_sd"]
            assert abs(ref["g_sd"] - fin["g_sd"]) < 1e-3 * fin["g_sd"]
        np.testing.assert_allclose(ref["c_mean"], fin["c_mean"], rtol=0, atol=1e-3 * fin["c_sd"])


# ---------------------------------------------------------------------------------------------
# bayesmix against the reference
# ---------------------------------------------------------------------------------------------


def fit(case):
    """``bayesmix.fit_map`` on a case, with the known sigma."""
    return bayesmix.fit_map(
        case["frames"], case["ref_a"], case["ref_b"], background=case["background"],
        gain=case["gain"], sigma=case["sigma"], prior=case["prior"],
    )  # fmt: skip


def agreement(res, case, refs):
    """bayesmix's errors against the quadrature, each in units of the reference's posterior sd.

    Returns
    -------
    dict
        ``{frame label: {quantity: error / sd}}`` for the mean, sd and quantiles of x, the 90%
        interval, and (as the model has them) the gain's mean and sd and each background
        coefficient's mean.
    """
    quant = res.quantiles(list(QS))
    lo, hi = res.interval(0.9)
    out = {}
    for i, (label, ref) in enumerate(zip(case["labels"], refs, strict=True)):
        s = ref["sd"]
        err = {"mean": (res.mean[i] - ref["mean"]) / s, "sd": (res.sd[i] - s) / s}
        for q, got, want in zip(QS, quant[i], ref["quantiles"], strict=True):
            err[f"q{q:g}"] = (got - want) / s
        err["interval_lo"] = (lo[i] - ref["quantiles"][0]) / s
        err["interval_hi"] = (hi[i] - ref["quantiles"][-1]) / s
        if case["gain"]:
            err["gain"] = (res.gain[i] - ref["g_mean"]) / ref["g_sd"]
            err["gain_sd"] = (res.gain_sd[i] - ref["g_sd"]) / ref["g_sd"]
        for p in range(len(case["basis"])):
            err[f"c{p}"] = (res.background[i, p] - ref["c_mean"][p]) / ref["c_sd"][p]
        out[label] = err
    return out


def assert_agrees(res, case, refs, tol=TOL_SD):
    """Every error of :func:`agreement` below ``tol`` (in sd), with all failures reported."""
    bad = [
        f"{label}: {q} off by {e:+.3f} sd"
        for label, errs in agreement(res, case, refs).items()
        for q, e in errs.items()
        if not abs(e) < tol
    ]
    assert not bad, "bayesmix differs from the quadrature:\n" + "\n".join(bad)


@pytest.mark.parametrize("name", ["constant-gain", "custom-gain", "featureless-b"])
def test_background_and_gain(name):
    """background='constant' (and a user basis image) with gain=True, sigma known: the posterior
    mean, sd and 5/50/95% quantiles of x (and the 90% interval) within 0.05 posterior sd of the
    3-D grid quadrature over (x, g, c); the posterior mean and sd of the gain within 0.05 sd of
    g, the posterior mean of the background coefficient within 0.05 sd of c, all from the same
    quadrature."""
    case, refs = case_and_reference(name)
    res = fit(case)
    n = len(case["frames"])
    assert res.mean.shape == res.sd.shape == res.gain.shape == res.gain_sd.shape == (n,)
    assert res.background.shape == (n, 1)
    assert_agrees(res, case, refs)


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
