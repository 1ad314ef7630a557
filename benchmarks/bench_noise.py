"""Noise-model benchmark: each model's fast-path cost as a ratio to the Gaussian fast path.

Run: ``python benchmarks/bench_noise.py`` (``--quick`` for a smoke run). On N frames of SxS
float32 (default 20,000 of 32x32) simulated with each model's noise, it times in one process,
warm, in alternation with the Gaussian ``fit_map`` (these machines are noisy):

- ``variance=`` a per-pixel map (one weighted pass, float64);
- ``noise='per_frame'`` (the plain pass, then the per-frame scale mixtures and EM);
- ``noise='poisson'`` and ``'poisson_gaussian'`` (re-weighting passes from the fit);
- ``noise='student_t'`` (EM re-weighting passes, degrees of freedom learned);

and prints each one's time, ratio to the Gaussian path and number of passes, and the ratio of
one weighted pass to one float32 matrix-vector product over the same data.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import bayesmix
from bayesmix._io import prepare
from bayesmix._model import check_design, make_model
from bayesmix._weighted import unit_weigher, weighted_stats


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=20_000)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="2,000 frames, one repeat")
    args = parser.parse_args()
    if args.quick:
        args.frames, args.repeat = 2_000, 1
    rng = np.random.default_rng(0)
    sim = bayesmix.simulate(args.frames, shape=(args.size, args.size), noise=0.05, seed=0)
    a, b = sim.ref_a.astype(np.float64), sim.ref_b.astype(np.float64)
    mean = sim.x[:, None, None] * a + (1 - sim.x[:, None, None]) * b
    shape = mean.shape
    lo = float(mean.min())
    counts = rng.poisson(np.maximum(5.0 * (mean - lo + 0.2), 0.0)).astype(np.float32)
    var = (0.05 * rng.uniform(0.3, 3.0, shape[1:])) ** 2
    hot = sim.frames.copy()
    where = rng.uniform(size=shape) < 0.01
    hot[where] += 2.0
    data = {
        "gaussian": (sim.frames, a, b, {}),
        "variance map": ((mean + np.sqrt(var) * rng.normal(size=shape)).astype(np.float32), a, b,
                         {"variance": var}),
        "per_frame": ((mean + np.exp(rng.uniform(-4, -2, (shape[0], 1, 1)))
                       * rng.normal(size=shape)).astype(np.float32), a, b,
                      {"noise": "per_frame"}),
        "poisson": (counts, 5.0 * (a - lo + 0.2), 5.0 * (b - lo + 0.2), {"noise": "poisson"}),
        "poisson_gaussian": (counts, 5.0 * (a - lo + 0.2), 5.0 * (b - lo + 0.2),
                             {"noise": "poisson_gaussian"}),
        "student_t": (hot, a, b, {"noise": "student_t"}),
    }  # fmt: skip
    bayesmix.fit_map(sim.frames, a, b)  # compile
    for f, ra, rb, kw in data.values():
        bayesmix.fit_map(f[:200], ra, rb, **kw)  # compile every path at a small size
    print(f"{args.frames} frames of {args.size}x{args.size}, best of {args.repeat} (warm)")
    print(f"{'model':<18}{'time (s)':>10}{'/ gaussian':>12}{'passes':>8}")
    for name, (f, ra, rb, kw) in data.items():
        ratios, times, res = [], [], None
        for _ in range(args.repeat):
            tg, _ = timed(lambda f=f, ra=ra, rb=rb: bayesmix.fit_map(f, ra, rb))
            tm, res = timed(lambda f=f, ra=ra, rb=rb, kw=kw: bayesmix.fit_map(f, ra, rb, **kw))
            ratios.append(tm / tg)
            times.append(tm)
        passes = res.noise_params.get("noise_passes", 1 if "variance" in kw else 0)
        print(f"{name:<18}{min(times):>10.3f}{min(ratios):>12.1f}{passes:>8}")
    # One weighted pass against the bandwidth floor.
    frames = data["student_t"][0]
    stack = prepare(frames, a, b)
    model = make_model()
    design = check_design(model, stack.refs, stack.frame_shape, None)
    flat = frames.reshape(len(frames), -1)
    d = (a - b).reshape(-1).astype(np.float32)
    ratios = []
    for _ in range(args.repeat):
        tv, _ = timed(lambda: flat @ d)
        tw, _ = timed(lambda: weighted_stats(stack, design, 0, unit_weigher))
        ratios.append(tw / tv)
    print(f"one weighted pass / float32 matvec: {min(ratios):.1f}x")


if __name__ == "__main__":
    main()
