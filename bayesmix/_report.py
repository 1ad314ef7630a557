"""A self-contained HTML report of a fit (MapResult or NUTS InferenceData).

Plots are drawn on matplotlib ``Figure`` objects with the Agg canvas (no pyplot state, no
backend switch in the user's process) and embedded as base64 PNGs, so the report is one file.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import numpy as np

from bayesmix._io import atomic_write, prepare
from bayesmix._model import make_model
from bayesmix._results import MapResult
from bayesmix._schema import label, model_attrs
from bayesmix.noise import Gaussian, PerFrame, PoissonGaussian, StudentT, noise_spec
from bayesmix.priors import parse_prior

__all__ = ["report"]

SECTIONS = (
    "Weights per frame",
    "Summary",
    "Diagnostics",
    "Trace and rank plots",
    "Energy",
    "Residual image",
    "Flagged frames",
)

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; }
table { border-collapse: collapse; font-size: .85em; } td, th { padding: 2px 8px; }
tr:nth-child(even) { background: #f4f4f4; } img { max-width: 100%; }
.pass { color: #176117; font-weight: bold; } .warn { color: #a05a00; font-weight: bold; }
"""


def _png(fig: Any) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="plot" src="data:image/png;base64,{data}">'


def _figure(w: float = 10, h: float = 3.6) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h))


class _View:
    """What the report needs, from either kind of result: the per-frame table of the one schema
    (:func:`bayesmix._writers.results_table`), so MAP and NUTS reports read the same columns."""

    def __init__(self, result: Any, prob: float) -> None:
        from bayesmix._arviz import is_inference_data
        from bayesmix._writers import results_table

        if not (isinstance(result, MapResult) or is_inference_data(result)):
            raise ValueError(
                "report needs a MapResult (bayesmix.fit_map) or the InferenceData of "
                f"bayesmix.sample, got {type(result).__name__}"
            )
        from bayesmix._writers import table_ref_names

        tail = 0.5 * (1 - prob)
        df = results_table(result, prob=prob)
        self.table = df
        #: K >= 3 references: their names (the per-reference columns), else None.
        self.names = table_ref_names(df)
        if isinstance(result, MapResult):
            self.kind = "MAP (fast path)"
            self.sigma = result.sigma
            self.bounds = result.prior.bounds
            self.prior = repr(result.prior)
            self.idata = None
            self.map_shape = result.map_shape
            self.model: Any = result.model
            self.model_name = result.model.name
        else:
            self.kind = "NUTS (full posterior)"
            self.sigma = float(df.attrs["sigma"])
            spec = str(result.attrs.get("prior", ""))
            self.prior = repr(parse_prior(spec)) if spec else ""
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
        self.frame = df.index.to_numpy()
        if self.names is not None:
            self._simplex_columns(df, tail)
            return
        self.center = df["mean"].to_numpy()
        self.lo = df[label(tail)].to_numpy()
        self.hi = df[label(1 - tail)].to_numpy()
        self.x_map = df["x_map"].to_numpy()
        self.at_bound = df["at_bound"].to_numpy(bool)
        self.r2 = df["r2"].to_numpy()
        self.misfit_p = df["misfit_p"].to_numpy()
        self.gain = df["gain"].to_numpy() if "gain" in df else None
        bg_cols = [c for c in df.columns if c.startswith("background_")]
        self.background = df[bg_cols].to_numpy() if bg_cols else None

    def _simplex_columns(self, df: Any, tail: float) -> None:
        """K >= 3: the per-reference columns as (N, K) arrays."""

        def per_ref(var: str) -> np.ndarray:
            return np.stack([df[f"{var}_{r}"].to_numpy(np.float64) for r in self.names], 1)

        self.center = per_ref("mean")
        self.sd = per_ref("sd")
        self.lo = per_ref(label(tail))
        self.hi = per_ref(label(1 - tail))
        self.x_map = per_ref("x_map")
        self.mc_se = per_ref("mc_se") if all(f"mc_se_{r}" in df for r in self.names) else None
        self.at_bound = df["at_bound"].to_numpy(bool)
        self.r2 = df["r2"].to_numpy()
        self.misfit_p = df["misfit_p"].to_numpy()
        self.gain = None
        bg_cols = [c for c in df.columns if c.startswith("background_")]
        self.background = df[bg_cols].to_numpy() if bg_cols else None


def _weights_plot(v: _View, prob: float) -> str:
    fig = _figure()
    ax = fig.add_subplot()
    idx = np.arange(v.center.size)
    ax.fill_between(
        idx, v.lo, v.hi, color="tab:blue", alpha=0.3, lw=0, label=f"{prob:.0%} interval"
    )
    ax.plot(idx, v.center, color="tab:blue", lw=0.8, label="posterior mean")
    ax.set_xlabel("frame (input order)")
    ax.set_ylabel("x (weight of reference A)")
    ax.set_ylim(v.bounds[0] - 0.02, v.bounds[1] + 0.02)
    ax.legend(loc="upper right")
    ax.set_title(f"Mixing weight per frame, {v.kind}")
    return _png(fig)


def _maps_html(v: _View) -> str:
    """Maps of a spectrum image's results: the weight, its sd, the gain and R^2."""
    shape = v.map_shape
    if shape is None or len(shape) != 2:
        return ""
    sd = v.table["sd"].to_numpy()
    panels = [("posterior mean of x", v.center, "viridis", v.bounds),
              ("posterior sd of x", sd, "magma", (0.0, None))]  # fmt: skip
    if v.gain is not None:
        panels.append(("gain (amount)", v.gain, "cividis", (None, None)))
    panels.append(("R^2 of the full model", v.r2, "gray", (0.0, 1.0)))
    fig = _figure(4.2 * len(panels), 4.0)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (name, values, cmap, (lo, hi)) in zip(axes, panels, strict=True):
        im = ax.imshow(values.reshape(shape), cmap=cmap, vmin=lo, vmax=hi)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        ax.set_title(name)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return _png(fig) + (
        "<p>Where the gain is near 0 the pixel holds no mixture: its x returns to the prior "
        "(large sd), the honest answer.</p>"
    )


def _summary_html(v: _View, result: Any) -> str:
    import pandas as pd

    rows = {
        "frames": v.center.size,
        "method": v.kind,
        "model": v.model_name,
        "prior": v.prior,
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
    return _png(fig) + (
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
                        label=f"{prob:.0%} interval (random walk)")  # fmt: skip
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
    return _png(fig)


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
    return _png(fig)


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
            f"walk with its {prob:.0%} interval (blue), and {html.escape(w.alone_what)} (grey).")
    if left:
        text += f" The first {_MAX_PANELS} sequences are drawn; {left} more are not shown."
    if np.bincount(w.codes).max() > _MAX_BARS:
        text += (f" Long sequences are thinned: at most {_MAX_BARS} evenly spaced frames get an "
                 f"error bar and {_MAX_LINE} a point of the band.")
    out.append(f"<p>{text}</p>")
    out.append(_q_plot(w))
    return "".join(out)


def _diagnostics_html(v: _View, result: Any) -> tuple[str, Any]:
    if v.idata is None:
        ok = bool(result.converged)
        verdict = "pass" if ok else "warn"
        text = (
            f"MAP by coordinate ascent: {'converged' if ok else 'did not converge'} in "
            f"{result.n_iter} iterations. Intervals are exact given sigma; no MCMC diagnostics "
            "apply (run bayesmix.sample for the joint posterior)."
        )
        return f'<p class="{verdict}">{verdict.upper()}</p><p>{html.escape(text)}</p>', None
    from bayesmix._arviz import diagnose

    diag = diagnose(v.idata)
    lines = "".join(f"<li>{html.escape(r)}</li>" for r in diag.reasons)
    body = (
        f'<p class="{diag.verdict}">{diag.verdict.upper()}</p>'
        f"<p>{html.escape(str(diag).splitlines()[0])}</p>"
        + (f"<ul>{lines}</ul>" if lines else "")
        + diag.to_dataframe().head(10).to_html(border=0, float_format=lambda f: f"{f:.4g}")
    )
    return body, diag


def _trace_html(v: _View, diag: Any) -> str:
    if v.idata is None:
        return "<p>Not applicable to a MAP result.</p>"
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
    return _png(fig)


def _energy_html(v: _View) -> str:
    if v.idata is None:
        return "<p>Not applicable to a MAP result.</p>"
    from bayesmix._arviz import plot_energy

    fig = _figure(6, 3.6)
    ax = fig.add_subplot()
    plot_energy(v.idata, ax)
    ax.set_title("Energy: marginal vs transition (similar widths = good exploration)")
    if ax.get_legend() is not None:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    return _png(fig)


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
        raise ValueError(f"frames has {n} frames but the result has {v.center.shape[0]}")
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
    return _png(fig) + (
        f"<p>Pure noise would leave residuals of about sigma/sqrt(N) = {noise:.3g}; "
        f"the largest here is {np.nanmax(np.abs(resid)):.3g}.</p>"
    )


def _flagged_html(v: _View) -> str:
    import pandas as pd

    bad = v.misfit_p < 1e-3
    flagged = np.flatnonzero(v.at_bound | bad)
    text = (
        f"<p>{int(v.at_bound.sum())} frame(s) with the posterior piled up at a bound; "
        f"{int(bad.sum())} frame(s) badly fit (residual larger than the noise explains: "
        "chi-square p &lt; 0.001, i.e. a low R^2 for their contrast).</p>"
    )
    if flagged.size == 0:
        return text
    show = flagged[:50]
    df = pd.DataFrame(
        {
            "x": v.center[show],
            "lo": v.lo[show],
            "hi": v.hi[show],
            "R^2": v.r2[show],
            "misfit p": v.misfit_p[show],
            "at bound": v.at_bound[show],
        },
        index=pd.Index(v.frame[show], name="frame"),
    )
    more = f"<p>... and {flagged.size - 50} more.</p>" if flagged.size > 50 else ""
    return text + df.to_html(border=0, float_format=lambda f: f"{f:.4g}") + more


def _simplex_weights_html(v: _View, prob: float) -> str:
    """K >= 3: the weights of every reference stacked (frames sorted by their dominant
    reference), each reference's weight with its interval band, and for K = 3 a ternary plot."""
    names, mean = v.names, v.center
    n, k = mean.shape
    colors = [f"C{i % 10}" for i in range(k)]
    dominant = np.argmax(mean, axis=1)
    order = np.lexsort((-mean[np.arange(n), dominant], dominant))
    fig = _figure(10, 3.6)
    ax = fig.add_subplot()
    ax.stackplot(np.arange(n), np.clip(mean[order], 0.0, None).T, labels=names, colors=colors,
                 lw=0)  # fmt: skip
    ax.set_xlim(0, max(n - 1, 1))
    ax.set_ylim(0, 1)
    ax.set_xlabel("frame (sorted by dominant reference, then its weight)")
    ax.set_ylabel("posterior mean weight")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.set_title(f"Weights of the {k} references per frame, {v.kind}")
    out = _png(fig)

    fig = _figure(10, 1.6 * k + 0.6)
    axes = fig.subplots(k, 1, sharex=True, squeeze=False)[:, 0]
    idx = np.arange(n)
    for i, (ax, name) in enumerate(zip(axes, names, strict=True)):
        ax.fill_between(idx, v.lo[:, i], v.hi[:, i], color=colors[i], alpha=0.3, lw=0)
        ax.plot(idx, mean[:, i], color=colors[i], lw=0.8)
        ax.set_ylim(-0.02, 1.02)
        ax.set_ylabel(name)
    axes[-1].set_xlabel("frame (input order)")
    axes[0].set_title(f"Weight of each reference: posterior mean and {prob:.0%} interval")
    fig.tight_layout()
    out += _png(fig)

    if k == 3:
        h = np.sqrt(3.0) / 2.0
        px, py = mean[:, 1] + 0.5 * mean[:, 2], h * mean[:, 2]
        fig = _figure(5.5, 5.0)
        ax = fig.add_subplot()
        ax.plot([0, 1, 0.5, 0], [0, 0, h, 0], color="k", lw=0.8)
        sc = ax.scatter(px, py, c=np.arange(n), s=8, cmap="viridis")
        fig.colorbar(sc, ax=ax, label="frame (input order)", fraction=0.046, pad=0.04)
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
        out += _png(fig) + (
            "<p>Ternary plot: each frame's posterior mean weights as a point of the triangle "
            f"whose corners are the pure references {', '.join(map(html.escape, names))}.</p>"
        )
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
    out = _png(fig)
    fig = _figure(4.6, 4.0)
    ax = fig.add_subplot()
    im = ax.imshow(v.r2.reshape(shape), cmap="gray", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_title("R^2 of the full model")
    ax.set_xticks([])
    ax.set_yticks([])
    return out + _png(fig)


def _simplex_summary_html(v: _View) -> str:
    import pandas as pd

    rows = {
        "frames": v.center.shape[0],
        "method": v.kind,
        "model": v.model_name,
        "references": ", ".join(v.names),
        "prior": v.prior,
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
        f"Noise scale {'converged' if ok else 'did not converge'} in {result.n_iter} "
        "iteration(s). The MAP of each frame is exact (a quadratic programme on the simplex); "
        "the means, sds and intervals are exact given sigma where the posterior lies well inside "
        f"the simplex, else from {result.n_draws} Gibbs draws (seed {result.seed})."
    )
    if v.mc_se is not None:
        ratio = float(np.max(v.mc_se / np.maximum(v.sd, 1e-300)))
        text += f" Largest Monte Carlo error of a mean, relative to its sd: {ratio:.3f}."
    return f'<p class="{verdict}">{verdict.upper()}</p><p>{html.escape(text)}</p>'


def _simplex_flagged_html(v: _View) -> str:
    import pandas as pd

    bad = v.misfit_p < 1e-3
    flagged = np.flatnonzero(bad)
    text = (
        f"<p>{int(v.at_bound.sum())} frame(s) with a reference's MAP weight at 0 (expected when "
        f"a reference is absent; see the summary); {int(bad.sum())} frame(s) badly fit "
        "(residual larger than the noise explains: chi-square p &lt; 0.001).</p>"
    )
    if flagged.size == 0:
        return text
    show = flagged[:50]
    cols = {f"mean {r}": v.center[show, i] for i, r in enumerate(v.names)}
    cols.update({"R^2": v.r2[show], "misfit p": v.misfit_p[show]})
    df = pd.DataFrame(cols, index=pd.Index(v.frame[show], name="frame"))
    more = f"<p>... and {flagged.size - 50} more.</p>" if flagged.size > 50 else ""
    return text + df.to_html(border=0, float_format=lambda f: f"{f:.4g}") + more


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
    return _png(fig)


def _simplex_body(v: _View, result: Any, prob: float, frames: Any, refs: list[Any],
                  mask: Any) -> dict[str, str]:  # fmt: skip
    """The sections of a K >= 3 report; those that do not apply are left out."""
    body = {
        "Maps": _simplex_maps_html(v),
        "Weights per frame": _simplex_weights_html(v, prob),
        "Summary": _simplex_summary_html(v),
        "Diagnostics": _simplex_diagnostics_html(v, result),
    }
    if v.idata is not None:
        body["Trace and rank plots"] = _simplex_trace_html(v)
        body["Energy"] = _energy_html(v)
    body["Residual image"] = _residual_html(v, frames, refs, mask)
    body["Flagged frames"] = _simplex_flagged_html(v)
    return {name: text for name, text in body.items() if text}


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
) -> Path:
    """Write a self-contained HTML report of a fit.

    Parameters
    ----------
    result : MapResult or arviz.InferenceData
        From :func:`bayesmix.fit_map` or :func:`bayesmix.sample`.
    path : str or Path
        Where to write the HTML (atomically; an existing file is kept unless ``overwrite``).
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
    prob : float
        Probability of the intervals shown.
    overwrite : bool
        Replace an existing file.
    title : str
        Heading of the page.

    Returns
    -------
    Path
        The file written. Sections: weights per frame with bands, summary, diagnostics verdict,
        trace/rank plots, energy plot, residual image, flagged frames; for a MAP fit with a
        noise model other than Gaussian or a variance map, a "Noise model" section (the model,
        what it learned, the per-frame noise scales, the elpd). With K >= 3 references:
        the weights of every reference (stacked, per reference, and a ternary plot for K = 3),
        a per-reference summary and, for a spectrum image, a map per reference.
    """
    if not 0 < prob < 1:
        raise ValueError(f"prob must be in (0, 1), got {prob}")
    v = _View(result, prob)
    more_refs = [] if more_refs is None else list(more_refs)
    if v.names is None and more_refs:
        raise ValueError(
            f"more_refs holds {len(more_refs)} reference(s) but the result has two references"
        )
    noise = _noise_html(result, variance, compare)
    if v.names is not None:
        refs = [] if ref_a is None or ref_b is None else [ref_a, ref_b, *more_refs]
        body = _simplex_body(v, result, prob, frames, refs, mask)
        if noise:
            body = _after(body, "Diagnostics", "Noise model", noise)
        return _write_page(body, list(body), v, title, path, overwrite)
    diag_html, diag = _diagnostics_html(v, result)
    body = {
        "Maps": _maps_html(v),
        "Weights per frame": _weights_plot(v, prob),
        "Sequence": _sequence_html(v, result, prob),
        "Summary": _summary_html(v, result),
        "Diagnostics": diag_html,
        "Trace and rank plots": _trace_html(v, diag),
        "Energy": _energy_html(v),
        "Residual image": _residual_html(v, frames, [ref_a, ref_b], mask),
        "Flagged frames": _flagged_html(v),
    }
    names = (("Maps",) if body["Maps"] else ()) + SECTIONS
    if body["Sequence"]:  # a temporal fit: its trajectory right after the weights per frame
        at = names.index("Weights per frame") + 1
        names = (*names[:at], "Sequence", *names[at:])
    if noise:
        body["Noise model"] = noise
        at = names.index("Diagnostics") + 1
        names = (*names[:at], "Noise model", *names[at:])
    return _write_page(body, names, v, title, path, overwrite)


def _after(body: dict[str, str], name: str, new: str, text: str) -> dict[str, str]:
    """``body`` with section ``new`` right after ``name`` (at the end if absent)."""
    out: dict[str, str] = {}
    for key, value in body.items():
        out[key] = value
        if key == name:
            out[new] = text
    out.setdefault(new, text)
    return out


def _write_page(body: dict[str, str], names: Any, v: _View, title: str, path: str | Path,
                overwrite: bool) -> Path:  # fmt: skip
    from bayesmix._version import __version__

    n_frames = v.center.shape[0]
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>",
        f"<p>bayesmix {__version__} &middot; {html.escape(v.kind)} &middot; {n_frames} frames</p>",
    ]
    for name in names:
        anchor = name.lower().replace(" ", "-")
        parts.append(f"<section id='{anchor}'><h2>{name}</h2>{body[name]}</section>")
    parts.append("</body></html>")
    page = "\n".join(parts)
    return atomic_write(path, lambda tmp: Path(tmp).write_text(page, "utf-8"), overwrite=overwrite)
