"""Every ArviZ call of bayesmix lives here: InferenceData, diagnostics, ArviZ plots.

ArviZ 0.x (InferenceData API); keeping it in one module makes a later move to ArviZ 1.x a
one-file change.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from bayesmix._errors import InputError
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

# The verdict (docs/diagnostics.md). R-hat and ESS are estimates: each is compared with what
# chains of this length give by chance, over all the run's parameters at once, so that a run
# that is fine passes whatever its number of frames.
#: Chance that a run whose chains are fine gets a 'warn' from R-hat or ESS (family-wise).
VERDICT_ALPHA = 0.01
#: Effective draws needed per chain (Vehtari et al. 2021): fewer and R-hat, the Monte Carlo
#: error and tail quantiles are unreliable.
ESS_MIN_PER_CHAIN = 100
#: sd of log(ESS estimate) is about ESS_LOG_SD / sqrt(ESS) (measured on AR(1) chains of 100 to
#: 1000 draws, autocorrelation -0.3 to 0.8: 2.4 to 4.5 for bulk and tail ESS; the largest kept).
ESS_LOG_SD = 4.5
BFMI_MIN = 0.3  # Betancourt 2016
# A failure (``Diagnostics.failed``) is beyond any warning: draws that do not describe the
# posterior at all, which a chance fluctuation of chains that are fine does not produce.
#: R-hat above this (and above the variable's chance limit): the chains have not mixed
#: (the classic threshold; Vehtari et al. 2021 ask 1.01 of a run that passes).
RHAT_FAIL = 1.1
#: More than this fraction of the draws after warm-up divergent: the sampler cannot explore.
DIVERGENT_FAIL = 0.5
#: Fewer effective draws per chain than this (bulk ESS): the chains barely move.
ESS_FAIL_PER_CHAIN = 5


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
        the noise model's, a learned prior's population).
    divergences : int
        Divergent transitions after warm-up.
    bfmi : ndarray, shape (chain,)
        Bayesian fraction of missing information per chain.
    table : pandas.DataFrame
        Per-variable ``rhat``, ``rhat_p`` (the chance of an R-hat this large from chains that
        are fine), ``rhat_limit`` (the largest R-hat chance explains for this variable, given
        its within-chain ESS and the number of variables), ``ess_bulk`` and ``ess_tail``
        (``x[frame]`` rows, ``x[frame, reference]`` for K >= 3 references, and ``sigma``),
        worst R-hat first.
    ess_limit : float
        The lowest ESS estimate that chance explains for a chain meeting
        ``ESS_MIN_PER_CHAIN`` draws per chain, given the number of variables.
    failures : tuple of str
        Severe failures, in words, with what to do (empty for a usable run): an R-hat above
        ``RHAT_FAIL`` (1.1) and above its chance limit, or a variable that never moved in any
        chain; more than ``DIVERGENT_FAIL`` (half) of the draws divergent; a bulk ESS below
        ``ESS_FAIL_PER_CHAIN`` (5) effective draws per chain. A failure is also a 'warn' (the
        verdict keeps its two values); ``bayesmix fit`` exits with status 3 on one.

    Notes
    -----
    The rules, with their references, are in the documentation ("Convergence verdict").
    A 'warn' alone happens on usable runs (a few divergences, an ESS somewhat short); a
    failure means the draws do not describe the posterior.
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
    ess_limit: float = float("nan")
    failures: tuple[str, ...] = ()

    @property
    def failed(self) -> bool:
        """True when the run failed severely (see ``failures``): do not use its draws."""
        return bool(self.failures)

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
        lines = [head, *(f"  - {r}" for r in self.reasons)]
        return "\n".join(lines + [f"FAILED: {f}" for f in self.failures])


def diagnose(idata: az.InferenceData, *, alpha: float = VERDICT_ALPHA) -> Diagnostics:
    r"""R-hat, bulk/tail ESS, divergences and BFMI of a :func:`bayesmix.sample` result.

    Parameters
    ----------
    idata : arviz.InferenceData
        With ``posterior`` (``x``, ``sigma``; a noise model's ``sigma_frame``,
        ``log_sigma_mu``, ``log_sigma_tau``, ``df``, a random walk's step ``q``, a learned
        prior's ``prior_loc``, ``prior_scale`` and ``prior_mean``, and any other scalar of
        the posterior are checked too, when sampled) and ``sample_stats``.
    alpha : float
        The chance that chains which are fine get a 'warn' from R-hat or ESS, over all the
        run's variables together.

    Returns
    -------
    Diagnostics
        ``verdict`` 'pass' or 'warn' with the ``reasons``; ``failed`` with the ``failures``
        when the run is beyond a warning; ``to_dataframe()`` per variable.

    Notes
    -----
    R-hat is an estimate: with chains that are fine it still exceeds 1 by chance, and the
    largest of thousands of R-hats exceeds any fixed threshold such as 1.01. Each variable's
    R-hat (rank-normalised split R-hat, and its folded version; Vehtari et al. 2021) is
    therefore compared with what chains of this length give by chance. For :math:`M` split
    chains of :math:`n` draws whose means scatter as their within-chain effective sample size
    :math:`E` says (the variance ratio of Gelman & Rubin 1992),

    .. math:: F = \left(\hat R^2 - 1 + \tfrac{1}{n}\right) \frac{E}{M}
              \sim \chi^2_{M-1} / (M - 1),

    and a variable is flagged when the chance of its R-hat, doubled for the two versions, is
    below ``alpha / P`` over the :math:`P` variables (Bonferroni). Each ESS estimate is
    compared with the floor of ``ESS_MIN_PER_CHAIN`` per chain, allowing for its own scatter
    (sd of its log about ``ESS_LOG_SD / sqrt(ESS)``) over the 2P estimates. Divergent
    transitions and a BFMI below 0.3 always warn: they are not scatter.

    A run *fails* (``failed``, beyond a warning) when an R-hat exceeds both ``RHAT_FAIL`` and
    its chance limit (or a variable never moved in any chain), when more than
    ``DIVERGENT_FAIL`` of the draws diverged, or when a bulk ESS is below
    ``ESS_FAIL_PER_CHAIN`` per chain: none of these comes from chains that are fine.

    Examples
    --------
    >>> import bayesmix
    >>> sim = bayesmix.simulate(50, shape=(16, 16), noise=0.3, seed=0)
    >>> idata = bayesmix.sample(sim.frames, sim.ref_a, sim.ref_b, num_chains=2,
    ...                         num_warmup=200, num_samples=200, progress=False)
    >>> diag = bayesmix.diagnose(idata)
    >>> diag.verdict, round(diag.ess_limit)
    ('pass', 61)
    """
    import arviz as az
    import pandas as pd
    from scipy.special import ndtri

    from bayesmix import _convergence as conv

    if not hasattr(idata, "posterior") or "x" not in idata.posterior:
        raise InputError("diagnose needs the InferenceData of bayesmix.sample (posterior 'x')")
    if not 0.0 < alpha < 1.0:
        raise InputError(f"alpha must be a probability in (0, 1), got {alpha!r}")
    full = idata.posterior
    # The noise model's parameters, a learned prior's population and any other scalar the
    # run sampled (sigma fixed at 1 for Poisson counts is not a variable).
    named = ("sigma", "log_sigma_mu", "log_sigma_tau", "df", "q", "prior_loc", "prior_scale",
             "prior_mean")  # fmt: skip
    names = [*named, *(v for v in full.data_vars if v not in named)]
    scalars = [v for v in names if v in full and full[v].dims == ("chain", "draw")
               and np.ptp(full[v].values) > 0]  # fmt: skip
    per_frame = ["sigma_frame"] if "sigma_frame" in full else []
    x = full["x"]
    n_chains, n_draws = x.sizes["chain"], x.sizes["draw"]
    frame = x.coords["frame"].values
    if "reference" in x.dims:
        # K >= 3: one row per frame and reference, in the (frame, reference) order of the values.
        x = x.transpose("chain", "draw", "frame", "reference")
        refs = x.coords["reference"].values
        labels = [f"x[{f}, {r}]" for f in frame for r in refs]
    else:
        labels = [f"x[{f}]" for f in frame]
    labels += [f"sigma_frame[{f}]" for f in frame] if per_frame else []
    labels += scalars
    # Every variable as one (chain, draw, P) array: the statistics below are vectorised over P.
    draws = np.concatenate(
        [np.asarray(v.values, np.float64).reshape(n_chains, n_draws, -1)
         for v in (x, *(full[n] for n in per_frame + scalars))], axis=2)  # fmt: skip
    rhat_bulk = conv.rhat(draws, method="z_scale")
    rhat_folded = conv.rhat(draws, method="folded")
    # ArviZ's rank R-hat, max(bulk, folded) as Python's max: bulk unless folded is larger.
    rhat = np.where(rhat_folded > rhat_bulk, rhat_folded, rhat_bulk)
    ess_bulk = conv.ess(draws, method="bulk")
    ess_tail = conv.ess(draws, method="tail")
    n_vars = rhat.size
    rhat_p, rhat_limit = _rhat_chance(draws, rhat_bulk, rhat_folded, alpha)
    table = pd.DataFrame(
        {"rhat": rhat, "rhat_p": rhat_p, "rhat_limit": rhat_limit, "ess_bulk": ess_bulk,
         "ess_tail": ess_tail},
        index=labels,
    ).sort_values("rhat", ascending=False)  # fmt: skip
    divergences = int(idata.sample_stats["diverging"].values.sum())
    bfmi = np.asarray(az.bfmi(idata))
    ess_floor = ESS_MIN_PER_CHAIN * n_chains
    # The lowest estimate that scatter explains for chains meeting the floor (2P estimates).
    z = float(-ndtri(alpha / (2 * n_vars)))
    ess_limit = ess_floor * float(np.exp(-z * ESS_LOG_SD / np.sqrt(ess_floor)))
    reasons = []
    finite = rhat[np.isfinite(rhat)]
    rhat_max = float(finite.max()) if finite.size else float("nan")
    if n_chains < 2:
        reasons.append("one chain: R-hat cannot detect non-convergence; run >= 4 chains")
    else:
        bad = table[~(table["rhat_p"] >= alpha / n_vars)]
        if len(bad):
            p = bad["rhat_p"]
            # Only NaN p-values: chains that never moved (a failure, below); name the first.
            worst = p.idxmin() if p.notna().any() else p.index[0]
            reasons.append(
                f"R-hat {bad.loc[worst, 'rhat']:.3f} ({worst}) is more than chains of "
                f"{n_draws} draws give by chance over {n_vars} variables (limit "
                f"{bad.loc[worst, 'rhat_limit']:.3f}); {len(bad)} variable(s) flagged: the "
                "chains disagree; run longer chains or look for a multimodal posterior"
            )
    ess_b, ess_t = float(np.min(ess_bulk)), float(np.min(ess_tail))
    if n_draws < ESS_MIN_PER_CHAIN:
        reasons.append(
            f"chains of {n_draws} draws cannot hold the {ESS_MIN_PER_CHAIN} effective draws per "
            "chain that R-hat and the intervals need: draw more"
        )
    for kind, value in (("bulk", ess_b), ("tail", ess_t)):
        if not value >= ess_limit:
            n_low = int(np.sum(~(table[f"ess_{kind}"] >= ess_limit)))
            reasons.append(
                f"{kind} ESS {value:.0f} ({table[f'ess_{kind}'].idxmin()}) is below what chance "
                f"explains for {ess_floor} effective draws ({ess_limit:.0f} over {n_vars} "
                f"variables); {n_low} variable(s): draw more"
            )
    if divergences:
        reasons.append(
            f"{divergences} divergent transitions: raise target_accept (e.g. 0.95) and check "
            "frames at a bound"
        )
    if np.any(bfmi < BFMI_MIN):
        reasons.append(f"BFMI {np.min(bfmi):.2f} < {BFMI_MIN}: the energy is poorly explored")
    # A variable identical in every draw of every chain: no step was ever accepted.
    frozen = dict(zip(labels, np.ptp(draws, axis=(0, 1)) == 0, strict=True))
    failures = _failures(table, frozen, n_chains, n_draws, divergences)
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
        ess_limit=ess_limit,
        failures=failures,
    )


def _failures(table: pd.DataFrame, frozen: dict[str, bool], n_chains: int, n_draws: int,
              divergences: int) -> tuple[str, ...]:  # fmt: skip
    """The severe failures of a run (``Diagnostics.failures``), each with what to do."""
    out = []
    longer = "run a longer warm-up (num_warmup, --warmup) and more draws"
    still = [name for name, f in frozen.items() if f]
    if still:
        out.append(f"{len(still)} variable(s) never moved in any chain (e.g. {still[0]}): "
                   f"the sampler rejected every step; {longer}")  # fmt: skip
    if n_chains >= 2:
        # The chance limit is unknown (NaN) for very short chains: then 1.1 alone.
        limit = np.fmax(table["rhat_limit"].to_numpy(), RHAT_FAIL)
        far = table.index[table["rhat"].to_numpy() > limit]
        if len(far):
            worst = table.loc[far, "rhat"].idxmax()
            out.append(
                f"R-hat {table.loc[worst, 'rhat']:.3g} ({worst}) is far from 1 (above "
                f"{RHAT_FAIL} and what chance explains) for {len(far)} variable(s): the chains "
                f"disagree; {longer}, or look for a multimodal posterior"
            )
    total = n_chains * n_draws
    if total and divergences > DIVERGENT_FAIL * total:
        out.append(f"{divergences} of {total} draws ({divergences / total:.0%}) are divergent: "
                   "the sampler cannot explore this posterior; check the model and the frames "
                   "at a bound, or raise target_accept")  # fmt: skip
    ess = table["ess_bulk"]
    floor = ESS_FAIL_PER_CHAIN * n_chains
    if len(ess) and float(ess.min()) < floor:
        out.append(f"bulk ESS {float(ess.min()):.1f} ({ess.idxmin()}) is below {floor} "
                   f"({ESS_FAIL_PER_CHAIN} effective draws per chain): the chains barely move; "
                   f"{longer}")  # fmt: skip
    return tuple(out)


def _rhat_chance(draws: np.ndarray, rhat_bulk: np.ndarray, rhat_folded: np.ndarray,
                 alpha: float) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Per variable, the chance of its R-hat from chains that are fine, and the R-hat limit.

    ``draws`` has shape (chain, draw, P); ``rhat_bulk`` and ``rhat_folded`` (P,) are its
    rank-normalised split R-hats. The split chains' means scatter as their within-chain ESS
    says (the sum over chains of each chain's own ESS: unlike the pooled ESS it does not drop
    when the chains disagree), so ``F = (R^2 - 1 + 1/n) E / M`` is ``chi2(M - 1) / (M - 1)``;
    bulk and folded R-hat each get their own ESS and limit, and the smaller p-value is doubled.
    """
    from scipy.stats import chi2

    from bayesmix import _convergence as conv

    n_chains, n_draws, n_vars = draws.shape
    m, n = 2 * n_chains, n_draws // 2
    if n_chains < 2 or n < 4:
        nan = np.full(n_vars, np.nan)
        return nan, nan
    # Each chain as its own one-chain run: (1, draw, chain * P), one call for all chains.
    per_chain = np.moveaxis(draws, 0, 1)[None]
    f_lim = chi2.isf(alpha / (2 * n_vars), m - 1) / (m - 1)
    p, limit = [], []
    for r, ess_method in ((rhat_bulk, "bulk"), (rhat_folded, "folded")):
        e = np.maximum(conv.ess(per_chain, method=ess_method).sum(axis=0), 1.0)
        f = (r**2 - 1.0 + 1.0 / n) * e / m
        p.append(chi2.sf(f * (m - 1), m - 1))
        limit.append(np.sqrt(np.maximum(1.0 - 1.0 / n + f_lim * m / e, 0.0)))
    return np.minimum(1.0, 2.0 * np.minimum(*p)), np.maximum(*limit)


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
        raise InputError("expected the InferenceData of bayesmix.sample (posterior 'x', 'sigma')")
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

    Raises :class:`bayesmix.InputError` when the file is not one.
    """
    import arviz as az

    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such file: {path}")
    try:
        idata = az.from_netcdf(path, engine="h5netcdf")
    except Exception as exc:  # h5py/netCDF raise many types for a foreign or corrupt file
        raise InputError(f"cannot read {path} as netCDF InferenceData: {exc}") from None
    if not is_inference_data(idata):
        raise InputError(f"{path} holds no bayesmix posterior (groups {list(idata.groups())})")
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
        raise InputError("this InferenceData has no log_likelihood group; rerun bayesmix.sample")
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
