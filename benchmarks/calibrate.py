"""Simulation-based calibration of every inference path and prior (Talts et al. 2018).

Run: ``python benchmarks/calibrate.py [--out DIR] [--quick] [--jobs J] [--seed S]``
(``make calibrate``). Slow on purpose: not part of the test suite (``--quick`` is a smoke run
that ``tests/test_calibration.py`` runs under ``make slow``).

For a Bayesian method that is correct, data simulated from the prior and the model give
posteriors against which the true parameters are uniformly distributed: the rank of the truth
among posterior draws (or its posterior CDF value, the probability integral transform) is
uniform. Every configuration below draws ``(sigma, x)`` from the priors, simulates frames with
``bayesmix.simulate``, fits them and records where the truth falls in its posterior:

- ``nuts_*``: ``bayesmix.sample`` (NUTS, 1 chain) with each prior on x and a proper
  ``InverseGamma`` prior on sigma^2; the rank of each true x and of the true sigma among
  thinned posterior draws (ranks pooled over the frames of a replicate for x).
- ``fast_*``: ``bayesmix.fit_map``, its exact posterior of each x given the learned sigma
  (``sigma_method`` 'marginal' and 'joint'); the bin of the probability integral transform
  ``u = F(x_true | y, sigma_hat)``, read off the library's own posterior quantiles at the bin
  edges (``x_true`` lies in PIT bin k exactly when it lies between the quantiles k/B and
  (k+1)/B), so no inversion is needed and the binning is exact. The quantiles are cross-checked
  against an independent CDF (scipy's ``truncnorm``; numerical quadrature with ``scipy.integrate``
  for Beta).

Each quantity gets a chi-square test of uniformity over B equiprobable bins. A test fails when
its p-value is below 0.001 / m (Bonferroni: family-wise false-alarm rate 0.001 over the m tests
of the run); a fast-path test also fails when the quantiles disagree with the independent CDF by
more than ``QUANTILE_TOL``. One configuration, ``fast_joint_uniform_4x4``, is expected to FAIL
and serves as a control: the joint mode underestimates sigma^2 by about N/n (documented), which
with 16 pixels per frame makes sigma ~3 % low and the x posteriors too narrow; the suite checks
that its tests see a miscalibration of that size. The exit status is 1 when any configuration's
outcome differs from its expected outcome (a real FAIL, or the control passing), else 0.

Writes into ``--out``: ``summary.csv``, ``summary.md``, one rank histogram ``<config>.png`` per
configuration and the raw ranks in ``ranks.npz``. See ``docs/calibration.md``.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import math
import multiprocessing
import os
import sys
import time
import warnings
import zlib
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bayesmix.priors import Beta, InverseGamma, TruncatedNormal, Uniform, prior_spec

#: Family-wise false-alarm rate of the run; each of the m tests fails below ALPHA / m.
ALPHA = 1e-3
#: Largest tolerated |F_ref(Q(q)) - q| between the library's quantiles and an independent CDF.
QUANTILE_TOL = 1e-4
#: NUTS: kept (thinned) draws per replicate, thinning, warm-up. L + 1 = 100 possible ranks.
DRAWS, THIN, WARMUP = 99, 4, 200
#: NUTS: frames per replicate (4 x 4 pixels each).
NUTS_FRAMES = 3
#: Fast path: PIT bins (the library's quantiles are taken at the B - 1 inner edges).
FAST_BINS = 20
#: Fast path: frames per replicate whose quantiles are checked by quadrature (Beta priors).
BETA_CHECK_FRAMES = 10

#: Noise priors (on sigma^2) the true sigma is drawn from, chosen so that the prior on x and the
#: bounds matter: a frame alone pins x down to sigma / ||A - B|| ~ 0.1-0.3.
#: 4 x 4 sample references: ||A - B|| = 0.81; 32 x 32: 8.7.
SIGMA_NUTS = InverseGamma(4.0, 0.12)  # sigma: median 0.18, 90 % in 0.12-0.30
SIGMA_32 = InverseGamma(3.0, 2.88)  # sigma: median 1.04, 90 % in 0.68-1.88
SIGMA_4 = InverseGamma(3.0, 0.0288)  # sigma: median 0.10, 90 % in 0.07-0.19

X_PRIORS = {
    "tn_default": TruncatedNormal(),
    "tn_0.5_0.2_0.1_0.9": TruncatedNormal(0.5, 0.2, 0.1, 0.9),
    "uniform": Uniform(0.0, 1.0),
    "uniform_0.2_0.8": Uniform(0.2, 0.8),
    "beta_2_3": Beta(2.0, 3.0),
    "beta_1_1": Beta(1.0, 1.0),
}


@dataclass(frozen=True)
class Config:
    """One calibration experiment."""

    name: str
    path: str  # "nuts" or "fast"
    prior: Any  # prior on x: truth drawn from it, and the fit uses it
    sigma_prior: Any  # prior on sigma given to the fit (None: Jeffreys, the default)
    sigma_truth: InverseGamma  # where the true sigma^2 is drawn from
    shape: tuple[int, ...]  # frame shape
    frames: int  # frames per replicate
    replicates: int
    sigma_method: str = "marginal"
    expect: str = "PASS"
    note: str = ""

    @property
    def quantities(self) -> tuple[str, ...]:
        return ("x", "sigma") if self.path == "nuts" else ("x",)

    @property
    def method(self) -> str:
        return "NUTS" if self.path == "nuts" else f"fit_map ({self.sigma_method})"

    @property
    def sigma_prior_spec(self) -> str:
        return "jeffreys" if self.sigma_prior is None else prior_spec(self.sigma_prior)


def configurations(quick: bool = False) -> list[Config]:
    """Every configuration of the run (``quick``: the same ones, fewer replicates)."""
    nuts_reps = 2 if quick else 80
    big = {"shape": (32, 32), "frames": 500 if quick else 2000, "replicates": 2 if quick else 25}
    # Few pixels per frame: as many frames in --quick, which keeps the control's power.
    small = {"shape": (4, 4), "frames": 10000, "replicates": 10}
    cfgs = [
        Config(f"nuts_{key}", "nuts", prior, SIGMA_NUTS, SIGMA_NUTS, (4, 4), NUTS_FRAMES, nuts_reps)
        for key, prior in X_PRIORS.items()
    ]
    for method in ("marginal", "joint"):
        cfgs += [
            Config(f"fast_{method}_{key}", "fast", prior, SIGMA_32, SIGMA_32, **big,
                   sigma_method=method)
            for key, prior in X_PRIORS.items()
        ]  # fmt: skip
    cfgs += [
        Config("fast_default_jeffreys", "fast", TruncatedNormal(), None, SIGMA_32, **big,
               note="library defaults (Jeffreys prior on sigma)"),
        Config("fast_marginal_uniform_4x4", "fast", Uniform(), SIGMA_4, SIGMA_4, **small,
               note="16 pixels per frame"),
        Config("fast_joint_uniform_4x4", "fast", Uniform(), SIGMA_4, SIGMA_4, **small,
               sigma_method="joint", expect="FAIL",
               note="control: the joint mode's sigma^2 is low by ~N/n = 1/16 (documented)"),
    ]  # fmt: skip
    return cfgs


# ----------------------------------------------------------------------------------------------
# Workers (run in child processes; everything JAX happens here)


def _init_worker() -> None:
    # The priors are meant to matter in these simulations: the library's advice that the
    # references barely pin x down is expected and silenced; every other warning is counted.
    warnings.filterwarnings("ignore", message="the references differ little")


def _rng(seed: int, cfg: Config, rep: int) -> np.random.Generator:
    """One independent stream per (run seed, configuration, replicate): results do not depend on
    how the replicates are split between processes."""
    return np.random.default_rng([seed, zlib.crc32(cfg.name.encode()), rep])


def _draw_truth(rng: np.random.Generator, cfg: Config) -> tuple[float, np.ndarray]:
    ig = cfg.sigma_truth
    sigma = math.sqrt(ig.scale / rng.gamma(ig.concentration))  # sigma^2 ~ InverseGamma
    return sigma, np.asarray(cfg.prior.sample(rng, cfg.frames), np.float64)


def _rank(draws: np.ndarray, truth: Any, rng: np.random.Generator) -> np.ndarray:
    """Rank of the truth among draws (axis 0); ties (float32 draws) broken at random."""
    below = np.sum(draws < truth, axis=0)
    ties = np.sum(draws == truth, axis=0)
    return below + rng.integers(0, ties + 1)


def _nuts_block(cfg: Config, reps: range, seed: int) -> dict[str, Any]:
    import arviz as az

    import bayesmix

    a, b = bayesmix.sample_references(cfg.shape)
    out: dict[str, Any] = {"x": [], "sigma": [], "ess": [], "divergences": 0}
    for rep in reps:
        rng = _rng(seed, cfg, rep)
        sigma, x = _draw_truth(rng, cfg)
        sim = bayesmix.simulate(
            cfg.frames, ref_a=a, ref_b=b, noise=sigma, x=x, seed=int(rng.integers(2**31))
        )
        idata = bayesmix.sample(
            sim.frames,
            a,
            b,
            prior=cfg.prior,
            sigma_prior=cfg.sigma_prior,
            num_chains=1,
            num_warmup=WARMUP,
            num_samples=DRAWS * THIN,
            seed=int(rng.integers(2**31)),
            progress=False,
            log_likelihood=False,
        )
        xs = np.asarray(idata.posterior["x"].values[0, THIN - 1 :: THIN], np.float64)
        ss = np.asarray(idata.posterior["sigma"].values[0, THIN - 1 :: THIN], np.float64)
        out["x"].append(_rank(xs, x, rng))
        out["sigma"].append(int(_rank(ss, sigma, rng)))
        ess = [az.ess(xs[None, :, j]) for j in range(cfg.frames)] + [az.ess(ss[None])]
        out["ess"].append(float(np.min(ess)) / DRAWS)
        out["divergences"] += int(idata.sample_stats["diverging"].values.sum())
    return out


def _gaussian_cdf(cfg: Config, res: Any, q: np.ndarray) -> np.ndarray:
    """scipy's truncated-normal CDF of each frame's posterior given sigma, at ``q`` (N, K)."""
    from scipy.stats import truncnorm

    st = res.stats
    lik = np.asarray(st.dd) / res.sigma**2
    if isinstance(cfg.prior, TruncatedNormal):
        mu, prec = cfg.prior.loc, 1.0 / cfg.prior.scale**2
    else:
        mu, prec = 0.0, 0.0
    lam = lik + prec
    m = ((lik * np.asarray(st.xhat) + prec * mu) / lam)[:, None]
    s = 1.0 / np.sqrt(lam)[:, None]
    lo, hi = cfg.prior.bounds
    return truncnorm.cdf(q, (lo - m) / s, (hi - m) / s, loc=m, scale=s)


def _beta_cdf(cfg: Config, res: Any, q: np.ndarray, frames: int) -> np.ndarray:
    """CDF of the Beta-prior posterior given sigma at ``q`` (first ``frames`` rows), by adaptive
    quadrature (scipy.integrate.quad) of the unnormalised density."""
    from scipy.integrate import quad
    from scipy.optimize import minimize_scalar

    a, b = cfg.prior.a, cfg.prior.b
    out = np.empty((frames, q.shape[1]))
    for i in range(frames):
        lik = float(res.stats.dd[i]) / res.sigma**2
        xhat = float(res.stats.xhat[i])

        def logp(t, lik=lik, xhat=xhat):
            t = min(max(t, 1e-300), 1.0 - 1e-16)
            return (a - 1) * math.log(t) + (b - 1) * math.log1p(-t) - 0.5 * lik * (t - xhat) ** 2

        mode = minimize_scalar(lambda t, f=logp: -f(t), bounds=(0.0, 1.0), method="bounded").x
        peak = logp(mode)

        def dens(t, f=logp, peak=peak):
            return math.exp(f(t) - peak)

        edges = np.concatenate([[0.0], np.clip(q[i], 0.0, 1.0), [1.0]])
        parts = [
            quad(dens, lo, hi, points=[mode] if lo < mode < hi else None, epsabs=0, limit=200)[0]
            for lo, hi in itertools.pairwise(edges)
        ]
        out[i] = np.cumsum(parts)[:-1] / np.sum(parts)
    return out


def _fast_block(cfg: Config, reps: range, seed: int) -> dict[str, Any]:
    import bayesmix

    a, b = bayesmix.sample_references(cfg.shape)
    edges = np.arange(1, FAST_BINS) / FAST_BINS
    out: dict[str, Any] = {
        "x": [],
        "sigma_true": [],
        "sigma_hat": [],
        "sigma_sd": [],
        "quantile_err": 0.0,
        "unconverged": 0,
    }
    for rep in reps:
        rng = _rng(seed, cfg, rep)
        sigma, x = _draw_truth(rng, cfg)
        sim = bayesmix.simulate(
            cfg.frames, ref_a=a, ref_b=b, noise=sigma, x=x, seed=int(rng.integers(2**31))
        )
        res = bayesmix.fit_map(
            sim.frames,
            a,
            b,
            prior=cfg.prior,
            sigma_prior=cfg.sigma_prior,
            sigma_method=cfg.sigma_method,
        )
        quant = res.quantiles(edges)  # (N, B - 1), the library's quantiles at the PIT bin edges
        # x_true is in PIT bin k exactly when quant[k - 1] < x_true <= quant[k].
        out["x"].append(np.sum(quant < x[:, None], axis=1))
        if isinstance(cfg.prior, Beta):
            k = min(BETA_CHECK_FRAMES, cfg.frames)
            ref = _beta_cdf(cfg, res, quant[:k], k)
        else:
            ref = _gaussian_cdf(cfg, res, quant)
        err = float(np.max(np.abs(ref - edges[None, :])))
        out["quantile_err"] = max(out["quantile_err"], err)
        out["sigma_true"].append(sigma)
        out["sigma_hat"].append(res.sigma)
        out["sigma_sd"].append(res.sigma_sd)
        out["unconverged"] += int(not res.converged)
    return out


def run_task(cfg: Config, start: int, stop: int, seed: int) -> tuple[str, dict[str, Any]]:
    """Replicates ``start:stop`` of one configuration; returns its raw results."""
    t0, c0 = time.perf_counter(), time.process_time()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _init_worker()
        block = _nuts_block if cfg.path == "nuts" else _fast_block
        out = block(cfg, range(start, stop), seed)
    out["warnings"] = Counter(str(w.message).split("\n")[0][:120] for w in caught)
    out["seconds"] = time.perf_counter() - t0
    out["cpu_seconds"] = time.process_time() - c0  # all threads of the worker
    return cfg.name, out


# ----------------------------------------------------------------------------------------------
# Statistics, figures, tables (main process)


def _merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            if isinstance(value, list):
                merged.setdefault(key, []).extend(value)
            elif isinstance(value, Counter):
                merged.setdefault(key, Counter()).update(value)
            elif key == "quantile_err":
                merged[key] = max(merged.get(key, 0.0), value)
            else:
                merged[key] = merged.get(key, 0) + value
    return merged


def _bins(n: int, values: int) -> int:
    """Bins for n ranks in 0..values-1: equiprobable (B divides ``values``), >= 5 expected."""
    ok = [b for b in (20, 10, 5, 4, 2) if values % b == 0 and n / b >= 5]
    return ok[0] if ok else 2


def chi_square(idx: np.ndarray, bins: int) -> tuple[np.ndarray, float, float]:
    """Counts of bin indices 0..bins-1, chi-square statistic and p-value against uniform."""
    from scipy.stats import chi2

    counts = np.bincount(idx, minlength=bins)
    expected = idx.size / bins
    stat = float(np.sum((counts - expected) ** 2) / expected)
    return counts, stat, float(chi2.sf(stat, bins - 1))


def _plot(path: Path, cfg: Config, panels: list[dict[str, Any]]) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from scipy.stats import binom

    fig = Figure(figsize=(5.2 * len(panels), 3.9), layout="constrained")
    FigureCanvasAgg(fig)
    for k, panel in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), k + 1)
        counts, bins = panel["counts"], len(panel["counts"])
        n = int(np.sum(counts))
        lo, hi = binom.ppf([0.005, 0.995], n, 1.0 / bins)
        color = "tab:blue" if panel["verdict"] == "PASS" else "tab:red"
        ax.stairs(counts, np.arange(bins + 1), fill=True, color=color, alpha=0.8, label="count")
        ax.axhspan(lo, hi, color="0.5", alpha=0.3, zorder=3, label="99 % band if uniform")
        ax.axhline(n / bins, color="k", lw=1, ls="--", zorder=4, label="expected count")
        ylabel, top = "count", max(hi, counts.max())
        if n / bins > 50:  # zoom on the band, or the deviations are invisible
            pad = 0.6 * (hi - lo)
            ax.set_ylim(min(lo, counts.min()) - pad, top + 2.5 * pad)
            ylabel += " (axis not from 0)"
        else:
            ax.set_ylim(0, 1.35 * top)  # room for the legend
        ax.set_ylabel(ylabel)
        ax.set_xlim(0, bins)
        ticks = np.linspace(0, bins, 5)
        if cfg.path == "nuts":
            ax.set_xlabel(f"rank of the true {panel['quantity']} among {DRAWS} posterior draws")
            ax.set_xticks(ticks, [f"{t * (DRAWS + 1) / bins:g}" for t in ticks])
        else:
            ax.set_xlabel("PIT  u = F(x_true | y, sigma_hat)")
            ax.set_xticks(ticks, [f"{t / bins:g}" for t in ticks])
        ax.set_title(
            f"{cfg.name}: {panel['quantity']}\nn={n}, chi2 p={panel['p']:.3g}, {panel['verdict']}",
            fontsize=9,
        )
        ax.legend(fontsize=7, loc="upper center", ncol=3, framealpha=0.9)
    fig.savefig(path, dpi=90)


def analyse(cfgs: list[Config], raw: dict[str, dict[str, Any]], out: Path) -> list[dict[str, Any]]:
    """Tests, figures and one table row per (configuration, quantity)."""
    n_tests = sum(len(c.quantities) for c in cfgs)
    threshold = ALPHA / n_tests
    rows: list[dict[str, Any]] = []
    arrays: dict[str, np.ndarray] = {}
    for cfg in cfgs:
        r = raw[cfg.name]
        panels = []
        for qty in cfg.quantities:
            if cfg.path == "nuts":
                ranks = np.asarray(r[qty]).ravel()
                bins = _bins(ranks.size, DRAWS + 1)
                idx = ranks * bins // (DRAWS + 1)
            else:
                idx = np.concatenate(r["x"])
                bins = FAST_BINS
            arrays[f"{cfg.name}/{qty}"] = idx if cfg.path == "fast" else ranks
            counts, stat, p = chi_square(idx, bins)
            reasons = [f"p < {threshold:.2g}"] if p < threshold else []
            row: dict[str, Any] = {
                "configuration": cfg.name,
                "method": cfg.method,
                "x_prior": prior_spec(cfg.prior),
                "sigma_prior": cfg.sigma_prior_spec,
                "frames": f"{cfg.replicates} x {cfg.frames} x {'x'.join(map(str, cfg.shape))}",
                "quantity": qty,
                "n": int(idx.size),
                "bins": bins,
                "chi2": round(stat, 2),
                "p": float(f"{p:.3g}"),
            }
            if cfg.path == "nuts":
                ranks_x = np.asarray(r["x"])
                dev = np.abs(ranks_x - DRAWS / 2)
                corr = np.corrcoef(dev.T) if len(ranks_x) > 2 else np.full((2, 2), np.nan)
                off = corr[~np.eye(len(corr), dtype=bool)]
                row.update(
                    ess_frac_median=round(float(np.median(r["ess"])), 2),
                    divergences=r["divergences"],
                    rank_dependence=round(float(np.nanmean(off)), 3) if qty == "x" else "",
                )
            else:
                s_true, s_hat = np.asarray(r["sigma_true"]), np.asarray(r["sigma_hat"])
                z = (s_hat - s_true) / np.asarray(r["sigma_sd"])
                row.update(
                    sigma_rel_bias=float(f"{np.mean(s_hat / s_true - 1):.2g}"),
                    sigma_z_mean=round(float(np.mean(z)), 2),
                    quantile_err=float(f"{r['quantile_err']:.2g}"),
                    unconverged=r["unconverged"],
                )
                if r["quantile_err"] > QUANTILE_TOL:
                    reasons.append(f"quantiles off by {r['quantile_err']:.2g}")
            verdict = "FAIL" if reasons else "PASS"
            row.update(
                verdict=verdict,
                expected=cfg.expect,
                as_expected="yes" if verdict == cfg.expect else "NO",
                why="; ".join(reasons),
                warnings="; ".join(f"{k} (x{v})" for k, v in r["warnings"].items()),
                seconds=round(r["seconds"], 1),
                cpu_seconds=round(r["cpu_seconds"], 1),
                note=cfg.note,
            )
            rows.append(row)
            panels.append({"quantity": qty, "counts": counts, "p": p, "verdict": verdict})
        _plot(out / f"{cfg.name}.png", cfg, panels)
    np.savez_compressed(out / "ranks.npz", **arrays)
    return rows


def config_outcomes(cfgs: list[Config], rows: list[dict[str, Any]]) -> dict[str, str]:
    """PASS/FAIL of each configuration: FAIL if any of its tests fails."""
    return {
        c.name: "FAIL"
        if any(r["verdict"] == "FAIL" for r in rows if r["configuration"] == c.name)
        else "PASS"
        for c in cfgs
    }


MD_COLUMNS = (
    "configuration",
    "method",
    "x_prior",
    "sigma_prior",
    "frames",
    "quantity",
    "n",
    "bins",
    "chi2",
    "p",
    "verdict",
    "expected",
    "notes",
)


def _notes(row: dict[str, Any]) -> str:
    if "sigma_rel_bias" in row:
        text = (
            f"sigma_hat/sigma-1 = {row['sigma_rel_bias']:+.2g} "
            f"(mean z {row['sigma_z_mean']:+.2f}); quantile err {row['quantile_err']:.1g}"
        )
    else:
        text = f"ESS/draws {row['ess_frac_median']}, divergences {row['divergences']}"
        if row["rank_dependence"] != "":
            text += f", rank dependence {row['rank_dependence']:+.3f}"
    if row.get("unconverged"):
        text += f"; sigma unconverged in {row['unconverged']} fits"
    if row["warnings"]:
        text += f"; warnings: {row['warnings']}"
    return text + (f"; **{row['why']}**" if row["why"] else "")


def write_tables(out: Path, rows: list[dict[str, Any]], header: list[str]) -> str:
    """``summary.csv`` (every column) and ``summary.md``; returns the Markdown table."""
    with open(out / "summary.csv", "w", newline="") as f:
        keys = list(dict.fromkeys(k for r in rows for k in r))
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| " + " | ".join(MD_COLUMNS) + " |", "|" + " --- |" * len(MD_COLUMNS)]
    for r in rows:
        cells = {**r, "notes": _notes(r), "p": f"{r['p']:.3g}"}
        cells["verdict"] = r["verdict"] if r["as_expected"] == "yes" else f"**{r['verdict']}**"
        lines.append("| " + " | ".join(str(cells[c]) for c in MD_COLUMNS) + " |")
    table = "\n".join(lines)
    figures = "\n".join(
        f"- [{name}]({name}.png)" for name in dict.fromkeys(r["configuration"] for r in rows)
    )
    (out / "summary.md").write_text(
        "# Calibration summary\n\n" + "\n".join(header) + "\n\n" + table + "\n\n" + figures + "\n"
    )
    return table


def _tasks(cfgs: list[Config], quick: bool) -> list[tuple[Config, int, int]]:
    """Work units: NUTS replicates in blocks (the slow part, first), then the fast path."""
    block = 4 if quick else 20
    nuts = [
        (c, s, min(s + block, c.replicates))
        for c in cfgs
        if c.path == "nuts"
        for s in range(0, c.replicates, block)
    ]
    fast = [(c, 0, c.replicates) for c in cfgs if c.path == "fast"]
    return nuts + fast


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="calibration-output", help="output folder")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: few replicates, under a minute"
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="worker processes (default: 2, or 1 on a 1-CPU machine)",
    )
    parser.add_argument("--seed", type=int, default=20180314, help="seed of the whole run")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    cfgs = configurations(args.quick)
    tasks = _tasks(cfgs, args.quick)
    print(
        f"calibration: {len(cfgs)} configurations, {len(tasks)} tasks, {args.jobs} process(es)"
        f"{' (quick)' if args.quick else ''}",
        flush=True,
    )
    parts: dict[str, list[dict[str, Any]]] = {c.name: [] for c in cfgs}

    def done(name: str, part: dict[str, Any], n: int) -> None:
        parts[name].append(part)
        print(
            f"[{time.perf_counter() - t0:6.1f} s] {name}: {n} replicate(s) in "
            f"{part['seconds']:.1f} s",
            flush=True,
        )

    if args.jobs <= 1:
        for cfg, start, stop in tasks:
            done(*run_task(cfg, start, stop, args.seed), stop - start)
    else:
        ctx = multiprocessing.get_context("spawn")  # never fork a process that has JAX running
        with ProcessPoolExecutor(args.jobs, mp_context=ctx, initializer=_init_worker) as pool:
            futures = {pool.submit(run_task, c, s, e, args.seed): e - s for c, s, e in tasks}
            for fut in as_completed(futures):
                done(*fut.result(), futures[fut])
    raw = {name: _merge(p) for name, p in parts.items()}
    rows = analyse(cfgs, raw, out)
    outcomes = config_outcomes(cfgs, rows)
    wrong = [c.name for c in cfgs if outcomes[c.name] != c.expect]
    elapsed = time.perf_counter() - t0
    cpu = sum(r["cpu_seconds"] for r in raw.values())

    import bayesmix

    n_tests = len(rows)
    header = [
        f"- mode: {'quick (smoke run)' if args.quick else 'full'}; seed {args.seed}; "
        f"bayesmix {bayesmix.__version__}; {args.jobs} process(es); wall time {elapsed:.0f} s, "
        f"CPU time of the fits {cpu:.0f} s",
        f"- threshold: a test fails when p < {ALPHA:g} / {n_tests} = {ALPHA / n_tests:.2g} "
        f"(Bonferroni, family-wise rate {ALPHA:g}); fast path also when the quantiles differ "
        f"from an independent CDF by more than {QUANTILE_TOL:g}",
        f"- NUTS: 1 chain, {WARMUP} warm-up, {DRAWS * THIN} draws thinned by {THIN} to {DRAWS}; "
        f"{NUTS_FRAMES} frames per replicate; x ranks pooled over frames",
        f"- outcome: {len(cfgs) - len(wrong)}/{len(cfgs)} configurations as expected"
        + (f"; NOT as expected: {', '.join(wrong)}" if wrong else ""),
    ]
    table = write_tables(out, rows, header)
    print("\n" + "\n".join(header) + "\n\n" + table + "\n")
    for cfg in cfgs:
        mark = "ok" if outcomes[cfg.name] == cfg.expect else "UNEXPECTED"
        print(f"{cfg.name:32s} {outcomes[cfg.name]} (expected {cfg.expect}) {mark}")
    print(
        f"\nwrote {out}/summary.csv, summary.md, ranks.npz and {len(cfgs)} PNGs in {elapsed:.0f} s"
    )
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
