"""Command line: ``bayesmix demo`` (more commands arrive with the file readers).

User errors (bad arguments, bad data, an existing output) print one line on stderr and exit with
status 2, without a traceback. JAX's configuration may be set here, never on ``import bayesmix``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

EXIT_USAGE = 2

DEMO_EPILOG = """examples:
  bayesmix demo                      # 2000 frames of 64x64, results in ./bayesmix-demo/
  bayesmix demo --out run1 --frames 20000 --noise 0.5
"""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    from bayesmix import __version__

    p = argparse.ArgumentParser(
        prog="bayesmix",
        description="Bayesian estimation of mixing coefficients in image sequences.",
    )
    p.add_argument("--version", action="version", version=f"bayesmix {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = sub.add_parser(
        "demo",
        help="fit a simulated stack built from scikit-image's sample images",
        description="Simulate frames x*A + (1-x)*B + noise from two of scikit-image's bundled "
        "sample images, fit them with the fast MAP path, print a table and write the results.",
        epilog=DEMO_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument("--out", default="bayesmix-demo", help="output folder (default: %(default)s)")
    demo.add_argument("--frames", type=_positive_int, default=2000, help="number of frames")
    demo.add_argument("--size", type=_positive_int, default=64, help="frame side in pixels")
    demo.add_argument("--noise", type=float, default=0.3, help="pixel noise sd (images in [0, 1])")
    demo.add_argument("--seed", type=int, default=0, help="random seed (same seed, same numbers)")
    demo.add_argument("--overwrite", action="store_true", help="replace existing output files")
    return p


def _demo(args: argparse.Namespace) -> int:
    import numpy as np

    import bayesmix
    from bayesmix._io import atomic_write

    out = Path(args.out)
    results_path = out / "results.csv"
    if results_path.exists() and not args.overwrite:
        raise FileExistsError(f"{results_path} already exists; pass --overwrite to replace it")
    if not (np.isfinite(args.noise) and args.noise > 0):
        raise ValueError(f"--noise must be a positive number, got {args.noise}")

    t0 = time.perf_counter()
    sim = bayesmix.simulate(
        args.frames, shape=(args.size, args.size), noise=args.noise, seed=args.seed
    )
    t1 = time.perf_counter()
    res = bayesmix.fit_map(sim.frames, sim.ref_a, sim.ref_b)
    lo, hi = res.interval(0.9)
    t2 = time.perf_counter()

    df = res.to_dataframe(0.9)
    df.insert(0, "x_true", sim.x)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(results_path, lambda tmp: df.to_csv(tmp), overwrite=args.overwrite)

    n = res.n_frames
    d = sim.ref_a - sim.ref_b
    crb = sim.sigma / float(np.sqrt(np.sum(d * d)))
    covered = float(np.mean((lo <= sim.x) & (sim.x <= hi)))
    print(f"bayesmix demo: {n} frames of {args.size}x{args.size} pixels, noise sd {args.noise}")
    print(f"simulated in {t1 - t0:.2f} s; fit (statistics + MAP + intervals) in {t2 - t1:.2f} s\n")
    print(f"{'frame':>5}  {'x true':>7}  {'x MAP':>7}  {'mean':>7}  {'90% interval':>17}")
    for i in range(min(n, 10)):
        print(
            f"{i:>5}  {sim.x[i]:7.4f}  {res.x[i]:7.4f}  {res.mean[i]:7.4f}  "
            f"[{lo[i]:.4f}, {hi[i]:.4f}]"
        )
    if n > 10:
        print(f"{'...':>5}")
    rmse = float(np.sqrt(np.mean((res.mean - sim.x) ** 2)))
    print(
        f"\nsigma: learned {res.sigma:.5f} (true {sim.sigma:.5f}); "
        f"posterior sd median {np.median(res.sd):.4f} (Cramer-Rao sigma/||A-B|| = {crb:.4f})"
    )
    print(
        f"posterior-mean RMSE vs truth {rmse:.4f}; "
        f"90% intervals cover {100 * covered:.1f}% of true x"
    )
    print(f"full results ({len(df.columns)} columns per frame): {results_path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bayesmix`` console script."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "demo":
            return _demo(args)
    except (ValueError, OSError) as exc:
        print(f"bayesmix: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
