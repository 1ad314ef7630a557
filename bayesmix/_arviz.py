"""Every ArviZ call of bayesmix lives here: InferenceData, diagnostics, ArviZ plots.

ArviZ 0.x (InferenceData API); keeping it in one module makes a later move to ArviZ 1.x a
one-file change.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from bayesmix._results import clean_attrs
from bayesmix._schema import (
    frame_table,
    model_attrs,
    stats_columns,
    stats_from_columns,
)
from bayesmix._version import __version__
from bayesmix.priors import prior_spec

if TYPE_CHECKING:
    import arviz as az
    import pandas as pd

    from bayesmix._results import MapResult

__all__ = [
    "Diagnostics",
    "diagnose",
    "is_inference_data",
    "nuts_table",
    "read_idata",
    "to_inference_data",
    "write_idata",
]

# Thresholds of the verdict (Vehtari et al. 2021 for R-hat and ESS; Betancourt 2016 for BFMI).
RHAT_MAX = 1.01
ESS_MIN_PER_CHAIN = 100
BFMI_MIN = 0.3


def to_inference_data(
    *,
    x: np.ndarray,
    sigma: np.ndarray,
    extra: dict[str, np.ndarray],
    log_likelihood: np.ndarray | None,
    fit: MapResult,
    attrs: dict[str, Any],
    gain: np.ndarray | None = None,
    background: np.ndarray | None = None,
    q: np.ndarray | None = None,
) -> az.InferenceData:
    """Assemble the InferenceData of a NUTS run (arrays of shape (chain, draw, ...)).

    ``observed_data`` holds the statistics the model ran on (:func:`bayesmix._schema.
    stats_columns`), ``constant_data`` the fast path's MAP it started from and, with a
    background, the posterior mean of the background coefficients. With a temporal model
    (``fit.temporal`` set) ``q`` holds the draws of the walk's step (posterior ``q``) and
    ``constant_data`` each frame's ``time`` and ``sequence`` label.
    """
    import arviz as az

    frame = np.asarray(fit.frame)
    coords: dict[str, Any] = {"frame": frame}
    dims: dict[str, list[str]] = {"x": ["frame"], "y": ["frame"], "x_map": ["frame"]}
    sample_stats = {
        "diverging": extra["diverging"].astype(bool),
        "n_steps": extra["num_steps"],
        "tree_depth": np.log2(np.maximum(extra["num_steps"], 1)).astype(int) + 1,
        "energy": extra["energy"],
        "acceptance_rate": extra["accept_prob"],
        "step_size": extra["adapt_state.step_size"],
        "lp": -extra["potential_energy"],
    }
    observed = stats_columns(fit.stats, fit.n_background)
    dims.update({k: ["frame"] for k in observed})
    posterior = {"x": x, "sigma": sigma}
    if gain is not None:
        posterior["gain"] = gain
        dims["gain"] = ["frame"]
    constant: dict[str, Any] = {"x_map": fit.x, "sigma_map": np.asarray(fit.sigma)}
    if fit.simplex is not None:
        # K >= 3: one weight per reference; the MAP's face flag as the fast path has it.
        coords["reference"] = list(fit.model.ref_names)
        dims["x"] = dims["x_map"] = ["frame", "reference"]
        constant["at_bound"] = np.asarray(fit.at_bound, bool)
        dims["at_bound"] = ["frame"]
    if q is not None:
        posterior["q"] = q
    if fit.temporal is not None:
        constant["time"] = np.asarray(fit.temporal.times, np.float64)
        seq = np.asarray(fit.temporal.sequence)
        # netCDF holds numbers and strings; other labels (objects) as their strings.
        constant["sequence"] = seq if seq.dtype.kind in "iub" else seq.astype(str)
        dims["time"] = dims["sequence"] = ["frame"]
    if background is not None:
        constant["background_mean"] = background
        dims["background_mean"] = ["frame", "background_term"]
        coords["background_term"] = np.arange(background.shape[1])
    all_attrs = {
        "prior": prior_spec(fit.prior),
        "prior_low": fit.prior.bounds[0],
        "prior_high": fit.prior.bounds[1],
        "sigma_prior": prior_spec(fit.sigma_prior),
        **fit.model.describe(),
        "n_background": fit.n_background,
        **({} if fit.map_shape is None else {"map_shape": list(fit.map_shape)}),
        "bayesmix_version": __version__,
        "inference_library": "numpyro",
        **attrs,
    }
    return az.from_dict(
        posterior=posterior,
        sample_stats=sample_stats,
        log_likelihood=None if log_likelihood is None else {"y": log_likelihood},
        observed_data=observed,
        constant_data=constant,
        coords=coords,
        dims=dims,
        attrs=clean_attrs(all_attrs),
    )


@dataclass(frozen=True)
class Diagnostics:
    """Convergence diagnostics of a NUTS run, with a verdict.

    Attributes
    ----------
    verdict : {'pass', 'warn'}
        'pass' when every check holds; otherwise 'warn' with the ``reasons``.
    reasons : tuple of str
        What failed, in words, with what to do.
    rhat_max, ess_bulk_min, ess_tail_min : float
        Worst values over ``sigma``, every ``x`` and the other sampled parameters (``q``,
        the noise model's).
    divergences : int
        Divergent transitions after warm-up.
    bfmi : ndarray, shape (chain,)
        Bayesian fraction of missing information per chain.
    table : pandas.DataFrame
        Per-variable R-hat and ESS (``x[frame]`` rows, ``x[frame, reference]`` for K >= 3
        references, and ``sigma``).
    """

    verdict: str
    reasons: tuple[str, ...]
    rhat_max: float
    ess_bulk_min: float
    ess_tail_min: float
    divergences: int
    bfmi: np.ndarray
    n_chains: int
    n_draws: int
    table: pd.DataFrame = field(repr=False)

    def to_dataframe(self) -> pd.DataFrame:
        """Per-variable R-hat, bulk and tail ESS, worst first."""
        return self.table

    def __str__(self) -> str:
        head = (
            f"{self.verdict.upper()}: R-hat max {self.rhat_max:.4f}, ESS bulk min "
            f"{self.ess_bulk_min:.0f}, ESS tail min {self.ess_tail_min:.0f}, "
            f"{self.divergences} divergences, BFMI min {np.min(self.bfmi):.2f} "
            f"({self.n_chains} chains x {self.n_draws} draws)"
        )
        return "\n".join([head, *(f"  - {r}" for r in self.reasons)])


def diagnose(idata: az.InferenceData) -> Diagnostics:
    """R-hat, bulk/tail ESS, divergences and BFMI of a :func:`bayesmix.sample` result.

    Parameters
    ----------
    idata : arviz.InferenceData
        With ``posterior`` (``x``, ``sigma``; a noise model's ``sigma_frame``,
        ``log_sigma_mu``, ``log_sigma_tau``, ``df`` and a random walk's step ``q`` are checked
        too, when sampled) and ``sample_stats``.

    Returns
    -------
    Diagnostics
        ``verdict`` 'pass' or 'warn' with the ``reasons``; ``to_dataframe()`` per variable.
    """
    import arviz as az
    import pandas as pd

    if not hasattr(idata, "posterior") or "x" not in idata.posterior:
        raise ValueError("diagnose needs the InferenceData of bayesmix.sample (posterior 'x')")
    full = idata.posterior
    # The noise model's parameters too (sigma fixed at 1 for Poisson counts is not a variable).
    scalars = [v for v in ("sigma", "log_sigma_mu", "log_sigma_tau", "df", "q")
               if v in full and np.ptp(full[v].values) > 0]  # fmt: skip
    per_frame = ["sigma_frame"] if "sigma_frame" in full else []
    post = full[["x", *per_frame, *scalars]]
    n_chains, n_draws = post.sizes["chain"], post.sizes["draw"]
    rhat = az.rhat(post)
    ess_bulk = az.ess(post, method="bulk")
    ess_tail = az.ess(post, method="tail")
    frame = post["x"].coords["frame"].values
    if "reference" in post["x"].dims:
        # K >= 3: one row per frame and reference, in the (frame, reference) order of the values.
        rhat, ess_bulk, ess_tail = (
            d.transpose("frame", "reference") for d in (rhat, ess_bulk, ess_tail)
        )
        refs = post["x"].coords["reference"].values
        labels = [f"x[{f}, {r}]" for f in frame for r in refs]
    else:
        labels = [f"x[{f}]" for f in frame]
    names = ["x", *per_frame, *scalars]
    labels += [f"sigma_frame[{f}]" for f in frame] if per_frame else []
    labels += scalars

    def column(d):
        return np.concatenate([np.ravel(d[v].values) for v in names])

    table = pd.DataFrame(
        {"rhat": column(rhat), "ess_bulk": column(ess_bulk), "ess_tail": column(ess_tail)},
        index=labels,
    ).sort_values("rhat", ascending=False)
    divergences = int(idata.sample_stats["diverging"].values.sum())
    bfmi = np.asarray(az.bfmi(idata))
    ess_min = ESS_MIN_PER_CHAIN * n_chains
    reasons = []
    finite = table["rhat"].to_numpy()[np.isfinite(table["rhat"].to_numpy())]
    rhat_max = float(finite.max()) if finite.size else float("nan")
    if n_chains < 2:
        reasons.append("one chain: R-hat cannot detect non-convergence; run >= 4 chains")
    elif not rhat_max <= RHAT_MAX:
        reasons.append(f"R-hat {rhat_max:.3f} > {RHAT_MAX} ({table.index[0]}): run longer chains")
    ess_b, ess_t = float(table["ess_bulk"].min()), float(table["ess_tail"].min())
    if not ess_b >= ess_min:
        reasons.append(
            f"bulk ESS {ess_b:.0f} < {ess_min} ({table['ess_bulk'].idxmin()}): draw more"
        )
    if not ess_t >= ess_min:
        reasons.append(
            f"tail ESS {ess_t:.0f} < {ess_min} ({table['ess_tail'].idxmin()}): draw more"
        )
    if divergences:
        reasons.append(
            f"{divergences} divergent transitions: raise target_accept (e.g. 0.95) and check "
            "frames at a bound"
        )
    if np.any(bfmi < BFMI_MIN):
        reasons.append(f"BFMI {np.min(bfmi):.2f} < {BFMI_MIN}: the energy is poorly explored")
    return Diagnostics(
        verdict="warn" if reasons else "pass",
        reasons=tuple(reasons),
        rhat_max=rhat_max,
        ess_bulk_min=ess_b,
        ess_tail_min=ess_t,
        divergences=divergences,
        bfmi=bfmi,
        n_chains=n_chains,
        n_draws=n_draws,
        table=table,
    )


def summary_table(idata: az.InferenceData, prob: float = 0.9) -> pd.DataFrame:
    """``arviz.summary`` of ``sigma`` and every ``x``, with the ``prob`` HDI interval."""
    import arviz as az

    return az.summary(idata, var_names=["sigma", "x"], hdi_prob=prob, kind="all", round_to="none")


def loo(idata: az.InferenceData) -> Any:
    """PSIS-LOO of the per-frame log-likelihood."""
    import arviz as az

    return az.loo(idata, pointwise=True)


def plot_trace(idata: az.InferenceData, axes: Any, names: list[str], frames: list | None) -> Any:
    """Trace (left column) and rank plots (right) of ``names`` on ``axes`` (shape (k, 2))."""
    import arviz as az

    coords = None if frames is None else {"frame": frames}
    return az.plot_trace(
        idata, var_names=names, coords=coords, kind="rank_bars", compact=False, axes=axes
    )


def plot_energy(idata: az.InferenceData, ax: Any) -> Any:
    """ArviZ's energy plot (marginal vs transition energy) on ``ax``."""
    import arviz as az

    return az.plot_energy(idata, ax=ax)


def nuts_table(idata: az.InferenceData, prob: float = 0.9) -> pd.DataFrame:
    """One row per frame from a NUTS run, in the schema of :func:`bayesmix._schema.frame_table`
    (the same columns as the fast path's), plus R-hat and bulk ESS."""
    import arviz as az

    if not is_inference_data(idata):
        raise ValueError("expected the InferenceData of bayesmix.sample (posterior 'x', 'sigma')")
    info = model_attrs(idata.attrs)
    post = idata.posterior
    if "reference" in post["x"].dims:
        return _simplex_nuts_table(idata, prob, info)
    n = post["x"].sizes["frame"]
    draws = post["x"].values.reshape(-1, n)
    tail = 0.5 * (1.0 - prob)
    lo, hi = np.quantile(draws, [tail, 1.0 - tail], axis=0)
    obs = idata.observed_data
    stats = stats_from_columns(
        {k: obs[k].values for k in obs.data_vars},
        gain=info["gain"], n_background=info["n_background"],
    )  # fmt: skip
    gain = gain_sd = None
    if "gain" in post:
        g = post["gain"].values.reshape(-1, n)
        gain, gain_sd = g.mean(axis=0), g.std(axis=0, ddof=1)
    const = idata.constant_data
    background = const["background_mean"].values if "background_mean" in const else None
    sigma = post["sigma"].values
    df = frame_table(
        frame=post["x"].coords["frame"].values,
        x_map=np.asarray(const["x_map"].values),
        mean=draws.mean(axis=0),
        sd=draws.std(axis=0, ddof=1),
        lo=lo,
        hi=hi,
        prob=prob,
        stats=stats,
        sigma=float(np.median(sigma)),
        bounds=(float(idata.attrs["prior_low"]), float(idata.attrs["prior_high"])),
        n_background=info["n_background"],
        gain=gain,
        gain_sd=gain_sd,
        background=background,
        map_shape=info["map_shape"],
        extra={
            "rhat": az.rhat(post[["x"]])["x"].values,
            "ess_bulk": az.ess(post[["x"]], method="bulk")["x"].values,
        },
    )
    return _with_run_attrs(df, idata, sigma)


def _with_run_attrs(df: pd.DataFrame, idata: az.InferenceData, sigma: np.ndarray
                    ) -> pd.DataFrame:  # fmt: skip
    """The run's scalar attributes on its table, with the method and sigma's posterior."""
    df.attrs.update(
        {k: v for k, v in idata.attrs.items() if isinstance(v, (str, int, float, bool))}
    )
    df.attrs.update(
        {"method": "nuts", "sigma": float(sigma.mean()), "sigma_sd": float(sigma.std(ddof=1))}
    )
    return df


def _simplex_nuts_table(idata: az.InferenceData, prob: float, info: dict[str, Any]
                        ) -> pd.DataFrame:  # fmt: skip
    """:func:`nuts_table` for K >= 3 references: the fast path's per-reference columns
    (:func:`bayesmix._schema.frame_table` with ``names``; ``mc_se_r`` is NUTS' Monte Carlo
    error of the mean), plus ``rhat_r``, ``ess_bulk_r`` and ``ess_tail_r`` per reference."""
    import arviz as az

    post = idata.posterior
    x = post["x"].transpose("chain", "draw", "frame", "reference")
    names = tuple(str(r) for r in x.coords["reference"].values)
    n, k = x.sizes["frame"], x.sizes["reference"]
    draws = x.values.reshape(-1, n, k)
    tail = 0.5 * (1.0 - prob)
    lo, hi = np.quantile(draws, [tail, 1.0 - tail], axis=0)
    obs = idata.observed_data
    stats = stats_from_columns({c: obs[c].values for c in obs.data_vars}, gain=False,
                               n_background=info["n_background"], n_refs=k)  # fmt: skip
    const = idata.constant_data
    x_map = const["x_map"].transpose("frame", "reference").values
    at_bound = (
        const["at_bound"].values.astype(bool) if "at_bound" in const else np.any(x_map <= 0, 1)
    )
    background = const["background_mean"].values if "background_mean" in const else None
    sigma = post["sigma"].values
    xs = post[["x"]]
    diag = {
        "rhat": az.rhat(xs)["x"],
        "ess_bulk": az.ess(xs, method="bulk")["x"],
        "ess_tail": az.ess(xs, method="tail")["x"],
    }
    extra = {
        f"{name}_{r}": v.transpose("frame", "reference").values[:, i]
        for name, v in diag.items()
        for i, r in enumerate(names)
    }
    df = frame_table(
        frame=x.coords["frame"].values, names=names, x_map=x_map, mean=draws.mean(axis=0),
        sd=draws.std(axis=0, ddof=1), lo=lo, hi=hi, prob=prob,
        mc_se=az.mcse(xs)["x"].transpose("frame", "reference").values, at_bound=at_bound,
        stats=stats, sigma=float(np.median(sigma)), n_background=info["n_background"],
        background=background, map_shape=info["map_shape"], extra=extra,
    )  # fmt: skip
    return _with_run_attrs(df, idata, sigma)


def is_inference_data(obj: Any) -> bool:
    """Whether ``obj`` is an InferenceData with the posterior of :func:`bayesmix.sample`."""
    import arviz as az

    return (
        isinstance(obj, az.InferenceData) and "posterior" in obj.groups() and ("x" in obj.posterior)
    )


def write_idata(idata: az.InferenceData, path: str) -> None:
    """Write an InferenceData to netCDF at ``path`` (callers make it atomic)."""
    idata.to_netcdf(path, engine="h5netcdf")


def read_idata(path: str | os.PathLike) -> az.InferenceData:
    """Read the InferenceData of a NUTS run from netCDF (``bayesmix.write_idata``, ``--idata``).

    Raises ``ValueError`` when the file is not one.
    """
    import arviz as az

    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such file: {path}")
    try:
        idata = az.from_netcdf(path, engine="h5netcdf")
    except Exception as exc:  # h5py/netCDF raise many types for a foreign or corrupt file
        raise ValueError(f"cannot read {path} as netCDF InferenceData: {exc}") from None
    if not is_inference_data(idata):
        raise ValueError(f"{path} holds no bayesmix posterior (groups {list(idata.groups())})")
    return idata


#: Pareto k above which PSIS-LOO's estimate of a frame is not trusted (Vehtari et al. 2017).
PARETO_K_MAX = 0.7


def elpd_frames(idata: az.InferenceData) -> tuple[np.ndarray, str]:
    """Per-frame expected log predictive density of a NUTS run, leaving one frame out.

    Where the model has it in closed form (two references without gain, a truncated-normal or
    flat prior, one noise scale) the exact value for every frame: the frame's marginal
    likelihood (its weight integrated over the prior) averaged over the posterior draws of the
    shared noise scale, which frame i moves by O(1/N). PSIS-LOO on the pointwise
    log-likelihood estimates the same number, but a frame's own weight makes its importance
    weights heavy-tailed (Pareto k above :data:`PARETO_K_MAX` for many frames, optimistic below
    it); it is used, with a warning on high k, only where there is no closed form.
    """
    import jax.numpy as jnp

    from bayesmix._posterior import gaussian_log_evidence
    from bayesmix._precision import x64
    from bayesmix._schema import model_attrs
    from bayesmix._stats import FrameStats
    from bayesmix.priors import Beta, parse_prior

    if "log_likelihood" not in idata.groups():
        raise ValueError("this InferenceData has no log_likelihood group; rerun bayesmix.sample")
    res = loo(idata)
    terms = np.asarray(res.loo_i.values, np.float64)
    k = np.asarray(res.pareto_k.values, np.float64)
    bad = ~(k <= PARETO_K_MAX)
    info = model_attrs(idata.attrs)
    obs = idata.observed_data
    prior = parse_prior(str(idata.attrs.get("prior")))
    exact_ok = (not info["gain"] and "xhat" in obs and not isinstance(prior, Beta)
                and "per_frame" not in str(idata.attrs.get("noise", "")))  # fmt: skip
    if not exact_ok:
        if not bad.any():
            return terms, "PSIS-LOO"
        import warnings

        warnings.warn(
            f"{int(bad.sum())} frame(s) have Pareto k > {PARETO_K_MAX}: their PSIS-LOO terms are "
            "unreliable and this model has no exact alternative; compare fast-path fits instead",
            RuntimeWarning,
            stacklevel=3,
        )
        return terms, "PSIS-LOO (some k high)"
    stats = stats_from_columns({c: obs[c].values for c in obs.data_vars}, gain=False,
                               n_background=info["n_background"])  # fmt: skip
    sig = np.asarray(idata.posterior["sigma"].values, np.float64).reshape(-1)
    sig = sig[:: max(1, len(sig) // 400)]
    full = FrameStats(*(np.asarray(a) for a in stats))
    with x64():
        ev = np.stack([np.asarray(gaussian_log_evidence(full, jnp.float64(s) ** 2, prior))
                       for s in sig])  # fmt: skip
    top = ev.max(axis=0)
    exact = top + np.log(np.mean(np.exp(ev - top), axis=0))
    return exact, (f"exact leave-one-frame-out (PSIS-LOO: {int(bad.sum())} frame(s) with "
                   f"k > {PARETO_K_MAX})")  # fmt: skip
