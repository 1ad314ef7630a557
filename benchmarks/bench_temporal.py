"""Temporal benchmark: the random walk's cost per frame against the independent fast path.

Run: ``python benchmarks/bench_temporal.py`` (``--quick`` for a smoke run). For N frames'
statistics (10^4, 10^5, 10^6 by default; a random walk of step 0.005 seen with a per-frame sd
of 0.05) it times, warm and in alternation in one process (these machines are noisy):

- ``fit_map_stats(st)``: every frame alone (EM for sigma, closed-form posteriors);
- ``fit_map_stats(st, temporal='random_walk')``: sigma and q learned (the filter over a
  refined grid of q, vectorised), the bounded MAP and the EP marginals;
- one filter + smoother pass (the unit the above is made of),

and prints the seconds, microseconds per frame, the ratio to the independent path, and the
growth of each from the smallest N to the largest as a ratio to N's growth (1.0 = linear).
The statistics pass over the pixels is the same for both paths and is left out (see
``bench_map.py`` for it).
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

import bayesmix
from bayesmix import _temporal as T
from bayesmix._precision import x64
from bayesmix.priors import TruncatedNormal


def stats(n: int, seed: int = 0) -> bayesmix.FrameStats:
    x = bayesmix.simulate_walk(n, 0.005, start=0.5, bounds=(0.05, 0.95), seed=seed)
    rng = np.random.default_rng(seed + 1)
    dd = np.full(n, 400.0)  # per-frame sd 0.05 at sigma 1
    xhat = x + rng.standard_normal(n) / np.sqrt(dd)
    pixels = 256
    rss = rng.chisquare(pixels - 1, n)
    return bayesmix.FrameStats(xhat, rss, dd, np.full(n, pixels))


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="10^3 and 10^4 frames, one repeat")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.repeat = [1_000, 10_000], 1
    rows = []
    for n in args.sizes:
        st = stats(n)
        prior = TruncatedNormal(0.55, 0.15, 0.0, 1.0)

        def alone(st=st):
            return bayesmix.fit_map_stats(st)

        def walk(st=st):
            return bayesmix.fit_map_stats(st, temporal="random_walk")

        od = T._order(n, None, None)
        w = T._walk(st, od)

        def one_pass(w=w, prior=prior):
            with x64():
                T._smooth(w, w.dd, w.xhat, 0.005**2, T._start(prior))

        res = walk()  # warm: compile
        alone()
        one_pass()
        t_alone, t_walk, t_pass = [], [], []
        for _ in range(args.repeat):  # alternate, so both see the same machine
            t_alone.append(best(alone, 1))
            t_walk.append(best(walk, 1))
            t_pass.append(best(one_pass, 1))
        rows.append((n, min(t_alone), min(t_walk), min(t_pass), res))
    print(f"{'frames':>9} {'alone s':>9} {'walk s':>9} {'pass s':>8} {'walk us/fr':>11} "
          f"{'walk/alone':>10} {'pass/alone':>10} {'q':>8} {'EP it':>5} {'MAP it':>6}")  # fmt: skip
    for n, a, wk, p, res in rows:
        t = res.temporal
        print(f"{n:>9} {a:>9.3f} {wk:>9.3f} {p:>8.3f} {1e6 * wk / n:>11.2f} {wk / a:>10.1f} "
              f"{p / a:>10.2f} {t.q:>8.4f} {t.ep_iter:>5} {t.map_iter:>6}")  # fmt: skip
    (n0, a0, w0, p0, _), (n1, a1, w1, p1, _) = rows[0], rows[-1]
    growth = n1 / n0
    print(f"growth {n0:,} -> {n1:,} frames (x{growth:g}), as a ratio to linear: "
          f"alone {a1 / a0 / growth:.2f}, walk {w1 / w0 / growth:.2f}, "
          f"one pass {p1 / p0 / growth:.2f}")
    print(f"(log10 N range {math.log10(n0):.0f}..{math.log10(n1):.0f}; 1.00 = linear)")


if __name__ == "__main__":
    main()
