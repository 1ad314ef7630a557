"""Scale benchmark: the streaming statistics pass from a memory-mapped file, against the
in-memory pass and against one float32 matrix-vector product over the same data; then how time
and peak memory grow with N.

Run: ``python benchmarks/bench_scale.py`` (``make bench``), ``--quick`` for a smoke run.

Prints, in one run:

1. Throughput (frames/s, GB/s) of ``fit_map`` on N frames of 32x32 float32 (default 200,000,
   819 MB): in memory; streamed from a memory-mapped ``.npy`` with ``memory_limit=64 MiB``; and
   one numpy ``frames @ d`` (the memory-bandwidth floor), each best of 5, in this process.
   Target: streaming >= 50% of the in-memory throughput.
2. For N = 10^4, 10^5, 10^6 frames of 32x32 (41 MB to 4.1 GB on disk), each in a fresh process:
   the streamed ``fit_map`` time and the growth of the peak resident set during the fit (VmHWM,
   reset just before it). Targets: time linear in N, memory flat in N (beyond the O(N) numbers
   the fit returns: ~150 bytes a frame against the 4,096 bytes of a 32x32 float32 frame).

The files are read through the page cache (just written; 24 GiB of RAM holds them), so this
measures the pass, not the disk; a cold read from disk runs at the disk's speed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

import bayesmix

SHAPE = (32, 32)
LIMIT = 64 << 20


def write_stack(path: Path, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A simulated stack of n frames written chunk by chunk (never all in memory)."""
    a, b = bayesmix.sample_references(SHAPE)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, *SHAPE))
    rng = np.random.default_rng(seed)
    step = 50_000
    for i in range(0, n, step):
        j = min(i + step, n)
        x = rng.uniform(0.3, 0.8, j - i).astype(np.float32)
        noise = rng.standard_normal((j - i, *SHAPE), dtype=np.float32) * np.float32(0.3)
        out[i:j] = x[:, None, None] * a + (1 - x)[:, None, None] * b + noise
    out.flush()
    del out
    return a.astype(np.float32), b.astype(np.float32)


def best(f, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return min(times)


def throughput(n: int, tmp: Path) -> float:
    path = tmp / "through.npy"
    a, b = write_stack(path, n)
    mm = np.load(path, mmap_mode="r")
    mem = np.array(mm)  # the in-memory stack
    d = (a - b).ravel()
    flat = mem.reshape(n, -1)
    bayesmix.fit_map(mem, a, b)  # compile
    bayesmix.fit_map(mm, a, b, memory_limit=LIMIT)
    t_mem = best(lambda: bayesmix.fit_map(mem, a, b))
    t_stream = best(lambda: bayesmix.fit_map(mm, a, b, memory_limit=LIMIT))
    t_mv = best(lambda: flat @ d)
    same = np.array_equal(bayesmix.fit_map(mm, a, b, memory_limit=LIMIT).x,
                          bayesmix.fit_map(mem, a, b).x)  # fmt: skip
    gb = mem.nbytes / 1e9
    print(f"\n[1] N={n} frames of 32x32 float32 ({gb:.2f} GB), fit_map, best of 5")
    for name, t in (("in memory", t_mem), ("streamed (memmap, 64 MiB)", t_stream),
                    ("frames @ d (numpy)", t_mv)):  # fmt: skip
        print(f"  {name:28s} {t * 1e3:8.1f} ms  {n / t / 1e6:6.2f} M frames/s  {gb / t:6.2f} GB/s")
    ratio = t_mem / t_stream
    print(f"  streamed / in-memory throughput: {100 * ratio:.0f}% (target >= 50%: "
          f"{'PASS' if ratio >= 0.5 else 'MISS'}); streamed / matvec time: {t_stream / t_mv:.2f}x; "
          f"same x: {same}")  # fmt: skip
    path.unlink()
    return ratio


_CHILD = textwrap.dedent(
    """
    import json, sys, time
    import numpy as np
    import bayesmix

    path, a_path, b_path, limit = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    frames = np.load(path, mmap_mode="r")
    a, b = np.load(a_path), np.load(b_path)
    n = frames.shape[0]
    # Compile first: the numba kernel, and the JAX core at this N's size bucket.
    st = bayesmix.frame_stats(frames[:100], a, b)
    bayesmix.fit_map_stats(bayesmix.FrameStats(*(np.resize(v, n) for v in st)))

    def status(field):
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) << 10 for l in f if l.startswith(field))

    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = status("VmRSS:")
    t0 = time.perf_counter()
    res = bayesmix.fit_map(frames, a, b, memory_limit=limit)
    seconds = time.perf_counter() - t0
    print(json.dumps({"seconds": seconds, "growth": status("VmHWM:") - before,
                      "sigma": res.sigma}))
    """
)


def scaling(sizes: list[int], tmp: Path) -> None:
    print(f"\n[2] streamed fit_map, memory_limit {LIMIT >> 20} MiB, fresh process per N")
    print(f"  {'N':>9}  {'file':>8}  {'time':>8}  {'us/frame':>8}  {'peak RSS growth':>15}")
    rows = []
    for n in sizes:
        path = tmp / f"scale_{n}.npy"
        a, b = write_stack(path, n, seed=n)
        np.save(tmp / "a.npy", a)
        np.save(tmp / "b.npy", b)
        out = subprocess.run(
            [sys.executable, "-c", _CHILD, str(path), str(tmp / "a.npy"), str(tmp / "b.npy"),
             str(LIMIT)], capture_output=True, text=True, check=True,
        )  # fmt: skip
        got = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append((n, got["seconds"], got["growth"]))
        print(f"  {n:>9}  {path.stat().st_size / 1e9:6.2f} GB  {got['seconds']:7.2f} s  "
              f"{got['seconds'] / n * 1e6:8.3f}  {got['growth'] / 2**20:12.1f} MiB")  # fmt: skip
        path.unlink()
    ns = np.array([r[0] for r in rows], float)
    ts = np.array([r[1] for r in rows])
    ms = np.array([r[2] for r in rows], float)
    # Time: an affine model t = a + b N (a fixed cost of dispatch and compilation checks).
    b, a = np.polyfit(ns, ts, 1, w=1 / ts)
    worst = float(np.max(np.abs((a + b * ns) / ts - 1)))
    print(f"  time = {a * 1e3:.1f} ms + {b * 1e6:.3f} us x N (worst relative misfit {worst:.0%}; "
          f"target linear: {'PASS' if worst < 0.2 else 'MISS'})")  # fmt: skip
    # Memory: the frame data is bounded by the limit; what grows is the O(N) output itself.
    per_frame = (ms[-1] - ms[0]) / (ns[-1] - ns[0])
    frame_bytes = 4 * SHAPE[0] * SHAPE[1]
    flat = ms[-1] - per_frame * ns[-1] <= LIMIT + (48 << 20)
    print(f"  peak growth {ms[0] / 2**20:.0f} -> {ms[-1] / 2**20:.0f} MiB: {per_frame:.0f} bytes "
          f"a frame (statistics and results; the frames themselves are {frame_bytes} bytes) over "
          f"a constant {(ms[-1] - per_frame * ns[-1]) / 2**20:.0f} MiB within the "
          f"{LIMIT >> 20} MiB limit + 48 MiB: {'PASS' if flat else 'MISS'}")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=200_000, help="frames in the throughput part")
    p.add_argument("--quick", action="store_true", help="small smoke run")
    p.add_argument("--dir", help="folder for the temporary stacks (default: the system's)")
    args = p.parse_args()
    print(f"bayesmix {bayesmix.__version__}, {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        tmp = Path(d)
        if args.quick:
            throughput(20_000, tmp)
            scaling([10_000, 30_000, 100_000], tmp)
        else:
            throughput(args.frames, tmp)
            scaling([10_000, 100_000, 1_000_000], tmp)


if __name__ == "__main__":
    main()
