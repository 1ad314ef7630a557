"""NUTS benchmark: bayesmix.sample against the plain all-pixel NumPyro model a user would write.

Run: ``python benchmarks/bench_nuts.py`` (``make bench``), or ``--quick`` for a smoke run.

Prints, in one run:

1. N frames of 64x64 (default 1,000): wall time and minimum bulk ESS per second of
   ``bayesmix.sample`` versus a plain NumPyro model with the Gaussian likelihood over every pixel
   (same priors, same data, same chains and draws). Target: >= 10x the all-pixel min-ESS/s.
   The all-pixel model needs deep trees until its mass matrix adapts (sigma's posterior is ~100x
   narrower than the weights'), at ~10 ms a gradient over 4M pixels: hence the default of
   2 chains x 150 warm-up + 150 draws for both models (4 x 500 did not finish in 36 min).
2. 10,000 frames of 64x64, 4 chains x 500 draws: wall time, max R-hat, min bulk/tail ESS.
   Targets: under 60 s on a 2-core CPU, R-hat <= 1.01, min bulk ESS >= 400.

Chains run in parallel on CPU host devices, set up below before JAX starts (a script may; the
library never does).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np

import bayesmix


def all_pixel_model(frames, a, b):
    """The model a user would write: every pixel is an observation."""
    import numpyro
    import numpyro.distributions as dist

    n = frames.shape[0]
    x = numpyro.sample("x", dist.TruncatedNormal(0.55, 0.15, low=0.0, high=1.0).expand([n]))
    sigma = numpyro.sample("sigma", dist.ImproperUniform(dist.constraints.positive, (), ()))
    numpyro.factor("jeffreys", -jnp.log(sigma))
    mu = b[None, :] + x[:, None] * (a - b)[None, :]
    numpyro.sample("y", dist.Normal(mu, sigma), obs=frames)


def run_all_pixel(sim, chains, warmup, draws, seed):
    from numpyro.infer import MCMC, NUTS

    f = jnp.asarray(sim.frames.reshape(sim.frames.shape[0], -1))
    a = jnp.asarray(sim.ref_a.ravel(), jnp.float32)
    b = jnp.asarray(sim.ref_b.ravel(), jnp.float32)
    method = "parallel" if jax.local_device_count() >= chains else "vectorized"
    mcmc = MCMC(NUTS(all_pixel_model), num_warmup=warmup, num_samples=draws, num_chains=chains,
                chain_method=method, progress_bar=False)  # fmt: skip
    t0 = time.perf_counter()
    mcmc.run(jax.random.PRNGKey(seed), f, a, b)
    samples = mcmc.get_samples(group_by_chain=True)
    jax.block_until_ready(samples)
    seconds = time.perf_counter() - t0
    post = az.from_dict(
        posterior={"x": np.asarray(samples["x"]), "sigma": np.asarray(samples["sigma"])}
    ).posterior
    return seconds, post


def min_ess(post):
    ess = az.ess(post[["x", "sigma"]], method="bulk")
    return float(min(ess["x"].min(), ess["sigma"]))


def comparison(n, chains, warmup, draws):
    sim = bayesmix.simulate(n, shape=(64, 64), noise=0.5, seed=0)
    t0 = time.perf_counter()
    idata = bayesmix.sample(sim.frames, sim.ref_a, sim.ref_b, num_chains=chains,
                            num_warmup=warmup, num_samples=draws, progress=False)  # fmt: skip
    t_ours = time.perf_counter() - t0
    ess_ours = min_ess(idata.posterior)
    t_plain, post_plain = run_all_pixel(sim, chains, warmup, draws, seed=0)
    ess_plain = min_ess(post_plain)
    diff = np.abs(
        idata.posterior["x"].mean(("chain", "draw")) - post_plain["x"].mean(("chain", "draw"))
    )
    rate_ours, rate_plain = ess_ours / t_ours, ess_plain / t_plain
    print(f"\n[1] N={n} frames of 64x64, {chains} chains x {draws} draws ({warmup} warm-up)")
    rows = [("bayesmix.sample", t_ours, ess_ours, rate_ours),
            ("all-pixel NumPyro", t_plain, ess_plain, rate_plain)]  # fmt: skip
    for name, t, e, r in rows:
        print(f"  {name:18s} {t:8.1f} s  min bulk ESS {e:7.0f}  -> {r:8.2f} ESS/s")
    ratio = rate_ours / rate_plain
    print(f"  min-ESS/s ratio {ratio:.1f}x (target >= 10x: {'PASS' if ratio >= 10 else 'MISS'}); "
          f"max |posterior mean difference| {float(diff.max()):.4f}")  # fmt: skip
    return ratio


def large(n, chains, warmup, draws):
    sim = bayesmix.simulate(n, shape=(64, 64), noise=0.5, seed=1)
    t0 = time.perf_counter()
    idata = bayesmix.sample(sim.frames, sim.ref_a, sim.ref_b, num_chains=chains,
                            num_warmup=warmup, num_samples=draws, progress=False)  # fmt: skip
    wall = time.perf_counter() - t0
    diag = bayesmix.diagnose(idata)
    ok = wall < 60 and diag.rhat_max <= 1.01 and diag.ess_bulk_min >= 400
    print(f"\n[2] N={n} frames of 64x64, {chains} chains x {draws} draws ({warmup} warm-up), "
          f"chain method {idata.attrs['chain_method']}")  # fmt: skip
    print(f"  wall time {wall:.1f} s (sampling {idata.attrs['sampling_time']:.1f} s)")
    print(f"  {diag}")
    r = diag.table["rhat"].to_numpy()
    print(f"  R-hat quantiles over {r.size} parameters: 50% {np.quantile(r, 0.5):.4f}, "
          f"99% {np.quantile(r, 0.99):.4f}, max {r.max():.4f}")  # fmt: skip
    print(f"  targets (< 60 s, R-hat <= 1.01, bulk ESS >= 400): {'PASS' if ok else 'MISS'}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=1000, help="frames in the comparison")
    p.add_argument("--large", type=int, default=10_000, help="frames in the large run")
    p.add_argument("--chains", type=int, default=2, help="chains in the comparison")
    p.add_argument("--draws", type=int, default=150, help="warm-up and draws in the comparison")
    p.add_argument("--only", choices=("comparison", "large"), help="run one part only")
    p.add_argument("--quick", action="store_true", help="small smoke run")
    args = p.parse_args()
    print(f"jax {jax.__version__}, {jax.local_device_count()} CPU devices, {os.cpu_count()} cores")
    if args.quick:
        comparison(50, 2, 200, 200)
        large(500, 4, 300, 300)
        return
    if args.only != "large":
        comparison(args.frames, args.chains, args.draws, args.draws)
    if args.only != "comparison":
        large(args.large, 4, 500, 500)


if __name__ == "__main__":
    main()
