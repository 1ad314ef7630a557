"""A self-contained HTML report of a fit (MapResult or NUTS InferenceData).

Plots are drawn on matplotlib ``Figure`` objects with the Agg canvas (no pyplot state, no
backend switch in the user's process) and embedded as base64 PNGs, so the report is one file.
Every plot reads at any number of frames: bands are drawn through evenly spaced ranks of the
sorted frames, and scatter plots of more than a few thousand frames become 2-D histograms, so
the time to draw and the size of the page stop growing with N.
"""

from __future__ import annotations

import base64
import functools
import html
import io
import math
import re
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from bayesmix._errors import InputError
from bayesmix._io import atomic_write, prepare
from bayesmix._likelihood import MISFIT_FDR, misfit_qvalues
from bayesmix._model import make_model
from bayesmix._results import MapResult
from bayesmix._schema import interval_labels, model_attrs, percent
from bayesmix.noise import Gaussian, PerFrame, PoissonGaussian, StudentT, noise_spec
from bayesmix.priors import Dirichlet, PointMassMixture, TruncatedNormal, parse_prior

__all__ = ["REPORT_SUFFIXES", "check_report_path", "report"]

#: The suffixes a report's path may have: the report is one HTML page, whatever the name says.
REPORT_SUFFIXES = (".html", ".htm")

#: The sections every report has, in page order.
SECTIONS = (
    "Weights per frame",
    "Summary",
    "Diagnostics",
    "Residual image",
    "Flagged frames",
)

#: Every section in page order; those not in SECTIONS appear only where they apply: maps for a
#: spectrum image, the sequence for a temporal fit, the truth when given, the noise model when it
#: is not the default one, chains and energy for NUTS.
ALL_SECTIONS = (
    "Maps",
    "Weights per frame",
    "Sequence",
    "Truth vs estimate",
    "Summary",
    "Diagnostics",
    "Noise model",
    "Trace and rank plots",
    "Energy",
    "Residual image",
    "Flagged frames",
)

#: Above this many frames a scatter plot becomes a 2-D histogram (hexagons): a million markers
#: take seconds to draw and hide one another anyway.
_MAX_SCATTER = 5000
#: A band over sorted frames is drawn through at most this many evenly spaced ranks.
_BAND_POINTS = 1000
#: Hexagons across a 2-D histogram.
_HEX_GRID = 60
#: Rows of the flagged-frames table.
_MAX_ROWS = 50

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222;
       padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; }
table { border-collapse: collapse; font-size: .85em; } td, th { padding: 2px 8px; }
tr:nth-child(even) { background: #f4f4f4; } img { max-width: 100%; }
figure { margin: 1em 0; } figcaption { font-size: .9em; color: #444; }
.row { display: flex; flex-wrap: wrap; gap: 1em; }
.row figure { flex: 1 1 440px; min-width: 0; margin: 0; }
.pass { color: #176117; font-weight: bold; } .warn { color: #a05a00; font-weight: bold; }
"""


def _png(fig: Any, alt: str = "plot") -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _figure(w: float = 10, h: float = 3.6) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h))


def _fig_html(fig: Any, alt: str, caption: str) -> str:
    """A plot with its caption (``caption`` is HTML)."""
    return f"<figure>{_png(fig, alt)}<figcaption>{caption}</figcaption></figure>"


def _row(*figures: str) -> str:
    """Figures side by side (they wrap on a narrow page)."""
    return '<div class="row">' + "".join(f for f in figures if f) + "</div>"


class _View:
    """What the report needs, from either kind of result: the per-frame table of the one schema
    (:func:`bayesmix._writers.results_table`), so MAP and NUTS reports read the same columns."""

    def __init__(self, result: Any, prob: float, attrs: dict | None = None) -> None:
        """``attrs``: the metadata of the results file ``result`` was rebuilt from (what the
        rebuilt MapResult does not keep, e.g. the learned prior's hyperparameters)."""
        from bayesmix._arviz import is_inference_data
        from bayesmix._writers import results_table

        if not (isinstance(result, MapResult) or is_inference_data(result)):
            raise InputError(
                "report needs a MapResult (bayesmix.fit_map), the InferenceData of "
                "bayesmix.sample or a results table (bayesmix.read_results), got "
                f"{type(result).__name__}"
            )
        from bayesmix._writers import table_ref_names

        df = results_table(result, prob=prob)
        self.table = df
        #: K >= 3 references: their names (the per-reference columns), else None.
        self.names = table_ref_names(df)
        if isinstance(result, MapResult):
            self.kind, self.method_text = _map_method(result)
            self.sigma = result.sigma
            self.bounds = result.prior.bounds
            self.prior_obj: Any = result.prior
            self.idata = None
            self.map_shape = result.map_shape
            self.model: Any = result.model
            self.model_name = result.model.name
        else:
            post = result.posterior
            chains, draws = int(post.sizes["chain"]), int(post.sizes["draw"])
            self.kind = f"NUTS, {chains} chain{'s' if chains != 1 else ''} x {draws} draws"
            self.method_text = ""
            self.sigma = float(df.attrs["sigma"])
            spec = str(result.attrs.get("prior", ""))
            self.prior_obj = parse_prior(spec) if spec else None
            self.bounds = (
                float(result.attrs.get("prior_low", 0.0)),
                float(result.attrs.get("prior_high", 1.0)),
            )
            self.idata = result
            info = model_attrs(result.attrs)
            self.map_shape = info["map_shape"]
            # A user's own basis images are not stored with the run: no model to redraw from.
            custom = info["background"] == "custom"
            self.model = None if custom else make_model(background=info["background"],
                                                        gain=info["gain"])  # fmt: skip
            self.model_name = ("custom background" + (" + gain" if info["gain"] else "")
                               if custom else self.model.name)  # fmt: skip
            if self.names is not None:
                self.model_name = f"{len(self.names)} references" + (
                    "" if self.model_name == "two references" else f" + {self.model_name}"
                )
        if isinstance(self.prior_obj, Dirichlet) and self.names is not None:
            self.prior_obj = self.prior_obj.expand(len(self.names))
        self.prior = "" if self.prior_obj is None else repr(self.prior_obj)
        #: The prior learned from the frames (empirical Bayes, or sampled by NUTS), or None.
        self.learned = _learned(result, attrs)
        #: NUTS with a learned population: the population at some of its draws.
        self.prior_draws = [] if self.idata is None else _nuts_population(result, self.bounds)
        #: A temporal fit: its frames' order means something, and neighbours pull too.
        self.temporal = _is_temporal(self, result)
        self.frame = df.index.to_numpy()
        self.at_bound = df["at_bound"].to_numpy(bool)
        self.r2 = df["r2"].to_numpy()
        self.misfit_p = df["misfit_p"].to_numpy(np.float64)
        # An old results file has no q-values: the same Benjamini-Hochberg step here.
        self.misfit_q = (df["misfit_q"].to_numpy(np.float64) if "misfit_q" in df
                         else misfit_qvalues(self.misfit_p))  # fmt: skip
        bg_cols = [c for c in df.columns if c.startswith("background_")]
        self.background = df[bg_cols].to_numpy() if bg_cols else None
        if self.names is not None:
            self._simplex_columns(df, prob)
            return
        self.center = df["mean"].to_numpy(np.float64)
        self.sd = df["sd"].to_numpy(np.float64)
        lo_name, hi_name = interval_labels(prob)
        self.lo = df[lo_name].to_numpy(np.float64)
        self.hi = df[hi_name].to_numpy(np.float64)
        self.x_map = df["x_map"].to_numpy(np.float64)
        self.gain = df["gain"].to_numpy() if "gain" in df else None
        self.xhat = _least_squares(df)

    def _simplex_columns(self, df: Any, prob: float) -> None:
        """K >= 3: the per-reference columns as (N, K) arrays."""

        def per_ref(var: str) -> np.ndarray:
            return np.stack([df[f"{var}_{r}"].to_numpy(np.float64) for r in self.names], 1)

        self.center = per_ref("mean")
        self.sd = per_ref("sd")
        lo_name, hi_name = interval_labels(prob)
        self.lo = per_ref(lo_name)
        self.hi = per_ref(hi_name)
        self.x_map = per_ref("x_map")
        self.mc_se = per_ref("mc_se") if all(f"mc_se_{r}" in df for r in self.names) else None
        self.gain = None
        self.xhat = None


def _least_squares(df: Any) -> np.ndarray | None:
    """Each frame's unconstrained least-squares weight x-hat, shape (N,), from the statistics
    columns: ``xhat`` itself, or with a gain the ratio w_A / (w_A + w_B) of the two free
    reference coefficients (solving M w = z); None when the table has neither."""
    if "xhat" in df:
        return df["xhat"].to_numpy(np.float64)
    if not all(f"{v}_{r}" in df for v in ("z", "m0", "m1") for r in "ab"):
        return None
    z, m0, m1 = (np.stack([df[f"{v}_a"], df[f"{v}_b"]], 1).astype(np.float64)
                 for v in ("z", "m0", "m1"))  # fmt: skip
    # M (1, 0) = m1 + m0 and M (0, 1) = m0: the columns of M, for A and B.
    ca, cb = m1 + m0, m0
    det = ca[:, 0] * cb[:, 1] - ca[:, 1] * cb[:, 0]
    with np.errstate(invalid="ignore", divide="ignore"):
        wa = (z[:, 0] * cb[:, 1] - z[:, 1] * cb[:, 0]) / det
        wb = (ca[:, 0] * z[:, 1] - ca[:, 1] * z[:, 0]) / det
        return wa / (wa + wb)


def _map_method(result: MapResult) -> tuple[str, str]:
    """The fast path's method as run (``result.sigma_method``): a short name (the page's header)
    and a sentence (the diagnostics)."""
    it = f"{result.n_iter} iteration{'s' if result.n_iter != 1 else ''}"
    done = "converged" if result.converged else "did not converge"
    if result.sigma_frame is not None:
        return ("MAP by EM (per-frame noise)",
                f"The population of per-frame noise scales (EM) {done} in {it}; every sigma_i is "
                "integrated out of each frame's posterior.")  # fmt: skip
    if result.sigma_fixed or result.sigma_method == "fixed":
        return ("MAP given sigma",
                "sigma was given, so nothing was iterated: each frame's posterior is exact given "
                "it.")  # fmt: skip
    if result.temporal is not None:
        return ("MAP along a random walk (sigma by EM)",
                f"sigma by EM with the weights integrated out along the walk, q by maximum "
                f"marginal likelihood between its steps: {done} in {it}.")  # fmt: skip
    if result.sigma_method == "joint":
        return ("MAP by coordinate ascent",
                f"sigma by coordinate ascent on the joint mode of the weights and sigma: {done} "
                f"in {it}.")  # fmt: skip
    if result.simplex is not None:
        return ("MAP, sigma by REML",
                "sigma by its restricted (REML) estimate from the residuals, in closed "
                "form.")  # fmt: skip
    return ("MAP by EM",
            f"sigma by EM (the mode of its marginal posterior, every weight integrated out): "
            f"{done} in {it}.")  # fmt: skip


class _PriorParts(NamedTuple):
    """A prior of one weight split for drawing: its continuous part on a grid, and its atoms.

    Attributes
    ----------
    grid : ndarray, shape (G,)
        Points over the prior's bounds.
    density : ndarray, shape (G,)
        The continuous part's density times its probability ``weight`` (so its area is
        ``weight``, and density plus atoms hold probability 1).
    weight : float
        Probability of the continuous part: 1 without atoms, ``1 - sum(atoms)`` for a
        :class:`~bayesmix.priors.PointMassMixture`.
    atoms : tuple of (float, float)
        Each point mass as (location, probability): with two references (1, p_A) and (0, p_B);
        the marginal of reference k of K >= 3 has (1, atoms[k]) and (0, the others' sum).
    """

    grid: np.ndarray
    density: np.ndarray
    weight: float
    atoms: tuple[tuple[float, float], ...] = ()


def _prior_parts(prior: Any, bounds: tuple[float, float],
                 k: int | None = None) -> _PriorParts:  # fmt: skip
    """``prior``'s parts (:class:`_PriorParts`) on 401 points over ``bounds``; with K >= 3
    references the marginal of reference ``k`` (a Dirichlet's marginal is a Beta)."""
    lo, hi = bounds
    grid = np.linspace(lo, hi, 401)
    atoms: tuple[tuple[float, float], ...] = ()
    weight = 1.0
    if isinstance(prior, PointMassMixture):
        p = prior.atoms
        # Two references: x is A's weight, so pure A is x = 1 and pure B is x = 0. On the
        # simplex, weight k is 1 in phase k's vertex and 0 in every other vertex.
        atoms = ((1.0, p[0]), (0.0, p[1])) if k is None else (
            (1.0, p[k]), (0.0, float(sum(p)) - p[k]))  # fmt: skip
        weight = prior.continuous_weight
        prior = prior.continuous
    if isinstance(prior, Dirichlet):
        from scipy import stats

        alpha = prior.concentrations
        j = 0 if k is None else k
        grid = grid[1:-1]  # a concentration below 1 is infinite on the bounds
        pdf = stats.beta.pdf(grid, alpha[j], alpha.sum() - alpha[j])
    else:
        pdf = np.exp(np.asarray(_jitted_log_prob()(prior, grid), np.float64))
    return _PriorParts(grid, weight * pdf, float(weight), atoms)


def _prior_curve(v: _View, k: int | None = None) -> _PriorParts | None:
    """The parts of the prior of x (:func:`_prior_parts`); with K >= 3 references those of the
    marginal of reference ``k``. A population sampled by NUTS is averaged over its draws (the
    population given the frames). None when the result does not record its prior."""
    if v.prior_draws:
        parts = [_prior_parts(p, v.bounds, k) for p in v.prior_draws]
        return parts[0]._replace(density=np.mean([p.density for p in parts], axis=0))
    if v.prior_obj is None:
        return None
    return _prior_parts(v.prior_obj, v.bounds, k)


@functools.cache
def _jitted_log_prob() -> Any:
    """The priors' own density (the one every inference path uses), jitted: run eagerly, its
    JAX operations compile one by one, about a second per report."""
    import jax

    return jax.jit(lambda prior, x: prior.log_prob(x))


def _moments(parts: _PriorParts) -> tuple[float, float]:
    """Mean and sd of a prior from its parts: the continuous part's by the trapezoid rule on
    its grid, combined with the atoms (law of total variance)."""
    grid, pdf = parts.grid, parts.density

    def integral(f: np.ndarray) -> float:  # np.trapezoid is numpy >= 2 only
        return float(np.sum(0.5 * (f[1:] + f[:-1]) * np.diff(grid)))

    # Normalised by its own integral, so the rule's error in the mass cancels.
    mass = integral(pdf)
    mean_c = integral(grid * pdf) / mass
    var_c = integral((grid - mean_c) ** 2 * pdf) / mass
    w = parts.weight
    mean = w * mean_c + sum(p * x for x, p in parts.atoms)
    var = w * (var_c + (mean_c - mean) ** 2) + sum(p * (x - mean) ** 2 for x, p in parts.atoms)
    return float(mean), float(np.sqrt(max(var, 0.0)))


def _prior_moments(v: _View) -> tuple[float, float] | None:
    """Mean and sd of the prior of x (two references), point masses included."""
    parts = _prior_curve(v)
    return None if parts is None else _moments(parts)


def _draw_prior(ax: Any, parts: _PriorParts, label: str, *,
                right_label: bool = True) -> tuple[list[Any], list[str]] | None:  # fmt: skip
    """The prior over a density histogram on ``ax``: the continuous part's density times its
    probability (black), and each atom as a spike whose height is its probability on a second
    y axis at the right, its value written beside it.

    Returns
    -------
    (handles, labels) or None
        With atoms, the legend entries of both axes, for the caller to place outside the
        plot (inside, the legend would hide a spike); None without atoms.
    """
    what = label if not parts.atoms else f"{label}: continuous part \u00d7 {parts.weight:.3g}"
    ax.plot(parts.grid, parts.density, color="k", lw=1.5, label=what)
    if not parts.atoms:
        return None
    lo, hi = float(parts.grid[0]), float(parts.grid[-1])
    span = max(hi - lo, 1e-12)
    # The spikes at the bounds would sit on the frame of the axes: leave them some room.
    ax.set_xlim(min(lo, 0.0) - 0.05 * span, max(hi, 1.0) + 0.05 * span)
    twin = ax.twinx()
    where = [x for x, _ in parts.atoms]
    prob = [p for _, p in parts.atoms]
    twin.vlines(where, 0.0, prob, color="tab:red", lw=2.5,
                label=f"{label}: pure phases (probability, right axis)")  # fmt: skip
    twin.plot(where, prob, "o", color="tab:red", ms=4)
    top = max(0.05, 1.35 * max(prob))
    twin.set_ylim(0.0, top)
    if right_label:
        twin.set_ylabel("probability of a pure phase", color="tab:red")
    twin.tick_params(axis="y", colors="tab:red")
    for i, (x, p) in enumerate(parts.atoms):
        right = x >= 0.5 * (lo + hi)
        # Labels of atoms of about the same height would overlap: lift the second one.
        lift = 12 if i and abs(p - prob[0]) < 0.1 * top else 0
        twin.annotate(f"P(x = {x:g}) = {p:.3g}", (x, p), xytext=(-5 if right else 5, 4 + lift),
                      textcoords="offset points", ha="right" if right else "left",
                      fontsize=8, color="tab:red",
                      bbox={"fc": "white", "ec": "none", "alpha": 0.7, "pad": 1})  # fmt: skip
    handles, labels = ax.get_legend_handles_labels()
    more, more_labels = twin.get_legend_handles_labels()
    return handles + more, labels + more_labels


def _rounded(text: str) -> str:
    """A prior's repr with its numbers to 4 significant digits, for captions (a learned
    prior's hyperparameters carry all 17 digits)."""
    return re.sub(r"-?\d+\.\d+(?:e[-+]?\d+)?", lambda m: f"{float(m.group()):.4g}", text)


def _atoms_words(parts: _PriorParts) -> str:
    """The caption's words for a prior of x with point masses (HTML); empty without them."""
    if not parts.atoms:
        return ""
    (x1, p1), (x0, p0) = parts.atoms
    return (
        " The prior has point masses on the pure phases, which are probabilities, not "
        "densities: its continuous part is drawn as its density times its probability "
        f"1 &minus; &Sigma; atoms = {parts.weight:.3g} (left axis, the scale of the histogram, "
        "whose area is 1), and each atom as a red spike at its x whose height is its "
        f"probability (right axis), written beside it: P(x = {x1:g}) = {p1:.3g} (pure A), "
        f"P(x = {x0:g}) = {p0:.3g} (pure B). The posterior means of pure frames gather next to "
        "the bound: each posterior puts most of its mass on the atom, but its mean averages in "
        "the continuous part."
    )


#: What each family of a learned prior is, for the captions.
_FAMILY_WORDS = {
    "truncnormal": "a truncated normal",
    "beta": "a Beta",
    "dirichlet": "a Dirichlet",
    "point_mass": "point masses on the pure phases plus a continuous part",
}

#: What some hyperparameters mean, for the captions.
_PARAM_WORDS = {
    "p_pure": "p_pure_&lowast;: the probability of a pure phase",
    "mean": "mean: the population's own mean",
    "sd": "sd: its own sd",
}

#: A population sampled by NUTS is drawn as the average of its density over this many draws.
_PRIOR_DRAWS = 100


class _Learned(NamedTuple):
    """A prior learned from the frames: its family and each hyperparameter with its sd.

    Attributes
    ----------
    family : str
        ``'truncnormal'``, ``'beta'``, ``'dirichlet'`` or ``'point_mass'``.
    params : dict of str to (float, float)
        Each hyperparameter's estimate and its sd.
    how : str
        How they were learned, in words.
    """

    family: str
    params: dict
    how: str


#: How the fast path learns a prior.
_MML = "empirical Bayes: maximum marginal likelihood, sds from its curvature"


def _float(value: Any) -> float:
    """A number of the metadata (a file may hold NaN as text or None) as a float."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _learned_from_attrs(attrs: dict) -> _Learned | None:
    """The learned prior a results file records (``prior_learned``, ``prior_<name>`` and
    ``prior_<name>_sd``), or None."""
    family = str(attrs.get("prior_learned") or "")
    if not family:
        return None
    params = {key[6:]: (_float(value), _float(attrs[f"{key}_sd"]))
              for key, value in attrs.items()
              if key.startswith("prior_") and f"{key}_sd" in attrs}  # fmt: skip
    return _Learned(family, params, _MML)


def _learned(result: Any, attrs: dict | None) -> _Learned | None:
    """The prior learned by the fit: from a MapResult's ``population``, the metadata of a
    results file (``attrs``), or the hyperparameters NUTS sampled. None for a fixed prior."""
    pop = getattr(result, "population", None)
    if isinstance(result, MapResult) and pop is not None:
        params = {k: (float(v), _float(pop.sd.get(k))) for k, v in pop.params.items()}
        return _Learned(str(pop.family), params, _MML)
    if attrs is not None:
        return _learned_from_attrs(attrs)
    if isinstance(result, MapResult):
        return None
    family = str(result.attrs.get("prior_learned") or "")
    if not family:
        return None
    post = result.posterior
    drawn = {str(name)[6:]: np.asarray(post[name], np.float64).ravel()
             for name in post.data_vars if str(name).startswith("prior_")}  # fmt: skip
    if not drawn:
        # No draws of the population: what the fast path learned, the sampler's start
        # (prior_<name>_map and prior_<name>_map_sd).
        start = {k.replace("_map", "", 1): v for k, v in result.attrs.items()
                 if k.startswith("prior_") and k.endswith(("_map", "_map_sd"))}  # fmt: skip
        return _learned_from_attrs({**start, "prior_learned": family})
    params = {k: (float(d.mean()), float(d.std())) for k, d in drawn.items()}
    return _Learned(family, params,
                    "hierarchical model sampled by NUTS with every weight: posterior mean "
                    "± sd of each hyperparameter")  # fmt: skip


def _nuts_population(result: Any, bounds: tuple[float, float]) -> list[Any]:
    """NUTS with a learned truncated normal: the population at evenly spaced draws of its
    (loc, scale), whose average density is the population given the frames; else empty."""
    if isinstance(result, MapResult) or result.attrs.get("prior_learned") != "truncnormal":
        return []
    post = result.posterior
    if "prior_loc" not in post or "prior_scale" not in post:
        return []
    loc = np.asarray(post["prior_loc"], np.float64).ravel()
    scale = np.asarray(post["prior_scale"], np.float64).ravel()
    pick = _thin(loc.size, _PRIOR_DRAWS)
    return [TruncatedNormal(float(a), float(s), *bounds) for a, s in zip(loc[pick], scale[pick],
                                                                         strict=True)]  # fmt: skip


def _param_rank(name: str) -> tuple[int, str]:
    """Order of the hyperparameters in the captions: atoms, the family's own, moments."""
    for i, first in enumerate(("p_pure", "loc", "scale", "a", "b", "alpha", "mean", "sd")):
        if name == first or name.startswith(f"{first}_"):
            return i, name
    return 99, name


def _learned_params(learned: _Learned) -> str:
    """Each hyperparameter as 'name = value ± sd' (plain text: escape it for HTML)."""
    parts = []
    for name in sorted(learned.params, key=_param_rank):
        value, sd = learned.params[name]
        err = f" ± {sd:.2g}" if math.isfinite(sd) else " (no sd: flat there)"
        parts.append(f"{name} = {value:.3g}{err}")
    return ", ".join(parts)


def _learned_row(v: _View) -> dict[str, str]:
    """The summary's row of a learned prior: its family and hyperparameters; empty if fixed."""
    if v.learned is None:
        return {}
    return {f"prior learned from the frames ({v.learned.family})": _learned_params(v.learned)}


def _learned_words(v: _View) -> str:
    """The caption's sentence on a learned prior (HTML); empty for a fixed one."""
    learned = v.learned
    if learned is None:
        return ""
    n = v.center.shape[0]
    family = _FAMILY_WORDS.get(learned.family, html.escape(learned.family))
    glossed = [w for key, w in _PARAM_WORDS.items()
               if any(k == key or k.startswith(f"{key}_") for k in learned.params)]  # fmt: skip
    notes = "; ".join([*glossed, learned.how])
    return (
        f" The learned prior is {family}, learned from the {n} frames: "
        f"{html.escape(_learned_params(learned))} ({notes}). It is the population "
        "the frames' weights come from, as estimated from the frames themselves, and each "
        "frame's posterior uses it as its prior: where a frame says little its mean is shrunk "
        "towards the population, so the histogram of means tends to be narrower than it."
    )


def _points(ax: Any, x: np.ndarray, y: np.ndarray, extent: tuple[float, ...],
            color: str = "tab:blue") -> str:  # fmt: skip
    """One dot per frame up to ``_MAX_SCATTER`` frames, else a 2-D histogram of hexagons of
    fixed number (log colour scale). Returns the words for the caption."""
    if x.size <= _MAX_SCATTER:
        ax.scatter(x, y, s=10 if x.size <= 500 else 4, color=color, alpha=0.6, lw=0)
        return "one dot per frame"
    hb = ax.hexbin(x, y, gridsize=_HEX_GRID, extent=extent, bins="log", mincnt=1,
                   cmap="viridis", lw=0)  # fmt: skip
    ax.figure.colorbar(hb, ax=ax, label="frames per hexagon", fraction=0.046, pad=0.04)
    return f"{x.size} frames as a 2-D histogram: a hexagon's colour counts its frames (log scale)"


def _sorted_band(ax: Any, center: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                 color: str, prob: float) -> int:  # fmt: skip
    """Frames sorted by their estimate with their interval band, through at most
    ``_BAND_POINTS`` evenly spaced ranks. Returns how many ranks were drawn."""
    n = center.size
    ranks = _thin(n, _BAND_POINTS)
    idx = np.argsort(center, kind="stable")[ranks]
    ax.fill_between(ranks, lo[idx], hi[idx], color=color, alpha=0.3, lw=0,
                    label=f"{percent(prob)} interval")  # fmt: skip
    ax.plot(ranks, center[idx], color=color, lw=1.2, label="posterior mean")
    ax.set_xlim(0, max(n - 1, 1))
    return int(ranks.size)


def _thinned_words(drawn: int, n: int) -> str:
    return "" if drawn == n else f" Drawn through {drawn} evenly spaced ranks of the {n} frames."


def _weights_html(v: _View, prob: float) -> str:
    """Two references: every frame's estimate sorted with its band, the estimates' distribution
    over the prior, the prior's pull (estimate vs least squares) and the sd vs the estimate."""
    n = v.center.size
    lo, hi = v.bounds
    fig = _figure(10, 3.6)
    ax = fig.add_subplot()
    drawn = _sorted_band(ax, v.center, v.lo, v.hi, "tab:blue", prob)
    ax.set_xlabel("frames sorted by posterior mean (rank)")
    ax.set_ylabel("x (weight of reference A)")
    ax.set_ylim(lo - 0.02 * (hi - lo), hi + 0.02 * (hi - lo))
    ax.legend(loc="upper left")
    ax.set_title(f"Posterior mean and {percent(prob)} interval of every frame, sorted")
    fig.tight_layout()
    band = _fig_html(
        fig, "frames sorted by estimate, with their intervals",
        f"Frames sorted by their posterior mean (not in input order): the curve is the sorted "
        f"estimates, the band each frame's {percent(prob)} interval.{_thinned_words(drawn, n)}"
        f"{_interval_words(v, prob)}",
    )  # fmt: skip
    return band + _row(_distribution_fig(v), _pull_fig(v)) + _row(_sd_fig(v))


def _interval_words(v: _View, prob: float) -> str:
    """Which interval to use when (HTML): the equal-tailed one shown, or the highest-density
    interval where posteriors pile up at a bound, and the probability of lying near a bound."""
    pct = percent(prob)
    eq = (f" The intervals are equal-tailed (the results files' columns): each leaves "
          f"{50.0 * (1.0 - prob):.6g}% of the posterior on either side, so it contains a bound "
          "only where the prior puts a point mass on it.")  # fmt: skip
    if v.idata is not None:
        return eq + (
            " Where a posterior piles up at a bound (frames at a bound, nearly pure phases) use "
            f"the highest-density interval of the draws, <code>arviz.hdi(idata, "
            f"hdi_prob={prob:g})</code>: the shortest interval holding {pct}, the only one that "
            "can contain the bound itself."
        )
    return eq + (
        " Where a posterior piles up at a bound (frames at a bound, nearly pure phases) use the "
        f'highest-density interval, <code>res.interval({prob:g}, kind="hdi")</code>: the '
        f"shortest interval holding {pct}, the only one that can contain the bound itself; "
        "<code>res.prob_near_bound(tol)</code> gives each frame's probability of lying within "
        "tol of a bound."
    )


def _ls_name(v: _View) -> str:
    """What x-hat is: the least-squares weight, or with a gain the ratio of the coefficients."""
    return "least-squares x-hat" if "xhat" in v.table else "least-squares w_A / (w_A + w_B)"


def _distribution_fig(v: _View) -> str:
    """Histogram of the posterior means over the prior's density (and of x-hat)."""
    n = v.center.size
    lo, hi = v.bounds
    edges = np.linspace(lo, hi, int(np.clip(np.sqrt(n), 10, 60)) + 1)
    fig = _figure(5.4, 3.9)
    ax = fig.add_subplot()
    ax.hist(v.center, bins=edges, density=True, color="tab:blue", alpha=0.55,
            label="posterior means")  # fmt: skip
    words = ""
    if v.xhat is not None:
        inside = np.isfinite(v.xhat) & (v.xhat >= lo) & (v.xhat <= hi)
        counts, _ = np.histogram(v.xhat[inside], bins=edges)
        # Scaled to all N frames, so the outline's area is the share of x-hat inside the bounds.
        ax.stairs(counts / (n * np.diff(edges)), edges, color="0.35", lw=1.0,
                  label=_ls_name(v))  # fmt: skip
        words = (f" The grey outline is the {_ls_name(v)}; {n - int(inside.sum())} of them "
                 "lie outside the bounds and are not drawn.")  # fmt: skip
    parts = _prior_curve(v)
    label = "prior" if v.learned is None else "learned prior"
    entries = None if parts is None else _draw_prior(ax, parts, label)
    ax.set_xlabel("x")
    ax.set_ylabel("density")
    if entries is None:
        ax.legend(loc="upper left", fontsize=8)
    else:
        ax.legend(*entries, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2,
                  fontsize=7, frameon=False)  # fmt: skip
    ax.set_title("Distribution of the estimates" if v.learned is None else
                 "The learned prior over the histogram of estimates")  # fmt: skip
    fig.tight_layout()
    prior = html.escape(_rounded(v.prior)) or "not recorded"
    if v.prior_draws:
        what = (f"the learned prior (black: the population's density averaged over "
                f"{len(v.prior_draws)} draws of its hyperparameters).{_learned_words(v)}")
    elif v.learned is not None:
        what = f"the learned prior ({prior}, black).{_learned_words(v)}"
    else:
        what = f"the prior's density ({prior}, black)."
    return _fig_html(
        fig, "distribution of the estimates over the prior",
        f"Histogram of the {n} posterior means over {what}"
        f"{'' if parts is None else _atoms_words(parts)}{words} Where frames say little, "
        "their means gather where the prior's mass is.",
    )  # fmt: skip


def _pull_fig(v: _View) -> str:
    """Posterior mean against the least-squares x-hat: where the prior pulls."""
    if v.xhat is None:
        return ""
    lo, hi = v.bounds
    span = hi - lo
    ok = np.isfinite(v.xhat) & np.isfinite(v.center)
    if not ok.any():
        return ""
    qa, qb = np.quantile(v.xhat[ok], [0.005, 0.995])
    # Far beyond the bounds every x-hat is simply pulled inside: at most one span either side.
    x0 = max(min(lo, qa), lo - span) - 0.05 * span
    x1 = min(max(hi, qb), hi + span) + 0.05 * span
    y0, y1 = lo - 0.05 * span, hi + 0.05 * span
    keep = ok & (v.xhat >= x0) & (v.xhat <= x1)
    fig = _figure(5.4, 3.9)
    ax = fig.add_subplot()
    what = _points(ax, v.xhat[keep], v.center[keep], (x0, x1, y0, y1))
    ax.plot([lo, hi], [lo, hi], color="k", lw=1.0, ls="--", label="identity (no pull)")
    for bound in (lo, hi):
        ax.axhline(bound, color="0.6", lw=0.6, ls=":")
    moments = _prior_moments(v)
    if moments is not None:
        ax.axhline(moments[0], color="tab:red", lw=0.9, ls=":", label="prior mean")
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ls_name = _ls_name(v)
    ax.set_xlabel(ls_name)
    ax.set_ylabel("posterior mean")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title("Where the prior pulls")
    fig.tight_layout()
    left = int(ok.sum() - keep.sum()) + int((~ok).sum())
    return _fig_html(
        fig, "posterior mean against least squares",
        f"Each frame's posterior mean against its {ls_name} ({what}). On the dashed identity "
        "line the data decide; off it "
        + ("the neighbouring frames along the random walk and " if v.temporal else "")
        + "the prior pull towards its mean (red) and inside its bounds. "
        f"{left} frame(s) with x-hat beyond [{x0:.3g}, {x1:.3g}] are not drawn.",
    )  # fmt: skip


def _sd_fig(v: _View) -> str:
    """Posterior sd against the posterior mean, with the prior's sd."""
    lo, hi = v.bounds
    span = hi - lo
    ok = np.isfinite(v.sd) & np.isfinite(v.center)
    if not ok.any():
        return ""
    moments = _prior_moments(v)
    top = float(np.quantile(v.sd[ok], 0.999))
    # The prior's sd is drawn when it is on the scale of the frames' sds, else named.
    shown = moments is not None and moments[1] <= 3.0 * top
    top = 1.1 * max(top, moments[1] if shown else 0.0) or 1.0
    fig = _figure(5.4, 3.9)
    ax = fig.add_subplot()
    what = _points(ax, v.center[ok], v.sd[ok], (lo - 0.02 * span, hi + 0.02 * span, 0.0, top))
    words = ""
    if shown:
        ax.axhline(moments[1], color="tab:red", lw=0.9, ls=":", label="prior sd")
        ax.legend(loc="upper left", fontsize=8)
        words = " Frames near the red line (the prior's own sd) learned little from their pixels."
    elif moments is not None:
        words = (f" The prior's sd, {moments[1]:.3g}, is far above every frame's: each frame "
                 "learned much from its pixels.")  # fmt: skip
    ax.set_xlim(lo - 0.02 * span, hi + 0.02 * span)
    ax.set_ylim(0.0, top)
    ax.set_xlabel("posterior mean")
    ax.set_ylabel("posterior sd")
    ax.set_title("Uncertainty of each frame")
    fig.tight_layout()
    return _fig_html(
        fig, "posterior sd against posterior mean",
        f"Posterior sd against posterior mean ({what}).{words} Near a bound the sd shrinks: the "
        "bound cuts the posterior.",
    )  # fmt: skip


def _check_truth(truth: Any, v: _View) -> np.ndarray | None:
    """``truth`` as a float array of shape (N,), or None; InputError when it does not fit."""
    if truth is None:
        return None
    n = v.center.shape[0]
    if v.names is not None:
        raise InputError(
            f"truth= is for fits of two references (one weight per frame); this fit has "
            f"{len(v.names)} references: compare their weights with the truth yourself"
        )
    try:
        arr = np.asarray(truth, np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(
            f"truth must be an array of numbers, the true weight of every frame; got "
            f"{type(truth).__name__} ({exc})"
        ) from None
    if arr.shape != (n,):
        raise InputError(
            f"truth must have shape ({n},), one true weight per frame of the result; got shape "
            f"{arr.shape}: pass the weights in the frames' order (e.g. Simulation.x)"
        )
    bad = int(np.sum(~np.isfinite(arr)))
    if bad:
        raise InputError(
            f"truth has {bad} non-finite value(s) (NaN or inf) of {n}; every frame needs its "
            "true weight: drop those frames from the fit, or pass truth=None"
        )
    return arr


def _truth_html(v: _View, truth: np.ndarray, prob: float) -> str:
    """A known truth (a simulation): estimate vs truth, the intervals' coverage with its
    binomial sd overall and in bins of the true weight, the RMSE."""
    import pandas as pd

    n = truth.size
    inside = (v.lo <= truth) & (truth <= v.hi)
    cover = float(inside.mean())
    sd = float(np.sqrt(prob * (1.0 - prob) / n))
    z = (cover - prob) / sd
    rows = {
        f"coverage of the {percent(prob)} intervals": f"{cover:.2%} (binomial sd {sd:.2%}, "
        f"{z:+.1f} sd from {percent(prob)})",
        "RMSE of the posterior mean": f"{np.sqrt(np.mean((v.center - truth) ** 2)):.4g}",
        "RMSE of the MAP": f"{np.sqrt(np.mean((v.x_map - truth) ** 2)):.4g}",
    }
    if v.xhat is not None and np.all(np.isfinite(v.xhat)):
        rows["RMSE of the least-squares x-hat"] = f"{np.sqrt(np.mean((v.xhat - truth) ** 2)):.4g}"
    table = pd.DataFrame({"value": rows}).to_html(border=0)
    lo, hi = v.bounds
    pure = int(np.sum((truth == lo) | (truth == hi)))
    if pure:
        # Equal-tailed intervals exclude the bounds (unless the prior has an atom there).
        table += (
            f"<p>{pure} frame(s) have a true weight exactly at a bound (pure phases): an "
            "equal-tailed interval contains a bound only where the prior puts a point mass on "
            "it, so without one they count as misses; the highest-density interval "
            f'(<code>res.interval({prob:g}, kind="hdi")</code>) can cover them.</p>'
        )
    verdict = ("consistent with calibrated intervals (within 2 binomial sd)" if abs(z) <= 2
               else "more than 2 binomial sd from the nominal level: the intervals are "
               + ("too narrow" if z < 0 else "too wide"))  # fmt: skip

    lo, hi = v.bounds
    span = hi - lo
    t0, t1 = min(lo, float(truth.min())) - 0.03 * span, max(hi, float(truth.max())) + 0.03 * span
    fig = _figure(10, 3.9)
    ax, bx = fig.subplots(1, 2)
    if n <= _MAX_SCATTER:
        ax.scatter(truth[inside], v.center[inside], s=10 if n <= 500 else 4, color="tab:blue",
                   alpha=0.6, lw=0, label="interval covers the truth")  # fmt: skip
        ax.scatter(truth[~inside], v.center[~inside], s=10 if n <= 500 else 4, color="tab:red",
                   alpha=0.8, lw=0, label="interval misses it")  # fmt: skip
        what = "one dot per frame; red: the interval misses the truth"
    else:
        what = _points(ax, truth, v.center, (t0, t1, lo - 0.03 * span, hi + 0.03 * span))
    ax.plot([lo, hi], [lo, hi], color="k", lw=1.0, ls="--", label="identity")
    ax.set_xlim(t0, t1)
    ax.set_ylim(lo - 0.03 * span, hi + 0.03 * span)
    ax.set_xlabel("true x")
    ax.set_ylabel("posterior mean")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title("Estimate vs truth")
    # Coverage in bins of equal counts along the true weight: where the intervals fail.
    n_bins = int(np.clip(n // 50, 2, 10)) if n >= 20 else 1
    edges = np.unique(np.quantile(truth, np.linspace(0.0, 1.0, n_bins + 1)))
    which = np.clip(np.searchsorted(edges, truth, side="right") - 1, 0, max(edges.size - 2, 0))
    count = np.bincount(which, minlength=max(edges.size - 1, 1))
    hit = np.bincount(which, weights=inside, minlength=count.size)
    mid = np.array([np.median(truth[which == b]) if c else np.nan
                    for b, c in enumerate(count)])  # fmt: skip
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = hit / count
        err = np.sqrt(prob * (1.0 - prob) / count)
    bx.errorbar(mid, rate, yerr=2 * err, fmt="o", color="tab:blue", ms=4, capsize=3,
                label="measured (+/- 2 binomial sd)")  # fmt: skip
    bx.axhline(prob, color="k", lw=0.9, ls="--", label=f"nominal {percent(prob)}")
    bx.set_xlim(t0, t1)
    bx.set_ylim(max(0.0, min(float(np.nanmin(rate - 2 * err)), prob) - 0.05), 1.02)
    bx.set_xlabel("true x (bins of equal counts)")
    bx.set_ylabel("coverage")
    bx.legend(loc="lower left", fontsize=8)
    bx.set_title(f"Coverage of the {percent(prob)} intervals")
    fig.tight_layout()
    return table + f"<p>Coverage {cover:.2%} of {n} frames: {verdict}.</p>" + _fig_html(
        fig, "estimate against truth and coverage",
        f"Left: posterior mean against the true weight ({what}). Right: the share of frames "
        f"whose {percent(prob)} interval holds the truth, in {count.size} bins of the true weight "
        "with +/- 2 binomial sd; true weights beyond the prior's bounds cannot be covered.",
    )  # fmt: skip


def _maps_html(v: _View) -> str:
    """Maps of a spectrum image's results: the weight, its sd, the gain and R^2."""
    shape = v.map_shape
    if shape is None or len(shape) != 2:
        return ""
    panels = [("posterior mean of x", v.center, "viridis", v.bounds),
              ("posterior sd of x", v.sd, "magma", (0.0, None))]  # fmt: skip
    if v.gain is not None:
        panels.append(("gain (amount)", v.gain, "cividis", (None, None)))
    panels.append(("R^2 of the full model", v.r2, "gray", (0.0, 1.0)))
    fig = _figure(4.2 * len(panels), 4.0)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (name, values, cmap, (lo, hi)) in zip(axes, panels, strict=True):
        # Pixels stay pixels: a small map is not smoothed into a blur.
        im = ax.imshow(values.reshape(shape), cmap=cmap, vmin=lo, vmax=hi,
                       interpolation="nearest")  # fmt: skip
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        ax.set_title(name)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    gain = (" Where the gain is near 0 the pixel holds no mixture: its x returns to the prior "
            "(large sd), the honest answer.") if v.gain is not None else ""  # fmt: skip
    return _fig_html(
        fig, "maps of the estimates",
        f"The {shape[0]} x {shape[1]} map: each pixel's posterior mean of x and its sd"
        + (", the gain" if v.gain is not None else "") + f" and the R^2 of its fit.{gain}",
    )  # fmt: skip


def _summary_html(v: _View, result: Any) -> str:
    import pandas as pd

    rows = {
        "frames": v.center.size,
        "method": v.kind,
        "model": v.model_name,
        "prior": v.prior,
        **_learned_row(v),
        "sigma (noise sd)": f"{v.sigma:.6g}",
        "x mean: median [min, max]": f"{np.median(v.center):.4f} [{v.center.min():.4f}, "
        f"{v.center.max():.4f}]",
        "interval width: median": f"{np.median(v.hi - v.lo):.4g}",
        "R^2: median": f"{np.median(v.r2):.4f}",
        "frames at a bound": int(v.at_bound.sum()),
    }
    if v.gain is not None:
        rows["gain (amount): median [min, max]"] = (
            f"{np.median(v.gain):.4g} [{v.gain.min():.4g}, {v.gain.max():.4g}]"
        )
    loglik = getattr(result, "loglik", None)
    if loglik is not None:
        what = ("log evidence (prequential, along the random walk)"
                if getattr(result, "temporal", None) is not None
                else "elpd (exact leave-one-frame-out)")  # fmt: skip
        rows[what] = f"{float(np.sum(loglik)):.6g}"
    table = pd.DataFrame({"value": rows}).to_html(border=0)
    if v.idata is not None:
        from bayesmix._arviz import summary_table

        summ = summary_table(v.idata).head(12)
        table += "<p>ArviZ summary (sigma and the first frames):</p>" + summ.to_html(
            border=0, float_format=lambda f: f"{f:.4g}"
        )
    return table


#: What each learned noise parameter means, for the report's table.
_NOISE_PARAMS = {
    "log_sigma_mu": "mean of log sigma_i over the frames (population of noise scales)",
    "log_sigma_tau": "sd of log sigma_i over the frames",
    "noise_gain": "detector units per photon",
    "noise_read_sd": "read-noise sd (detector units)",
    "noise_df": "degrees of freedom of the Student-t pixels (small: heavy tails)",
    "noise_scale": "scale of the Student-t pixels (the intervals use the sandwich sigma above)",
    "noise_passes": "statistics passes to settle the pixel weights",
}

_NOISE_WORDS = {
    PerFrame: "Gaussian pixels with a noise scale sigma_i per frame, log sigma_i ~ N(mu, tau^2) "
    "with mu and tau learned; every sigma_i is integrated out of x's posterior.",
    PoissonGaussian: "counts: pixel variance gain * mean + read_sd^2 at the fitted mean; the "
    "fit re-weights every pixel by the inverse of that variance until the estimates settle "
    "(the likelihood in x is the Gaussian approximation at the fitted mean).",
    StudentT: "heavy-tailed Student-t pixels: each pass down-weights pixels with large "
    "residuals (hot pixels, cosmic rays) until the estimates settle.",
    Gaussian: "i.i.d. Gaussian pixels with one noise scale sigma for every frame.",
}


def _variance_text(variance: Any, sigma: float) -> str:
    """The variance map: where it came from, or the numbers of the array given."""
    if isinstance(variance, (str, Path)):
        what = f"from <code>{html.escape(str(variance))}</code>"
    else:
        arr = np.asarray(variance, np.float64)
        ok = arr[np.isfinite(arr)]
        what = f"of shape {tuple(arr.shape)}" + (
            f" (median {np.median(ok):.4g}, range [{ok.min():.4g}, {ok.max():.4g}])"
            if ok.size
            else ""
        )
    return (
        f"<p>Per-pixel variance map {what}: each pixel is weighted by the inverse of its "
        f"variance, and sigma = {sigma:.6g} scales the map (a pixel's noise sd is sigma times "
        "the square root of its variance).</p>"
    )


def _sigma_frame_plot(result: MapResult) -> str:
    """Per-frame noise scales: their histogram with the learned lognormal population, and their
    map for a spectrum image."""
    from scipy.stats import lognorm

    s = np.asarray(result.sigma_frame, np.float64)
    mu = float(result.noise_params["log_sigma_mu"])
    tau = float(result.noise_params["log_sigma_tau"])
    shape = result.map_shape
    panels = 2 if shape is not None and len(shape) == 2 else 1
    fig = _figure(5.2 * panels, 3.8)
    axes = fig.subplots(1, panels, squeeze=False)[0]
    ax = axes[0]
    ax.hist(s, bins=min(60, max(10, s.size // 20)), density=True, color="tab:blue", alpha=0.5,
            label="posterior mean of sigma_i")  # fmt: skip
    grid = np.linspace(0.0, max(float(s.max()), float(np.exp(mu + 3.0 * tau))), 400)[1:]
    ax.plot(grid, lognorm.pdf(grid, tau, scale=np.exp(mu)), color="k", lw=1.2,
            label=f"population: log sigma ~ N({mu:.3g}, {tau:.3g}^2)")  # fmt: skip
    ax.set_xlabel("noise scale sigma_i")
    ax.set_ylabel("density")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title("Noise scale per frame")
    if panels == 2:
        im = axes[1].imshow(s.reshape(shape), cmap="magma")
        fig.colorbar(im, ax=axes[1], fraction=0.046, pad=0.04)
        axes[1].set_title("sigma_i (posterior mean) per pixel")
        axes[1].set_xticks([])
        axes[1].set_yticks([])
    fig.tight_layout()
    return _png(fig, "noise scale per frame") + (
        "<p>Each sigma_i is shrunk towards the population, so the histogram of posterior means "
        "is narrower than the population curve where frames say little about their own noise.</p>"
    )


def _compare_html(result: MapResult, compare: Any) -> str:
    """The fit ranked with the other fits given, by elpd (:func:`bayesmix.compare`)."""
    from bayesmix._compare import compare as rank

    if isinstance(compare, dict):
        names, others = ["this fit", *map(str, compare)], list(compare.values())
    else:
        others = list(compare)
        names = ["this fit"] + [f"{noise_spec(o.model.noise)} ({k + 1})"
                                if isinstance(o, MapResult) else f"fit {k + 1}"
                                for k, o in enumerate(others)]  # fmt: skip
    table = rank(result, *others, names=names)
    return (
        "<p>Compared with the other fits of the same frames (best first; a difference of "
        "several dse is a clear preference):</p>"
        + table.to_html(border=0, float_format=lambda f: f"{f:.6g}")
    )


def _noise_html(result: Any, variance: Any, compare: Any) -> str:
    """The noise model of a MAP fit, when it is not the default one (non-Gaussian pixels, a
    variance map) or when fits are compared: spec, learned parameters, per-frame scales."""
    import pandas as pd

    if not isinstance(result, MapResult):
        return ""
    noise = result.model.noise
    if isinstance(noise, Gaussian) and variance is None and not compare:
        return ""
    out = [
        f"<p>Noise model <code>{html.escape(noise_spec(noise))}</code>: "
        f"{html.escape(_NOISE_WORDS[type(noise)])}</p>"
    ]
    if variance is not None:
        out.append(_variance_text(variance, result.sigma))
    params = dict(result.noise_params)
    if params:
        rows = {k: (f"{v:.6g}" if isinstance(v, float) else str(v), _NOISE_PARAMS.get(k, ""))
                for k, v in params.items()}  # fmt: skip
        if "log_sigma_mu" in params:
            rows["median sigma_i"] = (f"{np.exp(params['log_sigma_mu']):.6g}",
                                      "exp(mu): the population's median noise scale")  # fmt: skip
        table = pd.DataFrame.from_dict(rows, orient="index", columns=["value", "meaning"])
        out.append("<p>Learned by the fit:</p>" + table.to_html(border=0))
    passes = params.get("noise_passes")
    if passes is not None:
        out.append(f"<p>The pixel weights settled after {int(passes)} statistics pass(es) "
                   "over the frames.</p>")  # fmt: skip
    if result.sigma_frame is not None and "log_sigma_mu" in params:
        out.append(_sigma_frame_plot(result))
    if result.loglik is not None:
        ll = np.asarray(result.loglik, np.float64)
        se = float(np.sqrt(ll.size * ll.var()))
        out.append(
            f"<p>elpd (exact leave-one-frame-out: each frame's marginal likelihood at the shared "
            f"noise parameters) = {ll.sum():.6g} (se {se:.3g}); compare noise models of the same "
            "frames with <code>bayesmix.compare</code>.</p>"
        )
    if compare:
        out.append(_compare_html(result, compare))
    return "".join(out)


#: At most this many sequences get a panel; at most this many frames get an error bar each.
_MAX_PANELS, _MAX_BARS, _MAX_LINE = 4, 300, 4000


class _Walk:
    """A temporal fit's numbers for the "Sequence" section, from a MapResult (its
    ``temporal``) or a NUTS InferenceData (``posterior['q']``, ``constant_data['time']`` and
    ``['sequence']``)."""

    def __init__(self, v: _View, result: Any, prob: float) -> None:
        from scipy.stats import norm

        z = float(norm.ppf(0.5 + 0.5 * prob))
        n = v.center.size
        self.q_draws: np.ndarray | None = None
        if isinstance(result, MapResult):
            t = result.temporal
            self.q, self.q_sd, self.q_fixed, self.q_limit = t.q, t.q_sd, t.q_fixed, t.q_limit
            self.times, self.sequence = np.asarray(t.times), np.asarray(t.sequence)
            self.alone = np.asarray(t.mean_alone, np.float64)
            half = z * np.asarray(t.sd_alone, np.float64)
            self.alone_what = f"each frame on its own (posterior mean +/- {z:.3g} sd)"
            self.log_evidence: float | None = t.log_evidence
        else:
            idata = v.idata
            post, const = idata.posterior, getattr(idata, "constant_data", None)
            self.q_fixed = "q" not in post
            if self.q_fixed:
                self.q = float(_parse_q(str(idata.attrs.get("temporal", ""))) or np.nan)
                self.q_sd = 0.0
            else:
                self.q_draws = np.asarray(post["q"], np.float64)
                self.q, self.q_sd = float(self.q_draws.mean()), float(self.q_draws.std())
            self.q_limit = ""

            def const_var(name: str, default: np.ndarray) -> np.ndarray:
                if const is not None and name in const:
                    return np.asarray(const[name])
                return default

            self.times = const_var("time", np.arange(n, dtype=np.float64))
            self.sequence = const_var("sequence", np.zeros(n, np.int64))
            # The frame's own least-squares estimate and its sd at the fitted sigma.
            df = v.table
            self.alone = df["xhat"].to_numpy(np.float64)
            half = z * v.sigma / np.sqrt(df["dd"].to_numpy(np.float64))
            self.alone_what = f"least squares per frame (+/- {z:.3g} sigma/||A-B||)"
            self.log_evidence = None
        lo, hi = v.bounds
        self.alone_lo = np.clip(self.alone - half, lo, hi)
        self.alone_hi = np.clip(self.alone + half, lo, hi)
        self.labels, self.codes = np.unique(self.sequence, return_inverse=True)

    @property
    def n_sequences(self) -> int:
        return int(self.labels.size)


def _parse_q(spec: str) -> float | None:
    """q of a spec 'random_walk:q=0.01' (None when it is learned)."""
    from bayesmix.temporal import RandomWalk, check_temporal

    try:
        model = check_temporal(spec)
    except ValueError:
        return None
    return model.q if isinstance(model, RandomWalk) else None


def _is_temporal(v: _View, result: Any) -> bool:
    if isinstance(result, MapResult):
        return getattr(result, "temporal", None) is not None
    if v.idata is None:
        return False
    spec = str(v.idata.attrs.get("temporal", "independent") or "independent")
    return spec.split(":")[0].strip() not in ("", "independent") or "q" in v.idata.posterior


def _thin(n: int, most: int) -> np.ndarray:
    """Indices of at most ``most`` evenly spaced items of ``n`` (all when n <= most)."""
    if n <= most:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, most).round().astype(np.int64))


def _sequence_plot(v: _View, w: _Walk, prob: float) -> str:
    """One panel per sequence (the first few): the trajectory's posterior mean and its
    interval band over time, the frame-by-frame estimates with error bars beside it."""
    sizes = np.bincount(w.codes, minlength=w.n_sequences)
    shown = np.arange(min(w.n_sequences, _MAX_PANELS))
    fig = _figure(10, 2.6 * shown.size + 0.6)
    axes = fig.subplots(shown.size, 1, squeeze=False)[:, 0]
    for ax, k in zip(axes, shown, strict=True):
        idx = np.flatnonzero(w.codes == k)
        idx = idx[np.argsort(w.times[idx], kind="stable")]
        t = w.times[idx]
        line = idx[_thin(idx.size, _MAX_LINE)]
        bars = idx[_thin(idx.size, _MAX_BARS)]
        tb = w.times[bars]
        ax.errorbar(tb, w.alone[bars], yerr=[w.alone[bars] - w.alone_lo[bars],
                                             w.alone_hi[bars] - w.alone[bars]],
                    fmt="o", ms=2.5, lw=0.6, color="0.55", alpha=0.7,
                    label=w.alone_what)  # fmt: skip
        tl = w.times[line]
        ax.fill_between(tl, v.lo[line], v.hi[line], color="tab:blue", alpha=0.3, lw=0,
                        label=f"{percent(prob)} interval (random walk)")  # fmt: skip
        ax.plot(tl, v.center[line], color="tab:blue", lw=1.0, label="posterior mean")
        ax.set_ylim(v.bounds[0] - 0.02, v.bounds[1] + 0.02)
        ax.set_xlim(t.min() - 0.5 if t.size == 1 else t.min(), t.max() + 0.5 if t.size == 1
                    else t.max())  # fmt: skip
        ax.set_ylabel("x")
        thinned = "" if bars.size == idx.size else f"; error bars on {bars.size} of them"
        ax.set_title(f"sequence {w.labels[k]}: {sizes[k]} frames{thinned}", fontsize=10)
    axes[-1].set_xlabel("time")
    axes[0].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=8)
    fig.tight_layout()
    return _png(fig, "sequences over time")


def _q_plot(w: _Walk) -> str:
    """NUTS: the posterior of q, one histogram per chain."""
    draws = w.q_draws
    if draws is None:
        return ""
    fig = _figure(6, 3.0)
    ax = fig.add_subplot()
    draws = draws.reshape(-1, draws.shape[-1]) if draws.ndim > 1 else draws[None]
    for c, chain in enumerate(draws):
        ax.hist(chain, bins=40, density=True, histtype="step", lw=1.0, label=f"chain {c}")
    ax.axvline(w.q, color="k", lw=0.8, ls="--", label="posterior mean")
    ax.set_xlabel("q (step sd per unit of time)")
    ax.set_ylabel("density")
    ax.set_title("Posterior of the random walk's step q")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=8)
    fig.tight_layout()
    return _png(fig, "posterior of q")


def _sequence_html(v: _View, result: Any, prob: float) -> str:
    """A temporal fit: the learned step q, the sequences, and each trajectory over time beside
    the frame-by-frame estimates; empty for independent frames."""
    import pandas as pd

    if v.names is not None or not _is_temporal(v, result):
        return ""
    w = _Walk(v, result, prob)
    if w.q_fixed:
        q_text = f"{w.q:.4g} (given)"
    elif w.q_draws is not None:
        q_text = f"{w.q:.4g} +/- {w.q_sd:.2g} (posterior mean +/- sd, NUTS)"
    else:
        q_text = f"{w.q:.4g} +/- {w.q_sd:.2g} (maximum marginal likelihood +/- its sd)"
    sd = v.table["sd"].to_numpy(np.float64)
    sizes = np.bincount(w.codes, minlength=w.n_sequences)
    half = np.median(0.5 * (w.alone_hi - w.alone_lo))
    rows = {
        "random walk step q (per unit of time)": q_text,
        "sequences": w.n_sequences,
        "frames per sequence: median [min, max]": f"{int(np.median(sizes))} "
        f"[{sizes.min()}, {sizes.max()}]",
        "posterior sd of x along the walk: median": f"{np.median(sd):.4g}",
        "half-width of the frame-by-frame error bars: median": f"{half:.4g}",
    }
    if w.log_evidence is not None:
        rows["log marginal likelihood p(y | sigma, q)"] = f"{w.log_evidence:.6g}"
    attrs = {} if v.idata is None else dict(v.idata.attrs)
    if attrs.get("q_map") is not None and not w.q_fixed:
        rows["q of the fast path (start of the chains)"] = (
            f"{float(attrs['q_map']):.4g} +/- {float(attrs.get('q_map_sd', np.nan)):.2g}")
    out = [pd.DataFrame({"value": rows}).to_html(border=0)]
    if w.q_limit == "upper":
        out.append('<p class="warn">q reached the top of its search range: the frames look '
                   "independent; temporal='independent' gives the frame-by-frame answer.</p>")
    elif w.q_limit == "lower":
        out.append('<p class="warn">q reached the bottom of its search range: the frames look '
                   "like one weight for the whole sequence.</p>")
    out.append(_sequence_plot(v, w, prob))
    left = w.n_sequences - min(w.n_sequences, _MAX_PANELS)
    text = (f"Each panel is one sequence over time: the posterior mean of x along the random "
            f"walk with its {percent(prob)} interval (blue), and {html.escape(w.alone_what)} "
            "(grey).")  # fmt: skip
    if left:
        text += f" The first {_MAX_PANELS} sequences are drawn; {left} more are not shown."
    if np.bincount(w.codes).max() > _MAX_BARS:
        text += (f" Long sequences are thinned: at most {_MAX_BARS} evenly spaced frames get an "
                 f"error bar and {_MAX_LINE} a point of the band.")
    out.append(f"<p>{text}</p>")
    out.append(_q_plot(w))
    return "".join(out)


def _diagnostics_html(v: _View, result: Any) -> tuple[str, Any]:
    """MAP: the method as run and whether its iteration converged. NUTS: the verdict of
    :func:`bayesmix._arviz.diagnose`, its numbers and the worst-mixing variables."""
    import pandas as pd

    if v.idata is None:
        verdict = "pass" if bool(result.converged) else "warn"
        text = (f"{v.kind}. {v.method_text} Each frame's intervals are exact given sigma; "
                "bayesmix.sample gives the joint posterior of the weights and sigma, with "
                "chains to check.")  # fmt: skip
        return f'<p class="{verdict}">{verdict.upper()}</p><p>{html.escape(text)}</p>', None
    from bayesmix._arviz import diagnose

    diag = diagnose(v.idata)
    lines = "".join(f"<li>{html.escape(r)}</li>" for r in diag.reasons)
    checks = {
        "R-hat max": f"{diag.rhat_max:.4f}",
        "ESS bulk min": f"{diag.ess_bulk_min:.0f}",
        "ESS tail min": f"{diag.ess_tail_min:.0f}",
        "divergent transitions": str(diag.divergences),
        "BFMI min (over chains)": f"{float(np.min(diag.bfmi)):.2f}",
        "chains x draws": f"{diag.n_chains} x {diag.n_draws}",
        "lowest ESS chance explains": f"{diag.ess_limit:.0f}",
    }
    body = (
        f'<p class="{diag.verdict}">{diag.verdict.upper()}</p>'
        "<p>The verdict of bayesmix.diagnose. Each R-hat and ESS is compared with what chains "
        f"of {diag.n_draws} draws give by chance over the run's {len(diag.table)} variables "
        "(a run whose chains are fine warns with probability 1%; the table's rhat_limit is the "
        "largest R-hat chance explains for that variable); any divergent transition or a BFMI "
        "below 0.3 warns.</p>"
        + (f"<ul>{lines}</ul>" if lines else "<p>Every check holds.</p>")
        + pd.DataFrame({"value": checks}).to_html(border=0)
        + "<p>The variables that mix worst:</p>"
        + diag.to_dataframe().head(10).to_html(border=0, float_format=lambda f: f"{f:.4g}")
    )
    return body, diag


def _trace_html(v: _View, diag: Any) -> str:
    if v.idata is None:
        return ""
    from bayesmix._arviz import plot_trace

    worst = [int(name[2:-1]) if name[2:-1].lstrip("-").isdigit() else name[2:-1]
             for name in diag.table.index if name.startswith("x[")][:3]  # fmt: skip
    frames = [f for f in v.frame if f in worst] or list(v.frame[:3])
    fig = _figure(10, 2.6 * (1 + len(frames)))
    axes = fig.subplots(1 + len(frames), 2, squeeze=False)
    plot_trace(v.idata, axes[:1], ["sigma"], None)
    plot_trace(v.idata, axes[1:], ["x"], frames)
    for row, name in zip(axes, ["sigma"] + [f"x[frame {f}]" for f in frames], strict=True):
        row[0].set_title(f"{name}: density per chain")
        row[1].set_title(f"{name}: rank plot")
    fig.suptitle("Chains of sigma and of the worst-mixing weights (uniform ranks = good mixing)")
    # ArviZ draws on the axes we give it; lay them out afterwards so that titles and tick labels
    # of neighbouring rows do not overlap.
    fig.tight_layout()
    return _png(fig, "trace and rank plots")


def _energy_html(v: _View) -> str:
    if v.idata is None:
        return ""
    from bayesmix._arviz import plot_energy

    fig = _figure(6, 3.6)
    ax = fig.add_subplot()
    plot_energy(v.idata, ax)
    ax.set_title("Energy: marginal vs transition (similar widths = good exploration)")
    if ax.get_legend() is not None:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    return _png(fig, "energy plot")


def _residual_html(v: _View, frames: Any, refs: list[Any], mask: Any) -> str:
    """The mean residual image: the mean frame minus the model at the mean per-frame numbers."""
    k = 2 if v.names is None else len(v.names)
    if frames is None or len(refs) != k:
        more = "" if k == 2 else f", more_refs= (all {k} references)"
        return f"<p>Pass <code>frames=, ref_a=, ref_b={more}</code> to report() to see it.</p>"
    stack = prepare(frames, refs[0], refs[1], mask, tuple(refs[2:]))
    shape = stack.frame_shape
    n = stack.frames.shape[0]
    if n != v.center.shape[0]:
        raise InputError(f"frames has {n} frames but the result has {v.center.shape[0]}")
    # One chunked pass for the mean frame.
    total = np.zeros(int(np.prod(shape)))
    count = np.zeros_like(total)
    for i in range(0, n, 1024):
        chunk = np.asarray(stack.frames[i : i + 1024], np.float64).reshape(-1, total.size)
        ok = np.isfinite(chunk)
        total += np.where(ok, chunk, 0.0).sum(0)
        count += ok.sum(0)
    # The model is linear in the per-frame numbers, so its mean over frames is the model at their
    # means: sum_k mean(g x_k) R_k + N mean(c).
    if v.names is None:
        g = np.ones_like(v.center) if v.gain is None else v.gain
        weights = np.array([np.mean(g * v.center), np.mean(g * (1.0 - v.center))])
    else:
        weights = v.center.mean(axis=0)
    fitted = weights @ np.stack([np.asarray(r, np.float64).reshape(-1) for r in refs])
    if v.background is not None:
        if v.model is None:
            return "<p>Not drawn: the fit used background images that the report was not given."
        basis = v.model.basis(shape).reshape(v.background.shape[1], -1)
        fitted = fitted + v.background.mean(axis=0) @ basis
    with np.errstate(invalid="ignore", divide="ignore"):
        resid = total / count - fitted
    if stack.pixels is not None:
        keep = np.zeros(total.size, bool)
        keep[stack.pixels] = True
        resid[~keep] = np.nan
    fig = _figure(6.5, 4.5)
    ax = fig.add_subplot()
    if len(shape) == 1:
        ax.plot(resid)
        ax.axhline(0, color="k", lw=0.5)
        ax.set_xlabel("channel")
        ax.set_ylabel("mean residual")
    else:
        img = resid.reshape(shape)
        img = img if img.ndim == 2 else np.nanmean(img.reshape(shape[0], shape[1], -1), axis=2)
        lim = float(np.nanmax(np.abs(img))) or 1.0
        im = ax.imshow(img, cmap="RdBu_r", vmin=-lim, vmax=lim)
        fig.colorbar(im, ax=ax, label="mean residual (data - model)")
        ax.set_xlabel("pixel column")
        ax.set_ylabel("pixel row")
    ax.set_title(f"Mean residual per pixel: where the model ({v.model_name}) fails")
    noise = v.sigma / np.sqrt(n)
    return _png(fig, "mean residual image") + (
        f"<p>Pure noise would leave residuals of about sigma/sqrt(N) = {noise:.3g}; "
        f"the largest here is {np.nanmax(np.abs(resid)):.3g}.</p>"
    )


def _misfit_rule(n: int) -> str:
    """How a frame is called badly fit, in words (HTML)."""
    return (
        "residual larger than the noise explains: each frame's chi-square test of its residual "
        f"gives its misfit p, flagged by Benjamini&ndash;Hochberg at {MISFIT_FDR:.0%} false "
        f"discovery rate over the {n} frames, i.e. misfit q &lt; {MISFIT_FDR:g}"
    )


def _badly_fit(v: _View) -> np.ndarray:
    """Frames whose misfit q-value is below the false discovery rate, shape (N,) of bool."""
    with np.errstate(invalid="ignore"):
        return v.misfit_q < MISFIT_FDR


def _flagged_frames(v: _View, bad: np.ndarray, also: np.ndarray) -> np.ndarray:
    """Badly fit frames first (smallest p first), then those flagged only by ``also``."""
    worst = np.flatnonzero(bad)
    worst = worst[np.argsort(v.misfit_p[worst], kind="stable")]
    return np.concatenate([worst, np.flatnonzero(also & ~bad)])


def _flagged_table(v: _View, show: np.ndarray, cols: dict[str, np.ndarray], total: int) -> str:
    import pandas as pd

    cols = {**cols, "R^2": v.r2[show], "misfit p": v.misfit_p[show],
            "misfit q": v.misfit_q[show]}  # fmt: skip
    df = pd.DataFrame(cols, index=pd.Index(v.frame[show], name="frame"))
    more = f"<p>... and {total - show.size} more.</p>" if total > show.size else ""
    return df.to_html(border=0, float_format=lambda f: f"{f:.4g}") + more


def _flagged_html(v: _View) -> str:
    bad = _badly_fit(v)
    flagged = _flagged_frames(v, bad, v.at_bound)
    text = (
        f"<p>{int(v.at_bound.sum())} frame(s) with the posterior piled up at a bound; "
        f"{int(bad.sum())} frame(s) badly fit ({_misfit_rule(v.center.size)}).</p>"
    )
    if flagged.size == 0:
        return text
    show = flagged[:_MAX_ROWS]
    cols = {"x": v.center[show], "lo": v.lo[show], "hi": v.hi[show],
            "at bound": v.at_bound[show]}  # fmt: skip
    return text + _flagged_table(v, show, cols, flagged.size)


def _panels(k: int, w: float, h: float) -> tuple[Any, list[Any]]:
    """A figure with one panel per reference, at most three across."""
    cols = min(k, 3)
    rows = -(-k // cols)
    fig = _figure(w * cols, h * rows)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes[k:]:
        ax.set_visible(False)
    return fig, list(axes[:k])


def _simplex_weights_html(v: _View, prob: float) -> str:
    """K >= 3: the weights of every reference stacked (frames sorted by their dominant
    reference), each reference's weights sorted with their bands and their distribution over
    the prior's marginal, and for K = 3 a ternary plot."""
    names, mean = v.names, v.center
    n, k = mean.shape
    colors = [f"C{i % 10}" for i in range(k)]
    dominant = np.argmax(mean, axis=1)
    ranks = _thin(n, _BAND_POINTS)
    order = np.lexsort((-mean[np.arange(n), dominant], dominant))[ranks]
    fig = _figure(10, 3.6)
    ax = fig.add_subplot()
    ax.stackplot(ranks, np.clip(mean[order], 0.0, None).T, labels=names, colors=colors,
                 lw=0)  # fmt: skip
    ax.set_xlim(0, max(n - 1, 1))
    ax.set_ylim(0, 1)
    ax.set_xlabel("frames sorted by dominant reference, then its weight (rank)")
    ax.set_ylabel("posterior mean weight")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.set_title(f"Weights of the {k} references per frame, sorted")
    fig.tight_layout()
    out = _fig_html(
        fig, "stacked weights of the references, frames sorted",
        "Every frame's posterior mean weights stacked (they sum to 1), frames grouped by their "
        f"dominant reference and sorted by its weight.{_thinned_words(ranks.size, n)}",
    )  # fmt: skip

    fig, axes = _panels(k, 4.0, 3.2)
    drawn = n
    for i, (ax, name) in enumerate(zip(axes, names, strict=True)):
        drawn = _sorted_band(ax, mean[:, i], v.lo[:, i], v.hi[:, i], colors[i], prob)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel(f"frames sorted by weight of {name} (rank)", fontsize=9)
        ax.set_ylabel(f"weight of {name}")
    axes[0].legend(loc="upper left", fontsize=8)
    fig.suptitle(f"Each reference's weight, frames sorted: posterior mean and {percent(prob)} "
                 "interval")  # fmt: skip
    fig.tight_layout()
    out += _fig_html(
        fig, "sorted weights of each reference, with their intervals",
        "One panel per reference, its frames sorted by their posterior mean weight (not in "
        f"input order), with each frame's {percent(prob)} interval.{_thinned_words(drawn, n)}"
        f"{_interval_words(v, prob)}",
    )  # fmt: skip

    fig, axes = _panels(k, 4.0, 3.0)
    edges = np.linspace(0.0, 1.0, int(np.clip(np.sqrt(n), 10, 60)) + 1)
    legend = None
    for i, (ax, name) in enumerate(zip(axes, names, strict=True)):
        ax.hist(mean[:, i], bins=edges, density=True, color=colors[i], alpha=0.55,
                label="posterior means")  # fmt: skip
        parts = _prior_curve(v, i)
        entries = None
        if parts is not None:
            top = ax.get_ylim()[1]
            label = "prior (marginal)" if v.learned is None else "learned prior (marginal)"
            # The right axis is named once, on the last panel of each row.
            last = i == k - 1 or i % 3 == 2
            entries = _draw_prior(ax, parts, label, right_label=last)
            ax.set_ylim(0, max(top, min(float(np.max(parts.density)) * 1.05, 3.0 * top)))
        ax.set_xlabel(f"weight of {name}")
        ax.set_ylabel("density")
        if i == 0 and entries is None:
            ax.legend(loc="upper right", fontsize=8)
        elif i == 0:
            legend = entries  # one legend below the panels: inside, it would hide a spike
    fig.suptitle("Distribution of each reference's estimates over its "
                 + ("prior" if v.learned is None else "learned prior"))  # fmt: skip
    fig.tight_layout()
    if legend is not None:
        fig.legend(*legend, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=3,
                   fontsize=8, frameon=False)  # fmt: skip
    prior = html.escape(_rounded(v.prior)) or "not recorded"
    atoms = ""
    first = _prior_curve(v, 0)
    if first is not None and first.atoms:
        p = v.prior_obj.atoms
        listed = ", ".join(f"{html.escape(r)} {q:.3g}" for r, q in zip(names, p, strict=True))
        atoms = (
            " The prior has point masses on the pure phases, which are probabilities, not "
            f"densities: each panel draws the continuous part's marginal density times its "
            f"probability 1 &minus; &Sigma; atoms = {first.weight:.3g} (left axis, the scale of "
            "the histogram, whose area is 1), and as red spikes (right axis, their values "
            "written beside them) the probability that the weight is 1 (its own pure phase) "
            "and 0 (another reference's pure phase, the sum of their atoms). The pure phases' "
            f"probabilities: {listed}."
        )
    out += _fig_html(
        fig, "distribution of each reference's estimates over the prior",
        f"Histogram of the {n} posterior means of each reference's weight over the marginal "
        f"density of the {'learned ' if v.learned is not None else ''}prior ({prior}, "
        f"black).{atoms}{_learned_words(v)}",
    )  # fmt: skip

    if k == 3:
        h = np.sqrt(3.0) / 2.0
        px, py = mean[:, 1] + 0.5 * mean[:, 2], h * mean[:, 2]
        fig = _figure(5.5, 5.0)
        ax = fig.add_subplot()
        ax.plot([0, 1, 0.5, 0], [0, 0, h, 0], color="k", lw=0.8)
        what = _points(ax, px, py, (-0.02, 1.02, -0.02, h + 0.02))
        for (x0, y0), name, va in zip([(0, 0), (1, 0), (0.5, h)], names,
                                      ["top", "top", "bottom"], strict=True):  # fmt: skip
            ax.annotate(name, (x0, y0), ha="center", va=va, fontsize=11,
                        xytext=(0, -6 if va == "top" else 6),
                        textcoords="offset points")  # fmt: skip
        ax.set_xlim(-0.08, 1.08)
        ax.set_ylim(-0.1, h + 0.1)
        ax.set_aspect("equal")
        ax.axis("off")
        ax.set_title("Posterior mean weights on the simplex (ternary)")
        out += _fig_html(
            fig, "ternary plot of the weights",
            f"Ternary plot: each frame's posterior mean weights as a point of the triangle "
            f"whose corners are the pure references {', '.join(map(html.escape, names))} "
            f"({what}).",
        )  # fmt: skip
    return out


def _simplex_maps_html(v: _View) -> str:
    """K >= 3, a spectrum image: each reference's weight map and its sd map, and R^2."""
    shape = v.map_shape
    if shape is None or len(shape) != 2:
        return ""
    k = len(v.names)
    fig = _figure(4.2 * k, 8.0)
    axes = fig.subplots(2, k, squeeze=False)
    for i, name in enumerate(v.names):
        for ax, values, what, cmap, (lo, hi) in (
            (axes[0, i], v.center[:, i], "posterior mean", "viridis", (0.0, 1.0)),
            (axes[1, i], v.sd[:, i], "posterior sd", "magma", (0.0, None)),
        ):
            im = ax.imshow(values.reshape(shape), cmap=cmap, vmin=lo, vmax=hi)
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
            ax.set_title(f"{name}: {what}")
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    out = _png(fig, "maps of each reference")
    fig = _figure(4.6, 4.0)
    ax = fig.add_subplot()
    im = ax.imshow(v.r2.reshape(shape), cmap="gray", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_title("R^2 of the full model")
    ax.set_xticks([])
    ax.set_yticks([])
    return out + _png(fig, "map of R^2")


def _simplex_summary_html(v: _View) -> str:
    import pandas as pd

    rows = {
        "frames": v.center.shape[0],
        "method": v.kind,
        "model": v.model_name,
        "references": ", ".join(v.names),
        "prior": v.prior,
        **_learned_row(v),
        "sigma (noise sd)": f"{v.sigma:.6g}",
        "R^2: median": f"{np.median(v.r2):.4f}",
        "frames with a weight at 0 (MAP on a face)": int(v.at_bound.sum()),
    }
    table = pd.DataFrame({"value": rows}).to_html(border=0)
    per = {
        "mean weight (over frames)": v.center.mean(axis=0),
        "weight: median": np.median(v.center, axis=0),
        "weight: min": v.center.min(axis=0),
        "weight: max": v.center.max(axis=0),
        "posterior sd: median": np.median(v.sd, axis=0),
        "interval width: median": np.median(v.hi - v.lo, axis=0),
        "frames with MAP weight 0": (v.x_map <= 0.0).sum(axis=0),
    }
    if v.mc_se is not None:
        per["Monte Carlo error: max"] = v.mc_se.max(axis=0)
    ref_table = pd.DataFrame(per, index=pd.Index(list(v.names), name="reference"))
    return (
        table
        + "<p>Per reference:</p>"
        + ref_table.to_html(border=0, float_format=lambda f: f"{f:.4g}")
    )


def _simplex_diagnostics_html(v: _View, result: Any) -> str:
    if v.idata is not None:
        body, _ = _diagnostics_html(v, result)
        return body
    ok = bool(result.converged)
    verdict = "pass" if ok else "warn"
    text = (
        f"{v.kind}. {v.method_text} The MAP of each frame is exact (a quadratic programme on "
        "the simplex); "
        "the means, sds and intervals are exact given sigma where the posterior lies well inside "
        f"the simplex, else from {result.n_draws} Gibbs draws (seed {result.seed})."
    )
    if v.mc_se is not None:
        ratio = float(np.max(v.mc_se / np.maximum(v.sd, 1e-300)))
        text += f" Largest Monte Carlo error of a mean, relative to its sd: {ratio:.3f}."
    return f'<p class="{verdict}">{verdict.upper()}</p><p>{html.escape(text)}</p>'


def _simplex_flagged_html(v: _View) -> str:
    bad = _badly_fit(v)
    flagged = _flagged_frames(v, bad, np.zeros_like(bad))
    text = (
        f"<p>{int(v.at_bound.sum())} frame(s) with a reference's MAP weight at 0 (expected when "
        f"a reference is absent; see the summary); {int(bad.sum())} frame(s) badly fit "
        f"({_misfit_rule(v.center.shape[0])}).</p>"
    )
    if flagged.size == 0:
        return text
    show = flagged[:_MAX_ROWS]
    cols = {f"mean {r}": v.center[show, i] for i, r in enumerate(v.names)}
    return text + _flagged_table(v, show, cols, flagged.size)


def _simplex_trace_html(v: _View) -> str:
    """NUTS, K >= 3: chains of sigma and of every reference's weight in the worst-mixing frame."""
    from bayesmix._arviz import plot_trace

    cols = [f"rhat_{r}" for r in v.names if f"rhat_{r}" in v.table.columns]
    if not cols:
        return ""
    worst = v.table[cols].max(axis=1).to_numpy()
    frame = v.table.index[int(np.nanargmax(worst))] if np.isfinite(worst).any() else v.frame[0]
    k = len(v.names)
    fig = _figure(10, 2.4 * (1 + k))
    axes = fig.subplots(1 + k, 2, squeeze=False)
    plot_trace(v.idata, axes[:1], ["sigma"], None)
    plot_trace(v.idata, axes[1:], ["x"], [frame])
    for row, name in zip(axes, ["sigma"] + [f"x_{r}[frame {frame}]" for r in v.names],
                         strict=True):  # fmt: skip
        row[0].set_title(f"{name}: density per chain")
        row[1].set_title(f"{name}: rank plot")
    fig.suptitle("Chains of sigma and of every weight of the worst-mixing frame "
                 "(uniform ranks = good mixing)")  # fmt: skip
    fig.tight_layout()
    return _png(fig, "trace and rank plots")


def _simplex_body(v: _View, result: Any, prob: float, frames: Any, refs: list[Any],
                  mask: Any) -> dict[str, str]:  # fmt: skip
    """The sections of a K >= 3 report (empty where they do not apply)."""
    nuts = v.idata is not None
    return {
        "Maps": _simplex_maps_html(v),
        "Weights per frame": _simplex_weights_html(v, prob),
        "Summary": _simplex_summary_html(v),
        "Diagnostics": _simplex_diagnostics_html(v, result),
        "Trace and rank plots": _simplex_trace_html(v) if nuts else "",
        "Energy": _energy_html(v) if nuts else "",
        "Residual image": _residual_html(v, frames, refs, mask),
        "Flagged frames": _simplex_flagged_html(v),
    }


def check_report_path(path: str | Path) -> Path:
    """The path of a report, checked before any work: it must end in ``.html`` or ``.htm``.

    Parameters
    ----------
    path : str or Path
        Where the report is to be written.

    Returns
    -------
    Path
        ``path`` as a :class:`~pathlib.Path`.

    Raises
    ------
    InputError
        The suffix is not one of :data:`REPORT_SUFFIXES` (any case): the page would be HTML
        whatever the name says, so a ``.pdf`` would hold HTML.

    Examples
    --------
    >>> check_report_path("r.pdf")
    Traceback (most recent call last):
    ...
    bayesmix._errors.InputError: the report is an HTML file ... e.g. 'r.html'; got 'r.pdf' ...
    """
    path = Path(path)
    if path.suffix.lower() not in REPORT_SUFFIXES:
        got = f"suffix {path.suffix!r}" if path.suffix else "no suffix"
        # A folder ('.', '/') has no name to give a suffix: suggest a file in it.
        like = path.with_suffix(".html") if path.name else path / "report.html"
        raise InputError(
            f"the report is an HTML file (one self-contained page): give a path ending in .html "
            f"or .htm, e.g. '{like}'; got '{path}' ({got}). To share it as a PDF, open the "
            "HTML in a browser and print it to PDF"
        )
    return path


def report(
    result: Any,
    path: str | Path,
    *,
    frames: Any = None,
    ref_a: Any = None,
    ref_b: Any = None,
    mask: Any = None,
    prob: float = 0.9,
    overwrite: bool = False,
    title: str = "bayesmix report",
    more_refs: Any = (),
    variance: Any = None,
    compare: Any = None,
    truth: Any = None,
) -> Path:
    """Write a self-contained HTML report of a fit.

    Parameters
    ----------
    result : MapResult, arviz.InferenceData or pandas.DataFrame
        From :func:`bayesmix.fit_map` or :func:`bayesmix.sample`, or the table of a results
        file of :func:`bayesmix.fit_map` read by :func:`bayesmix.read_results` (the fit is
        rebuilt from it; its metadata, e.g. a learned prior's hyperparameters, is reported;
        an ``x_true`` column is the truth).
    path : str or Path
        Where to write the HTML (atomically; an existing file is kept unless ``overwrite``);
        it must end in ``.html`` or ``.htm``.
    frames, ref_a, ref_b, mask : optional
        The data of the fit, for the residual image (one pass for the mean frame).
    more_refs : sequence of arrays, optional
        With K >= 3 references: the references after ``ref_a`` and ``ref_b``, for the residual
        image.
    variance : array or str, optional
        The per-pixel variance map the fit was given (``fit_map(..., variance=)``), or where it
        came from: described in the "Noise model" section.
    compare : sequence or dict of results, optional
        Other fits of the same frames (e.g. with other noise models; a dict names them): the
        "Noise model" section ranks this fit among them by elpd (:func:`bayesmix.compare`).
    truth : array, shape (N,), optional
        The true weight of every frame (a simulation's ``x``; two references): adds a "Truth
        vs estimate" section with the estimates against it, the measured coverage of the
        ``prob`` intervals with its binomial sd, and the RMSE.
    prob : float
        Probability of the intervals shown.
    overwrite : bool
        Replace an existing file.
    title : str
        Heading of the page.

    Returns
    -------
    Path
        The file written. Every report has the weights per frame (frames sorted by their
        estimate with their intervals, the estimates' distribution over the prior, the
        estimate against least squares, the sd against the estimate), a summary, the
        diagnostics (the method as run; for NUTS the verdict of :func:`bayesmix.diagnose`), the
        residual image and the flagged frames. Where they apply: maps (a spectrum image), the
        sequence over time (a temporal fit: the only plot in frame order), the truth (``truth``
        given), the noise model (not the default one, a variance map, or ``compare``), trace
        and rank plots and the energy plot (NUTS). With K >= 3 references: each reference's
        sorted weights and their distribution, and a ternary plot for K = 3. A learned prior
        (``prior="learn"``) is drawn as such, its hyperparameters with their sds in the
        caption; point masses on the pure phases are drawn as spikes of their probability.

    Raises
    ------
    InputError
        ``path`` does not end in ``.html`` or ``.htm`` (checked first, before any work),
        ``result`` is not a fit (or a table not written from :func:`bayesmix.fit_map`),
        ``prob`` is not in (0, 1), or ``truth`` or ``more_refs`` do not match the result.
    """
    path = check_report_path(path)
    if not 0 < prob < 1:
        raise InputError(f"prob must be in (0, 1), got {prob}")
    attrs = None
    if _is_table(result):
        from bayesmix._writers import map_result_from_table

        # The rebuilt MapResult keeps what its numbers need; the file's metadata keeps the
        # rest (the learned prior's hyperparameters, the truth of a simulation).
        attrs = dict(result.attrs)
        if truth is None and "x_true" in result.columns:
            truth = result["x_true"].to_numpy()
        result = map_result_from_table(result)
    v = _View(result, prob, attrs)
    truth = _check_truth(truth, v)
    more_refs = [] if more_refs is None else list(more_refs)
    if v.names is None and more_refs:
        raise InputError(
            f"more_refs holds {len(more_refs)} reference(s) but the result has two references"
        )
    noise = _noise_html(result, variance, compare)
    if v.names is not None:
        refs = [] if ref_a is None or ref_b is None else [ref_a, ref_b, *more_refs]
        body = _simplex_body(v, result, prob, frames, refs, mask)
    else:
        diag_html, diag = _diagnostics_html(v, result)
        nuts = v.idata is not None
        body = {
            "Maps": _maps_html(v),
            "Weights per frame": _weights_html(v, prob),
            "Sequence": _sequence_html(v, result, prob),
            "Truth vs estimate": "" if truth is None else _truth_html(v, truth, prob),
            "Summary": _summary_html(v, result),
            "Diagnostics": diag_html,
            "Trace and rank plots": _trace_html(v, diag) if nuts else "",
            "Energy": _energy_html(v) if nuts else "",
            "Residual image": _residual_html(v, frames, [ref_a, ref_b], mask),
            "Flagged frames": _flagged_html(v),
        }
    body["Noise model"] = noise
    return _write_page(body, v, title, path, overwrite)


def _is_table(result: Any) -> bool:
    """A results table (:func:`bayesmix.read_results`)."""
    import pandas as pd

    return isinstance(result, pd.DataFrame)


def _write_page(body: dict[str, str], v: _View, title: str, path: str | Path,
                overwrite: bool) -> Path:  # fmt: skip
    """The page: the sections of ``body`` with content, in the order of ``ALL_SECTIONS``."""
    from bayesmix._version import __version__

    n_frames = v.center.shape[0]
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>",
        f"<p>bayesmix {__version__} &middot; {html.escape(v.kind)} &middot; {n_frames} frames</p>",
    ]
    for name in ALL_SECTIONS:
        if body.get(name):
            anchor = name.lower().replace(" ", "-")
            parts.append(f"<section id='{anchor}'><h2>{name}</h2>{body[name]}</section>")
    parts.append("</body></html>")
    page = "\n".join(parts)
    return atomic_write(path, lambda tmp: Path(tmp).write_text(page, "utf-8"), overwrite=overwrite)
