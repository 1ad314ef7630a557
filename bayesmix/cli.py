"""Command line: ``bayesmix fit | demo | simulate | report``.

User errors (bad arguments, unreadable files, an existing output: :class:`bayesmix.InputError`
and the missing/existing/unwritable path errors) print one line on stderr and exit with status 2,
without a traceback; anything else is a bug and prints its traceback (exit status 1). Every
option and output path is checked before any data is read; an output that is one of the inputs
(or inside an input folder) is refused, ``--overwrite`` or not. Outputs are written into hidden
folders beside their targets and moved into place together at the end, never replacing an
existing file without ``--overwrite``: an error or Ctrl-C before then leaves none of them.
Ctrl-C exits with status 130 (a handler of our own records it, so that an interrupt swallowed
by a garbage-collector callback is still honoured before the next output); a NUTS run whose
draws fail their convergence checks writes its outputs and exits with status 3.
Progress bars go to stderr, only when it is a terminal and ``--quiet`` is not given.

JAX's configuration may be set here (the CLI owns its process), never on ``import bayesmix``:
NUTS chains get one CPU host device each, which must be set before JAX starts.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from bayesmix._errors import InputError

EXIT_USAGE = 2
EXIT_INTERNAL = 1
#: The run finished and wrote its outputs, but its draws failed the convergence checks.
EXIT_NOT_CONVERGED = 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a process stopped by Ctrl-C
# A path the user named that is missing, present already, or not readable/writable.
USER_OS_ERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError,
                  PermissionError)  # fmt: skip
METHODS = ("map", "nuts")
DEFAULT_PRIOR = "truncnormal:0.55,0.15,0,1"
DEFAULT_SIMPLEX_PRIOR = "dirichlet:1"

FIT_EPILOG = """examples:
  bayesmix fit stack.tif --ref-a fe3.tif --ref-b fe2.tif --out results.csv
  bayesmix fit 'frames/*.png' --ref-a a.png --ref-b b.png --mask roi.npy --report report.html
  bayesmix fit data.h5:/entry/frames --ref-a data.h5:/entry/ref_a --ref-b data.h5:/entry/ref_b
  bayesmix fit frames.npy --ref-a a.npy --ref-b b.npy --method nuts --chains 4 \\
      --idata posterior.nc --report report.html --prior beta:5.5,4.5
  bayesmix fit stack.npy --ref fe.npy --ref fe2o3.npy --ref fe3o4.npy --prior dirichlet:1
  bayesmix fit stack.npy --ref-a a.npy --ref-b b.npy --prior learn --out results.csv
  bayesmix fit counts.tif --ref-a a.tif --ref-b b.tif --noise poisson_gaussian:gain=2,read_sd=1
  bayesmix fit stack.npy --ref-a a.npy --ref-b b.npy --noise per_frame --variance var.npy
  bayesmix fit run1.npy run2.npy --ref-a a.npy --ref-b b.npy --temporal random_walk \
      --times times.csv --report report.html

references: --ref-a A --ref-b B (two references, x is the weight of A), or --ref FILE once per
        reference in order (K >= 2; weights on the simplex, one column per reference named after
        its file); --ref after --ref-a/--ref-b adds references after A and B

priors: truncnormal:LOC,SCALE[,LOW,HIGH] (default truncnormal:0.55,0.15,0,1), uniform[:LOW,HIGH],
        beta:A,B; K >= 3 references: dirichlet:ALPHA or dirichlet:A1,...,AK (default
        dirichlet:1, flat on the simplex); point masses on the pure phases:
        point_mass:P1,...,PK[/CONTINUOUS]; learned from the frames: learn (truncnormal for two
        references, dirichlet for three) or learn:FAMILY (truncnormal, beta, dirichlet,
        point_mass); noise: jeffreys (default) or invgamma:ALPHA,BETA (on sigma^2)
noise:  --noise gaussian (default), per_frame (a sigma per frame), poisson (counts),
        poisson_gaussian[:gain=G][,read_sd=R] (counts in detector units with read noise; what is
        not given is learned), student_t[:df=NU] (heavy tails: hot pixels, cosmic rays);
        --variance FILE: each pixel's noise variance, shape S (all frames) or (N, *S) (a map
        per frame), sigma then scales it
temporal: --temporal independent (default) or random_walk[:q=Q] (the weight walks along each
        sequence, step sd Q per time unit, learned unless given); --times FILE (.npy, .csv or
        .txt, one time per frame); several FRAMES stacks are fitted together, each its own
        sequence (the table's 'sequence' column is the stack's index, 'source' its file)
formats: .tif/.tiff (one frame per page), a folder or glob of PNG/TIFF, .npy, .npz[:NAME],
         .h5/.hdf5[:/DATASET], .zarr[:ARRAY]; outputs .csv, .parquet or .nc
"""

DEMO_EPILOG = """examples:
  bayesmix demo                      # 2000 frames of 64x64, results in ./bayesmix-demo/
  bayesmix demo --out run1 --frames 20000 --noise 0.5
"""

SIMULATE_EPILOG = """examples:
  bayesmix simulate sim --frames 1000 --shape 32 32 --noise 0.3
  bayesmix fit sim/frames.npy --ref-a sim/ref_a.npy --ref-b sim/ref_b.npy --out sim/results.csv

writes OUT/frames.npy, OUT/ref_a.npy, OUT/ref_b.npy and OUT/x_true.csv (frame, x; the noise sd
and seed in OUT/x_true.csv-metadata.json), from scikit-image's bundled sample images (2-D) or
synthetic spectra (1-D shape)
"""

REPORT_EPILOG = """examples:
  bayesmix report posterior.nc --out report.html     # a NUTS run (written with fit --idata)
  bayesmix report results.csv --out report.html      # a MAP run (written with fit --out)
"""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value < 2**63:  # what numpy's and JAX's generators take
        raise argparse.ArgumentTypeError(f"expected an integer from 0 to 2**63 - 1, got {text!r}")
    return value


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a probability in (0, 1), got {text!r}")
    return value


def _version() -> str:
    # Not `from bayesmix import __version__`: that would start JAX before --device is applied.
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("bayesmix")
    except PackageNotFoundError:
        return "0+unknown"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="bayesmix",
        description="Bayesian estimation of mixing coefficients in image sequences: each frame "
        "is x*A + (1-x)*B + noise; bayesmix estimates every x with honest uncertainty.",
    )
    p.add_argument("--version", action="version", version=f"bayesmix {_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    raw = argparse.RawDescriptionHelpFormatter

    fit = sub.add_parser(
        "fit",
        help="fit a stack of frames against two references",
        description="Estimate the weight x of reference A in every frame: the fast MAP path "
        "with exact per-frame intervals (--method map, default) or the full joint posterior "
        "with NUTS (--method nuts).",
        epilog=FIT_EPILOG,
        formatter_class=raw,
    )
    fit.add_argument("frames", metavar="FRAMES", nargs="+",
                     help="stack file, folder or glob of images; several stacks are fitted "
                     "together (with --temporal, each is its own sequence)")  # fmt: skip
    fit.add_argument("--ref-a", metavar="A", help="reference A (x is its weight)")
    fit.add_argument("--ref-b", metavar="B", help="reference B")
    fit.add_argument("--ref", action="append", dest="refs", default=[], metavar="FILE",
                     help="a reference, repeated once per reference in order (K >= 2; after "
                     "--ref-a/--ref-b when those are given); results are named after the "
                     "files")  # fmt: skip
    fit.add_argument("--mask", metavar="M", help="boolean mask of the pixels to use (True keeps)")
    fit.add_argument("--background", default="none", metavar="KIND",
                     help="background integrated out: none, constant, linear (a constant plus a "
                     "ramp along each frame axis), or a file of basis images of shape (P, *S) "
                     "(default: %(default)s)")  # fmt: skip
    fit.add_argument("--gain", action="store_true",
                     help="a per-frame positive amount/exposure multiplying the mixture, "
                     "integrated out")  # fmt: skip
    fit.add_argument("--spectral-axis", type=int, metavar="AXIS",
                     help="the stack is a spectrum image: each pixel's spectrum along AXIS "
                     "(0 for (E, H, W), -1 for (H, W, E)) is a frame")  # fmt: skip
    fit.add_argument("--method", choices=METHODS, default="map", help="default: %(default)s")
    fit.add_argument("--prior", default=None, metavar="SPEC",
                     help=f"prior on x (default: {DEFAULT_PRIOR}); with K >= 3 references "
                     f"on the weights (default: {DEFAULT_SIMPLEX_PRIOR})")  # fmt: skip
    fit.add_argument("--sigma-prior", default="jeffreys", metavar="SPEC",
                     help="prior on the noise (default: %(default)s)")  # fmt: skip
    fit.add_argument("--noise", default="gaussian", metavar="SPEC",
                     help="pixel noise model: gaussian, per_frame, poisson, "
                     "poisson_gaussian[:gain=G][,read_sd=R] or student_t[:df=NU] (default: "
                     "%(default)s)")  # fmt: skip
    fit.add_argument("--variance", metavar="PATH",
                     help="each pixel's noise variance, read like a reference (shape S, one map "
                     "for every frame) or a stack (shape (N, *S), a map per frame); sigma "
                     "scales it")  # fmt: skip
    fit.add_argument("--temporal", default="independent", metavar="SPEC",
                     help="how the frames' weights are related: independent, or random_walk"
                     "[:q=Q] along each sequence (step sd Q per time unit; learned unless "
                     "given) (default: %(default)s)")  # fmt: skip
    fit.add_argument("--times", metavar="PATH",
                     help="with --temporal random_walk: each frame's time, one number per "
                     "frame in a .npy, .csv or .txt file (default: the frame index)")  # fmt: skip
    fit.add_argument("--chains", type=_positive_int, default=4, help="NUTS chains (default 4)")
    fit.add_argument("--warmup", type=_positive_int, default=500, help="NUTS warm-up draws")
    fit.add_argument("--samples", type=_positive_int, default=500, help="NUTS draws per chain")
    fit.add_argument("--seed", type=_seed, default=0,
                     help="random seed, >= 0 (same seed, same numbers)")  # fmt: skip
    fit.add_argument("--draws", type=_positive_int, default=400, metavar="N",
                     help="K >= 3 references, --method map: Gibbs draws per frame for the "
                     "posterior summaries, at least 100 (default: %(default)s)")  # fmt: skip
    fit.add_argument("--prob", type=_probability, default=0.9, help="interval mass (default 0.9)")
    fit.add_argument(
        "--out",
        default="results.csv",
        metavar="PATH",
        help="per-frame results: .csv, .parquet or .nc (default: %(default)s)",
    )
    fit.add_argument("--idata", metavar="PATH", help="NUTS InferenceData as netCDF (.nc)")
    fit.add_argument("--report", metavar="PATH", help="HTML report")
    from bayesmix._devices import DEVICES

    fit.add_argument("--device", choices=DEVICES, help="JAX device (default: JAX's default)")
    fit.add_argument("--checkpoint", type=_positive_int, default=200_000, metavar="FRAMES",
                     help="save the statistics every FRAMES frames in OUT.parts/, so that an "
                     "interrupted run can --resume (default: %(default)s)")  # fmt: skip
    fit.add_argument("--resume", action="store_true",
                     help="continue an interrupted run from OUT.parts/")  # fmt: skip
    fit.add_argument("--memory-limit", type=_positive_int, metavar="BYTES",
                     help="bytes of frame data in memory at once")  # fmt: skip
    fit.add_argument("--overwrite", action="store_true", help="replace existing output files")
    fit.add_argument("--quiet", action="store_true", help="no progress bars or tables")

    demo = sub.add_parser(
        "demo",
        help="fit a simulated stack built from scikit-image's sample images",
        description="Simulate frames x*A + (1-x)*B + noise from two of scikit-image's bundled "
        "sample images, fit them with the fast MAP path, print a table, and write the results "
        "and an HTML report.",
        epilog=DEMO_EPILOG,
        formatter_class=raw,
    )
    demo.add_argument("--out", default="bayesmix-demo", help="output folder (default: %(default)s)")
    demo.add_argument("--frames", type=_positive_int, default=2000, help="number of frames")
    demo.add_argument("--size", type=_positive_int, default=64, help="frame side in pixels")
    demo.add_argument("--noise", type=float, default=0.3, help="pixel noise sd (images in [0, 1])")
    demo.add_argument("--seed", type=_seed, default=0, help="random seed (same seed, same numbers)")
    demo.add_argument("--overwrite", action="store_true", help="replace existing output files")

    sim = sub.add_parser(
        "simulate",
        help="write a simulated test stack, its references and the true x",
        description="Write a simulated stack y_i = x_i*A + (1-x_i)*B + noise with known x.",
        epilog=SIMULATE_EPILOG,
        formatter_class=raw,
    )
    sim.add_argument("out", metavar="OUT", help="output folder (created if missing)")
    sim.add_argument("--frames", type=_positive_int, required=True, help="number of frames")
    sim.add_argument("--shape", type=_positive_int, nargs="+", default=[64, 64], metavar="N",
                     help="frame shape: H W, or P for spectra (default: 64 64)")  # fmt: skip
    sim.add_argument("--noise", type=float, default=0.3, help="pixel noise sd (default 0.3)")
    sim.add_argument("--seed", type=_seed, default=0, help="random seed")
    sim.add_argument("--overwrite", action="store_true", help="replace existing output files")

    rep = sub.add_parser(
        "report",
        help="write the HTML report of a saved fit",
        description="Write the HTML report of a NUTS InferenceData (.nc) or of a MAP results "
        "file (.csv, .parquet, .nc) written by 'bayesmix fit'.",
        epilog=REPORT_EPILOG,
        formatter_class=raw,
    )
    rep.add_argument("source", metavar="IDATA_OR_RESULTS", help="file written by bayesmix fit")
    rep.add_argument("--out", required=True, metavar="PATH", help="HTML file to write")
    rep.add_argument("--prob", type=_probability, default=0.9, help="interval mass (default 0.9)")
    rep.add_argument("--overwrite", action="store_true", help="replace an existing report")
    return p


Output = tuple[str, str | Path | None]  # (what it is, e.g. '--report'; its path or None)


def _free(outputs: Sequence[Output], overwrite: bool) -> None:
    """Fail before any work if an output exists (and --overwrite is not given) or cannot go:
    two outputs to one file, an existing folder, a missing or unwritable folder."""
    from bayesmix._writers import CSV_METADATA_SUFFIX

    seen: dict[Path, str] = {}
    for label, path in outputs:
        if path is None:
            continue
        path = Path(path)
        key = path.resolve()
        if key in seen:
            raise InputError(f"two outputs go to the same file {path} ({seen[key]} and {label}); "
                             "give each its own path")  # fmt: skip
        seen[key] = label
        if path.is_dir():
            raise InputError(f"{label} {path} is an existing folder; give the path of a file "
                             "(in that folder, or elsewhere)")  # fmt: skip
        if path.exists() and not overwrite:
            of = (f" (the metadata of {path.name[: -len(CSV_METADATA_SUFFIX)]})"
                  if label.startswith("the metadata file of") else "")  # fmt: skip
            raise InputError(f"{path}{of} already exists; pass --overwrite to replace it")
        parent = path.parent if str(path.parent) else Path(".")
        if not parent.is_dir():
            raise InputError(f"output folder {parent} does not exist")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise InputError(f"output folder {parent} is not writable (Permission denied); "
                             f"give {label} a path in a folder you can write to")  # fmt: skip


def _outputs_with_metadata(outputs: Sequence[Output]) -> list[Output]:
    """``outputs`` and, after each CSV, its metadata file (an output too: both or neither)."""
    from bayesmix._writers import csv_metadata_path

    out: list[Output] = []
    for label, path in outputs:
        out.append((label, path))
        if path is not None and Path(path).suffix.lower() == ".csv":
            out.append((f"the metadata file of {label}", csv_metadata_path(path)))
    return out


def _input_paths(source: str) -> tuple[list[Path], str | None]:
    """The file(s) or folder an input names (the file of 'file.h5:/dataset'), and the glob
    pattern when it is one (its matches are the files)."""
    import glob

    from bayesmix._readers import _split_key

    path, _ = _split_key(source, None)
    text = str(path)
    if path.exists() or not any(c in text for c in "*?["):
        return [path], None
    # '[' as a wildcard and as itself: what either reading of the pattern takes is an input.
    found = set(glob.glob(text)) | set(glob.glob(text.replace("[", "[[]")))
    return [Path(p) for p in sorted(found)], text


def _same_file(a: Path, b: Path) -> bool:
    """One file under two names (a symbolic or hard link), when both exist."""
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _check_apart(inputs: Sequence[tuple[str, str]], outputs: Sequence[Output]) -> None:
    """Refuse, ``--overwrite`` or not, an output that would replace or remove an input: the same
    file (after links), a path inside an input folder (a folder of images, a zarr store) or
    matching an input's glob pattern, or an output folder (``OUT.parts``) holding an input."""
    import fnmatch

    files: list[tuple[str, Path]] = []
    patterns: list[tuple[str, str]] = []
    for label, source in inputs:
        paths, pattern = _input_paths(source)
        files += [(label, p) for p in paths]
        if pattern is not None:
            patterns.append((label, pattern))
    for out_label, out in outputs:
        if out is None:
            continue
        out = Path(out)
        real = out.resolve()
        # 'the work folder of --out': the option to change is --out.
        option = out_label.rsplit(" ", 1)[-1]
        fix = f"give {option} another path"
        what = f"{out_label} {out}" if option == out_label else f"{out_label} ({out})"
        for label, path in files:
            where = path.resolve()
            name = f"{label} {path}"
            if real == where or _same_file(out, path):
                raise InputError(
                    f"{what} is also an input ({name}): writing it would destroy that input, "
                    f"with --overwrite or not; {fix}"
                )
            if path.is_dir() and real.is_relative_to(where):
                raise InputError(
                    f"{what} is inside the input folder {path} ({label}): it would change that "
                    f"input; {fix}, outside that folder"
                )
            if where.is_relative_to(real):
                raise InputError(
                    f"{name} is inside {what}, which the run replaces or removes; move that "
                    f"input, or {fix}"
                )
        for label, pattern in patterns:
            full = os.path.abspath(pattern)
            if fnmatch.fnmatchcase(str(real), full) or fnmatch.fnmatchcase(
                    os.path.abspath(out), full):  # fmt: skip
                raise InputError(
                    f"{what} matches the input pattern {pattern} ({label}): the next run would "
                    f"read it as a frame; {fix}"
                )


def _check_exists(label: str, source: str) -> None:
    """An input path (not a glob pattern: its reader says when nothing matches) that is
    missing, before any data is read."""
    paths, pattern = _input_paths(source)
    if pattern is None and not paths[0].exists():
        where = "" if label == "FRAMES" else f"{label}: "
        raise FileNotFoundError(f"{where}no such file or folder: {paths[0]}")


def _check_out_folder(out: Path) -> None:
    """An output folder (made if missing) that is a file, or cannot be made or written."""
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} exists and is not a folder; give a folder (made if missing)")
    there = next(p for p in (out, *out.absolute().parents) if p.exists())
    if not there.is_dir() or not os.access(there, os.W_OK | os.X_OK):
        raise InputError(f"cannot write in {there} (Permission denied); give an output folder "
                         "you can write to")  # fmt: skip


# Ctrl-C. Python raises KeyboardInterrupt wherever the main thread is when SIGINT's handler
# runs; inside a garbage-collector callback (JAX registers one) the exception is printed as
# "Exception ignored" and lost, and the run would go on to write its outputs. The handler
# below records the interrupt, so that _check_interrupt() raises it again before each phase
# and each output.
_SIGINT = {"seen": False, "hold": False, "written": False}


def _in_gc_callback(frame: FrameType | None) -> bool:
    """``frame`` runs (inside) a garbage-collector callback, which swallows exceptions."""
    codes = {getattr(getattr(cb, "__func__", cb), "__code__", None) for cb in gc.callbacks}
    while frame is not None:
        if frame.f_code in codes:
            return True
        frame = frame.f_back
    return False


def _on_sigint(signum: int, frame: FrameType | None) -> None:
    _SIGINT["seen"] = True
    # Lost in a gc callback, or splitting the outputs being moved into place: raised by the
    # next _check_interrupt() (or at the end of _held()) instead.
    if _SIGINT["hold"] or _in_gc_callback(frame):
        return
    raise KeyboardInterrupt


def _check_interrupt() -> None:
    """Raise KeyboardInterrupt if Ctrl-C came, even if its exception was swallowed."""
    if _SIGINT["seen"]:
        raise KeyboardInterrupt


@contextlib.contextmanager
def _sigint_handler() -> Iterator[None]:
    """Our SIGINT handler for the duration of a command; the previous one restored after."""
    _SIGINT.update(seen=False, hold=False, written=False)
    previous = signal.getsignal(signal.SIGINT)
    # Only the main thread may set handlers; a process started with SIGINT ignored keeps it so.
    if threading.current_thread() is not threading.main_thread() or previous == signal.SIG_IGN:
        yield
        return
    signal.signal(signal.SIGINT, _on_sigint)
    try:
        yield
    finally:
        # None: a handler not set from Python; Python's own is the nearest we can restore.
        signal.signal(signal.SIGINT, signal.default_int_handler if previous is None else previous)


@contextlib.contextmanager
def _held() -> Iterator[None]:
    """Ctrl-C waits until the block is done (the outputs moved into place: all or none)."""
    _check_interrupt()
    _SIGINT["hold"] = True
    try:
        yield
    finally:
        _SIGINT["hold"] = False
    _SIGINT["written"] = True
    _check_interrupt()


def _checking(update: Callable[[int], Any]) -> Callable[[int], None]:
    """A progress callback that also honours an interrupt (between chunks of a pass)."""

    def tick(n: int) -> None:
        _check_interrupt()
        update(n)

    return tick


class _Staged:
    """Outputs written into hidden folders beside their targets, then moved into place together.

    ``path(target)`` is where to write ``target`` (under its own name, which a CSV's metadata
    file records; the metadata file goes beside it); ``commit()`` moves every written file to
    its target, a CSV's metadata file before the CSV. Leaving the ``with`` block removes the
    hidden folders, so an error or an interrupt before ``commit()`` leaves no output and no
    temporary file; the output folders made with ``folder()`` are removed too when empty.
    """

    def __init__(self, overwrite: bool) -> None:
        self.overwrite = overwrite
        self._stage: dict[Path, Path] = {}  # output folder -> its hidden folder
        self._targets: list[tuple[Path, Path]] = []  # (as given, absolute)
        self._made: list[Path] = []

    def __enter__(self) -> _Staged:
        return self

    def __exit__(self, kind: Any, *_: Any) -> None:
        for stage in self._stage.values():
            shutil.rmtree(stage, ignore_errors=True)
        if kind is not None:
            for folder in reversed(self._made):
                with contextlib.suppress(OSError):  # only when empty
                    folder.rmdir()

    def folder(self, path: Path) -> None:
        """Make the output folder ``path`` (and its missing parents)."""
        missing = [p for p in (path, *path.parents) if not p.exists()]
        path.mkdir(parents=True, exist_ok=True)
        self._made += reversed(missing)

    def path(self, target: str | os.PathLike) -> Path:
        """Where to write ``target`` now."""
        full = Path(target).absolute()
        if full.parent not in self._stage:
            self._stage[full.parent] = Path(tempfile.mkdtemp(prefix=".bayesmix-",
                                                             dir=full.parent))  # fmt: skip
        self._targets.append((Path(target), full))
        return self._stage[full.parent] / full.name

    def commit(self) -> list[Path]:
        """Move the written files into place (call it inside ``_held()``); returns the targets."""
        from bayesmix._writers import csv_metadata_path

        moves = []
        for _, full in self._targets:
            staged = self._stage[full.parent] / full.name
            for src, dst in ((csv_metadata_path(staged), csv_metadata_path(full)),
                             (staged, full)):  # fmt: skip
                if src.exists():
                    moves.append((src, dst))
        for _, dst in moves:  # all checked before any is moved
            if dst.is_dir():
                raise IsADirectoryError(f"{dst} is a folder; give the path of a file")
            if dst.exists() and not self.overwrite:
                raise FileExistsError(f"{dst} already exists; pass --overwrite to replace it")
        for src, dst in moves:
            os.replace(src, dst)
        return [given for given, _ in self._targets]


def _show(quiet: bool) -> bool:
    return not quiet and sys.stderr.isatty()


@contextlib.contextmanager
def _bar(quiet: bool, total: int | None, desc: str) -> Iterator[Any]:
    """A tqdm bar on stderr, or a no-op when quiet or stderr is not a terminal."""
    from tqdm import tqdm

    off = not _show(quiet)
    with tqdm(total=total, desc=desc, unit="frame", disable=off, leave=False, file=sys.stderr) as b:
        yield b


def _reference_files(args: argparse.Namespace) -> list[str]:
    """The references in order: --ref-a, --ref-b (both or neither), then every --ref."""
    if (args.ref_a is None) != (args.ref_b is None):
        given, other = ("--ref-a", "--ref-b") if args.ref_b is None else ("--ref-b", "--ref-a")
        raise InputError(
            f"{given} needs {other} too (or give every reference with --ref FILE, in order)"
        )
    files = ([] if args.ref_a is None else [args.ref_a, args.ref_b]) + list(args.refs)
    if not files:
        raise InputError(
            "the following arguments are required: --ref-a, --ref-b (or --ref FILE once per "
            "reference, in order)"
        )
    if len(files) < 2:
        raise InputError(
            f"a fit needs at least two references, got {len(files)}: give --ref FILE once per "
            "reference (or --ref-a A --ref-b B)"
        )
    return files


def reference_names(files: Sequence[str]) -> tuple[str, ...]:
    """A column name per reference file: its stem (or its dataset's last part, for
    'file.h5:/entry/ref'), letters, digits and '_' only, made unique with _2, _3, ..."""
    import re

    from bayesmix._readers import _split_key

    names: list[str] = []
    for source in files:
        path, key = _split_key(source, None)
        base = key.rstrip("/").rsplit("/", 1)[-1] if key else path.name.split(".")[0]
        name = re.sub(r"[^A-Za-z0-9_]", "_", base).strip("_") or "ref"
        unique, k = name, 2
        while unique in names:
            unique, k = f"{name}_{k}", k + 1
        names.append(unique)
    return tuple(names)


def _fit_inputs(args: argparse.Namespace, stacks: Sequence[str], ref_files: Sequence[str]
                ) -> list[tuple[str, str]]:  # fmt: skip
    """Every file the fit reads, with the option that names it."""
    from bayesmix._model import BACKGROUNDS

    refs = [] if args.ref_a is None else [("--ref-a", args.ref_a), ("--ref-b", args.ref_b)]
    refs += [("--ref", f) for f in args.refs]
    background = None if args.background in BACKGROUNDS else args.background
    others = [("--mask", args.mask), ("--background", background),
              ("--variance", args.variance), ("--times", args.times)]  # fmt: skip
    return [("FRAMES", s) for s in stacks] + refs + [(k, v) for k, v in others if v is not None]


def _check_fit_options(args: argparse.Namespace, n_refs: int) -> None:
    """The options that need no data, so that a bad one costs no work."""
    from bayesmix._model import BACKGROUNDS
    from bayesmix._report import check_report_path
    from bayesmix._writers import RESULT_FORMATS

    if args.idata is not None and args.method != "nuts":
        raise InputError("--idata needs --method nuts (the MAP path has no posterior draws)")
    if n_refs > 2 and args.method == "map" and args.draws < 100:
        raise InputError(f"--draws must be at least 100, got {args.draws}")
    suffix = Path(args.out).suffix.lower()
    if suffix not in RESULT_FORMATS:
        raise InputError(
            f"--out {args.out}: cannot tell the results format from its extension "
            f"{suffix or '(none)'!r}; use one of {', '.join(RESULT_FORMATS)}"
        )
    if args.idata is not None and Path(args.idata).suffix.lower() != ".nc":
        raise InputError(
            f"--idata {args.idata}: an InferenceData is written as netCDF; give a path ending "
            "in .nc"
        )
    if args.report is not None:
        check_report_path(args.report)
    if args.background not in BACKGROUNDS and not Path(args.background).exists():
        raise InputError(
            f"--background must be one of {', '.join(BACKGROUNDS)} or a file of basis "
            f"images, got {args.background!r} (no such file)"
        )


def _fit(args: argparse.Namespace) -> int:
    from bayesmix._runs import finish, parts_dir

    # Every check that needs no data first: a bad option costs no work and leaves no file.
    ref_files = _reference_files(args)
    n_refs = len(ref_files)
    _check_fit_options(args, n_refs)
    temporal = _parse_temporal(args.temporal)
    stacks = _stack_sources(args.frames)
    inputs = _fit_inputs(args, stacks, ref_files)
    for label, source in inputs:
        if label in ("FRAMES", "--ref-a", "--ref-b", "--ref", "--mask"):
            _check_exists(label, source)  # the others say it in their own words below
    times = _read_times(args.times, temporal)
    work = parts_dir(args.out)
    outputs = _outputs_with_metadata([("--out", args.out), ("--idata", args.idata),
                                      ("--report", args.report)])  # fmt: skip
    # An output that is an input first: --overwrite would not help there.
    _check_apart(inputs, [*outputs, ("the work folder of --out", work)])
    _free(outputs, args.overwrite)
    if work.exists() and not (args.resume or args.overwrite):
        raise InputError(
            f"an interrupted run left {work}; pass --resume to continue it, or "
            "--overwrite to start again"
        )
    # A work folder this run makes (or starts again) goes with a user error; one it resumes
    # stays, as it does on Ctrl-C or a crash (the resume mechanism).
    fresh = not work.exists() or (args.overwrite and not args.resume)
    try:
        return _fit_run(args, ref_files, stacks, temporal, times, work)
    except (InputError, *USER_OS_ERRORS):
        if fresh:
            finish(work)
        raise
    except KeyboardInterrupt:
        if _SIGINT["written"] or not work.exists():
            raise
        raise KeyboardInterrupt(f"no output was written; {work} keeps the statistics pass so "
                                "far: rerun with --resume to continue") from None  # fmt: skip


def _fit_run(args: argparse.Namespace, ref_files: list[str], stacks: list[str], temporal: Any,
             times: Any, work: Path) -> int:  # fmt: skip
    """The fit once every option is checked: read, pass, fit or sample, write."""
    n_refs = len(ref_files)
    if args.method == "nuts" and "xla_force_host_platform_device_count" not in os.environ.get(
        "XLA_FLAGS", ""
    ):
        # One CPU device per chain, so chains run in parallel; only effective before JAX starts.
        flags = os.environ.get("XLA_FLAGS", "")
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={args.chains}"

    from bayesmix._arviz import diagnose
    from bayesmix._devices import on_device
    from bayesmix._io import prepare
    from bayesmix._map import fit_map_stats
    from bayesmix._model import BACKGROUNDS, check_design, check_nuts, make_model
    from bayesmix._nuts import sample_stats
    from bayesmix._readers import read_frames, read_reference
    from bayesmix._report import report
    from bayesmix._runs import checkpointed_stats, fingerprint, finish
    from bayesmix._writers import write_idata, write_results
    from bayesmix.noise import noise_spec
    from bayesmix.priors import parse_prior, parse_sigma_prior

    spec = args.prior or (DEFAULT_PRIOR if n_refs == 2 else DEFAULT_SIMPLEX_PRIOR)
    prior = parse_prior(spec)
    sigma_prior = parse_sigma_prior(args.sigma_prior)
    noise = _parse_noise(args.noise)
    background: Any = args.background
    if background not in BACKGROUNDS:
        background = read_frames(background).data
    # Two references keep the names A, B of the x columns; K >= 3 name theirs after the files.
    names = reference_names(ref_files) if n_refs > 2 else None
    model = make_model(prior=prior, sigma_prior=sigma_prior, background=background,
                       gain=args.gain, n_refs=n_refs, ref_names=names, noise=noise,
                       temporal=temporal)  # fmt: skip
    if args.method == "nuts":
        check_nuts(model)
    # True: the fit reads the frames itself, not their checkpointed statistics (pixel weights
    # from a variance map or re-made from the fit; or a noise model passed to the sampler).
    direct = _check_noise(args, model.noise)
    with on_device(args.device):  # checked before any work
        t0 = time.perf_counter()
        with _bar(args.quiet, None, "reading") as bar:
            frames, sequence_id = _read_stacks(stacks, read_frames, _checking(bar.update),
                                               args.spectral_axis)  # fmt: skip
        if times is not None or sequence_id is not None:
            times, sequence_id = _check_order(times, sequence_id, frames)
        refs = [read_reference(f) for f in ref_files]
        if args.ref_a is not None and refs[1].shape != refs[0].shape:
            raise InputError(f"ref_a and ref_b must have the same shape, got {refs[0].shape} and "
                            f"{refs[1].shape}")  # fmt: skip
        for f, r in zip(ref_files[1:], refs[1:], strict=True):
            if r.shape != refs[0].shape:
                raise InputError(
                    f"all references must have the same shape: {ref_files[0]} has "
                    f"{refs[0].shape}, {f} has {r.shape}"
                )
        ref_a, ref_b, more_refs = refs[0], refs[1], tuple(refs[2:])
        mask = None if args.mask is None else _mask(read_reference(args.mask), args.mask)
        stack = prepare(frames.data, ref_a, ref_b, mask, more_refs)
        check_design(model, stack.refs, stack.frame_shape, stack.pixels)
        variance = (None if args.variance is None else
                    _read_variance(args.variance, stack, frames.map_shape,
                                   args.spectral_axis))  # fmt: skip
        _check_interrupt()
        if args.overwrite and not args.resume:
            finish(work)
        options = {"frames": [d for f in stacks for d in _describe(f)], "mask": args.mask,
                   "spectral_axis": args.spectral_axis}  # fmt: skip
        if more_refs:  # the fingerprint holds A and B; the other references' values go here
            import hashlib

            options["more_refs"] = hashlib.sha256(stack.more_refs.tobytes()).hexdigest()
        key = fingerprint(stack, options, model)
        labels = frames.source
        common = {"model": model, "map_shape": frames.map_shape, "device": args.device}
        order = {"times": times, "sequence_id": sequence_id}
        sampler = {"draws": args.draws, "seed": args.seed} if more_refs else {}
        if direct:
            # No checkpointed statistics: the fit reads the frames itself (a weighted pass, or
            # several to re-weight the pixels from the current fit).
            result = _fit_direct(args, frames.data, (ref_a, ref_b, *more_refs), model, variance,
                                 mask, frames.map_shape, sampler, order)  # fmt: skip
            n = int(stack.frames.shape[0])
        else:
            with _bar(args.quiet, stack.frames.shape[0], "statistics") as bar:
                stats = checkpointed_stats(stack, work, chunk=args.checkpoint, key=key,
                                           resume=args.resume, progress=_checking(bar.update),
                                           memory_limit=args.memory_limit,
                                           model=model)  # fmt: skip
            _check_interrupt()
            n = stats.n_frames
            if args.method == "map":
                result = fit_map_stats(stats, **common, **sampler, **_temporal_kw(model, order))
            else:
                result = sample_stats(
                    stats, **common, num_chains=args.chains, num_warmup=args.warmup,
                    num_samples=args.samples, seed=args.seed, progress=_show(args.quiet),
                    **_temporal_kw(model, order),
                )  # fmt: skip
        _check_interrupt()
        diag = diagnose(result) if args.method == "nuts" else None
        meta = {"frames": str(stacks[0]) if len(stacks) == 1 else [str(f) for f in stacks],
                "ref_a": str(ref_files[0]),
                "ref_b": str(ref_files[1]), "mask": str(args.mask), "seed": args.seed,
                "background_source": str(args.background)}  # fmt: skip
        if more_refs:
            meta["ref_files"] = [str(f) for f in ref_files]
        meta["noise"] = noise_spec(model.noise)
        if args.variance is not None:
            meta["variance"] = str(args.variance)
        if args.times is not None:
            meta["times"] = str(args.times)
        # Into hidden folders first, then into place together: all the outputs or none.
        with _Staged(args.overwrite) as staged:
            _check_interrupt()
            write_results(result, staged.path(args.out), prob=args.prob, source=labels,
                          meta=meta)  # fmt: skip
            if args.idata is not None:
                _check_interrupt()
                write_idata(result, staged.path(args.idata))
            if args.report is not None:
                _check_interrupt()
                report(result, staged.path(args.report), frames=stack.frames, ref_a=ref_a,
                       ref_b=ref_b, more_refs=more_refs, mask=mask, prob=args.prob,
                       variance=args.variance)  # fmt: skip
            with _held():
                written = staged.commit()
                finish(work)
        seconds = time.perf_counter() - t0

    if not args.quiet:
        print(f"bayesmix fit ({args.method}): {n} frames of shape {stack.frame_shape} "
              f"in {seconds:.1f} s")  # fmt: skip
        if args.method == "map":
            print(result.summary())
            if _noise_lines(result):
                print(_noise_lines(result))
        else:
            print(f"sigma = {float(result.posterior['sigma'].mean()):.6g}")
            print(diag)
    for path in written:
        print(f"wrote {path}")
    if diag is not None and diag.failed:
        sys.stdout.flush()
        print("bayesmix: failed: the NUTS draws failed their convergence checks, so the outputs "
              f"written do not describe the posterior: {'; '.join(diag.failures)}",
              file=sys.stderr)  # fmt: skip
        return EXIT_NOT_CONVERGED
    return 0


def _describe(source: str) -> list[Any]:
    """Names, sizes and modification times of the input file(s): what a resumed run must find
    unchanged."""
    from bayesmix._readers import _expand_pattern, _split_key

    # 'data.h5:/entry/frames' names a file and a key: describe the file; a pattern is read as
    # the readers read it ('[' and ']' literal).
    path, _ = _split_key(source, None)
    paths = sorted(map(str, _expand_pattern(str(path)))) or [str(path)]
    out = []
    for p in map(Path, paths):
        files = sorted(p.iterdir()) if p.is_dir() else [p]
        out += [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.exists()]
    return out or [source]


def _mask(mask: Any, name: str) -> Any:
    """A mask file as booleans: bool, or integers that are all 0 or 1 (an image saved as 0/1)."""
    import numpy as np

    if mask.dtype == bool:
        return mask
    if mask.dtype.kind in "iu" and np.all((mask == 0) | (mask == 1)):
        return mask.astype(bool)
    raise InputError(f"--mask {name} must hold booleans or 0/1 integers, got dtype {mask.dtype}")


def _parse_noise(spec: str) -> Any:
    """--noise SPEC as a noise model (:func:`bayesmix.noise.parse_noise`)."""
    from bayesmix.noise import parse_noise

    try:
        return parse_noise(spec)
    except ValueError as exc:
        raise InputError(f"--noise {spec!r}: {exc}") from None


def _is_gaussian(noise: Any) -> bool:
    from bayesmix.noise import Gaussian

    return isinstance(noise, Gaussian)


def _sampler_takes(*names: str) -> bool:
    """``bayesmix.sample`` accepts these keywords (noise models reach the sampler in steps)."""
    import inspect

    from bayesmix._nuts import sample

    return all(n in inspect.signature(sample).parameters for n in names)


def _check_noise(args: argparse.Namespace, noise: Any) -> bool:
    """Refuse --noise/--variance combinations the run cannot honour, before any work.

    Returns True when the fit must read the frames itself rather than their checkpointed
    statistics: a variance map or a re-weighting noise model (pixel weights), or a noise model
    other than Gaussian passed to the sampler.
    """
    from bayesmix._readers import _split_key
    from bayesmix.noise import PoissonGaussian, noise_spec

    spec = noise_spec(noise)
    if args.variance is not None:
        path, _ = _split_key(args.variance, None)
        if not path.exists():
            raise InputError(f"--variance: no such file or folder: {path}")
        if isinstance(noise, PoissonGaussian):
            raise InputError(
                f"--variance and --noise {spec} both set each pixel's variance (the Poisson "
                "model computes it from the fitted mean); give one of them"
            )
    direct = args.variance is not None or noise.reweights
    if args.method == "nuts" and (direct or not _is_gaussian(noise)):
        need = (("noise",) if not _is_gaussian(noise) else ()) + (
            ("variance",) if args.variance is not None else ()
        )
        if not _sampler_takes(*need):
            given = " and ".join(
                ([f"--noise {spec}"] if not _is_gaussian(noise) else [])
                + (["--variance"] if args.variance is not None else [])
            )
            raise InputError(
                f"--method nuts does not take {given} yet (the sampler has i.i.d. Gaussian "
                "noise only); use --method map, which fits every noise model"
            )
        direct = True
    if direct and args.resume:
        raise InputError(
            f"--resume does not apply to --noise {spec}"
            + (" with --variance" if args.variance is not None else "")
            + ": that fit reads the frames itself and keeps no checkpoint; run it again "
            "without --resume"
        )
    return direct


def _parse_temporal(spec: str) -> Any:
    """--temporal SPEC as a temporal model (:func:`bayesmix.temporal.check_temporal`)."""
    from bayesmix.temporal import check_temporal

    try:
        return check_temporal(spec)
    except ValueError as exc:
        raise InputError(f"--temporal {spec!r}: {exc}") from None


def _is_walk(temporal: Any) -> bool:
    from bayesmix.temporal import Independent

    return not isinstance(temporal, Independent)


TIMES_FORMATS = (".npy", ".csv", ".txt")


def _read_times(source: str | None, temporal: Any) -> Any:
    """--times FILE: one time per frame (.npy, or .csv/.txt: one number per line or separated
    by commas/whitespace, an optional header line, '#' comments), checked before any work."""
    import numpy as np

    if source is None:
        return None
    if not _is_walk(temporal):
        raise InputError(
            "--times orders the frames of a temporal model: add --temporal random_walk (frames "
            "are independent by default)"
        )
    path = Path(source)
    if path.suffix.lower() not in TIMES_FORMATS:
        raise InputError(
            f"--times {source}: cannot tell its format from the extension "
            f"{path.suffix or '(none)'!r}; use one of {', '.join(TIMES_FORMATS)}"
        )
    if not path.is_file():
        raise InputError(f"--times: no such file: {path}")
    try:
        if path.suffix.lower() == ".npy":
            values = np.load(path, allow_pickle=False)
        else:
            values = _times_text(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        text = " ".join(str(exc).split())
        raise InputError(f"--times {source}: cannot read it: {text}") from None
    if values.ndim == 2 and 1 in values.shape:
        values = values.ravel()  # one row or one column
    from bayesmix._temporal import check_sequence

    try:
        values, _ = check_sequence(values, None, None)
    except ValueError as exc:
        raise InputError(f"--times {source}: {' '.join(str(exc).split())}") from None
    if values.size == 0:
        raise InputError(f"--times {source}: the file holds no times")
    return values


def _times_text(text: str) -> Any:
    """The numbers of a .csv/.txt times file (datetimes as ISO text are taken too)."""
    import re

    import numpy as np

    rows = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    cells = [[c for c in re.split(r"[,;\s]+", r) if c] for r in rows if r]
    if not cells:
        return np.zeros(0)
    if len(cells) > 1 and not any(_number(c) or _datetime(c) for c in cells[0]):
        cells = cells[1:]  # a header line, e.g. 'time'
    widths = {len(r) for r in cells}
    if len(cells) > 1 and widths != {1}:
        raise InputError(
            f"expected one time per line (one column), got rows of {sorted(widths)} values"
        )
    return _as_times([c for r in cells for c in r])


def _as_times(values: list[str]) -> Any:
    import numpy as np

    try:
        return np.array([float(v) for v in values])
    except ValueError:
        pass
    try:
        return np.array(values, dtype="datetime64[ns]")
    except ValueError:
        bad = next(v for v in values if not _number(v))
        raise InputError(f"{bad!r} is not a number (nor an ISO date-time)") from None


def _datetime(text: str) -> bool:
    import numpy as np

    try:
        np.datetime64(text)
    except ValueError:
        return False
    return True


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _stack_sources(sources: Sequence[str]) -> list[str]:
    """The FRAMES arguments: one stack, or several fitted together (each its own sequence)."""
    stacks = [str(s) for s in sources]
    seen = set()
    for s in stacks:
        if s in seen:
            raise InputError(f"FRAMES {s} is given twice; give each stack once")
        seen.add(s)
    return stacks


def _read_stacks(stacks: list[str], read: Any, progress: Any, spectral_axis: Any
                 ) -> tuple[Any, Any]:  # fmt: skip
    """The frames of one stack, or of several concatenated in order (lazily with dask when it
    is installed) with each frame's sequence label: the index of its stack."""
    import numpy as np

    from bayesmix._readers import Frames

    if len(stacks) == 1:
        return read(stacks[0], progress=progress, spectral_axis=spectral_axis), None
    parts = [read(s, progress=progress, spectral_axis=spectral_axis) for s in stacks]
    shapes = {tuple(p.data.shape[1:]) for p in parts}
    if len(shapes) > 1:
        desc = ", ".join(f"{s} has {tuple(p.data.shape[1:])}" for s, p in
                         zip(stacks, parts, strict=True))  # fmt: skip
        raise InputError(f"the FRAMES stacks must have frames of one shape: {desc}")
    sizes = [int(p.data.shape[0]) for p in parts]
    try:
        import dask.array as da

        data: Any = da.concatenate([da.from_array(p.data, chunks=(min(1024, max(n, 1)), -1)
                                    if p.data.ndim == 2 else "auto")
                                    if not isinstance(p.data, da.Array) else p.data
                                    for p, n in zip(parts, sizes, strict=True)])  # fmt: skip
    except ImportError:
        data = np.concatenate([np.asarray(p.data) for p in parts])
    source = np.concatenate([
        np.asarray(p.source).astype(str) if p.source is not None else np.full(n, s)
        for s, p, n in zip(stacks, parts, sizes, strict=True)])  # fmt: skip
    sequence = np.repeat(np.arange(len(stacks)), sizes)
    # One map shape does not describe several stacks: their pixels are a list of frames.
    return Frames(data, source, None), sequence


def _check_order(times: Any, sequence_id: Any, frames: Any) -> tuple[Any, Any]:
    """--times against the frames (one per frame, distinct within a sequence): before the
    statistics pass."""
    from bayesmix._temporal import _order, check_sequence

    n = int(frames.data.shape[0])
    if times is not None and times.size != n:
        raise InputError(f"--times must hold one time per frame ({n}), got {times.size}")
    times, sequence_id = check_sequence(times, sequence_id, n)
    _order(n, times, sequence_id)  # tied times within a sequence: one line, before the work
    return times, sequence_id


def _temporal_kw(model: Any, order: dict[str, Any]) -> dict[str, Any]:
    """``temporal=``, ``times=``, ``sequence_id=`` for fit_map/sample (only when temporal)."""
    if not _is_walk(model.temporal):
        return {}
    return {"temporal": model.temporal, **order}


def _read_variance(source: str, stack: Any, map_shape: Any, spectral_axis: Any) -> Any:
    """--variance FILE, read as a stack is (lazily where the format allows): shape S (one map
    for every frame) or (N, *S); a spectrum image's variance of the image's shape is laid out
    as its frames are. Checked against the frames before any work."""
    from bayesmix._io import check_variance, spectral_frames
    from bayesmix._readers import read_frames

    data = read_frames(source).data
    shape = tuple(data.shape)
    n = stack.frames.shape[0]
    if map_shape is not None and len(shape) == len(map_shape) + 1:
        # (E, H, W) beside a spectrum image (E, H, W): the same layout as its frames.
        data, _ = spectral_frames(data, spectral_axis)
    elif len(shape) == len(stack.frame_shape) + 1 and shape[0] == 1 and n != 1:
        data = data[0]  # one image (a PNG, a one-page TIFF): the map of every frame
    try:
        check_variance(data, stack)
    except ValueError as exc:
        raise InputError(f"--variance {source}: {' '.join(str(exc).split())}") from None
    return data


def _fit_direct(
    args: argparse.Namespace,
    frames: Any,
    refs: tuple[Any, ...],
    model: Any,
    variance: Any,
    mask: Any,
    map_shape: Any,
    sampler: dict[str, Any],
    order: dict[str, Any],
) -> Any:
    """The fit on the frames themselves: ``fit_map`` (or ``sample``) with the model's noise and
    the variance map; a spectrum image's frames arrive laid out, so the map shape is set here."""
    import dataclasses

    options = {"prior": model.prior, "sigma_prior": model.sigma_prior,
               "background": model.background, "gain": model.gain, "mask": mask,
               "memory_limit": args.memory_limit, "device": args.device,
               "ref_names": model.ref_names if model.n_refs > 2 else None}  # fmt: skip
    if args.method == "map":
        from bayesmix._map import fit_map

        res = fit_map(frames, *refs, noise=model.noise, variance=variance, **options, **sampler,
                      **_temporal_kw(model, order))  # fmt: skip
        return res if map_shape is None else dataclasses.replace(res, map_shape=tuple(map_shape))
    from bayesmix._nuts import sample

    noise_kw: dict[str, Any] = {}
    if not _is_gaussian(model.noise):
        noise_kw["noise"] = model.noise
    if variance is not None:
        noise_kw["variance"] = variance
    noise_kw.update(_temporal_kw(model, order))
    idata = sample(frames, *refs, num_chains=args.chains, num_warmup=args.warmup,
                   num_samples=args.samples, seed=args.seed, progress=_show(args.quiet),
                   **options, **noise_kw)  # fmt: skip
    if map_shape is not None:
        for group in idata.groups():
            getattr(idata, group).attrs["map_shape"] = [int(v) for v in map_shape]
    return idata


def _noise_lines(result: Any) -> str:
    """What the noise model learned and the frames' total elpd, for the terminal."""
    lines = []
    params = getattr(result, "noise_params", None) or {}
    if params:
        text = ", ".join(f"{k} = {v:.6g}" if isinstance(v, float) else f"{k} = {v}"
                         for k, v in params.items())  # fmt: skip
        lines.append(f"  noise parameters: {text}")
    loglik = getattr(result, "loglik", None)
    if loglik is not None:
        what = ("log evidence (prequential, along the random walk)"
                if getattr(result, "temporal", None) is not None
                else "elpd (exact leave-one-frame-out)")  # fmt: skip
        lines.append(f"  {what}: {float(sum(loglik)):.6g}")
    return "\n".join(lines)


def _demo(args: argparse.Namespace) -> int:
    import numpy as np

    out = Path(args.out)
    results_path, report_path = out / "results.csv", out / "report.html"
    if not (np.isfinite(args.noise) and args.noise > 0):
        raise InputError(f"--noise must be a positive number, got {args.noise}")
    _check_out_folder(out)
    if out.exists():
        _free(_outputs_with_metadata([("the results", results_path),
                                      ("the report", report_path)]), args.overwrite)  # fmt: skip

    from bayesmix._map import fit_map
    from bayesmix._report import report
    from bayesmix._simulate import simulate
    from bayesmix._writers import write_results

    t0 = time.perf_counter()
    sim = simulate(
        args.frames, shape=(args.size, args.size), noise=args.noise, seed=args.seed
    )
    t1 = time.perf_counter()
    res = fit_map(sim.frames, sim.ref_a, sim.ref_b)
    lo, hi = res.interval(0.9)
    t2 = time.perf_counter()

    meta = {"demo": f"simulate({args.frames}, noise={args.noise}, seed={args.seed})",
            "sigma_true": sim.sigma}  # fmt: skip
    with _Staged(args.overwrite) as staged:
        staged.folder(out)
        _check_interrupt()
        # The truth beside the estimates, for the reader of the demo.
        write_results(res, staged.path(results_path), columns={"x_true": sim.x}, meta=meta)
        _check_interrupt()
        report(res, staged.path(report_path), frames=sim.frames, ref_a=sim.ref_a,
               ref_b=sim.ref_b, title="bayesmix demo", truth=sim.x)  # fmt: skip
        with _held():
            staged.commit()

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
    print(f"full results (one row per frame): {results_path}")
    print(f"report: {report_path}")
    return 0


def _simulate(args: argparse.Namespace) -> int:
    import numpy as np

    out = Path(args.out)
    names = ("frames.npy", "ref_a.npy", "ref_b.npy", "x_true.csv")
    if len(args.shape) > 2:
        raise InputError(f"--shape takes H W (images) or P (spectra), got {args.shape}")
    if not (np.isfinite(args.noise) and args.noise > 0):
        raise InputError(f"--noise must be a positive number, got {args.noise}")
    _check_out_folder(out)
    if out.is_dir():
        _free(_outputs_with_metadata([(f"OUT/{n}", out / n) for n in names]), args.overwrite)

    import pandas as pd

    from bayesmix._io import atomic_write
    from bayesmix._simulate import simulate
    from bayesmix._writers import csv_metadata_path, write_csv_table

    sim = simulate(args.frames, shape=tuple(args.shape), noise=args.noise, seed=args.seed)
    with _Staged(args.overwrite) as staged:
        staged.folder(out)
        for name, arr in zip(names[:3], (sim.frames, sim.ref_a, sim.ref_b), strict=True):
            # np.save on a file object: a path argument would get '.npy' appended to the name.
            def save(tmp: str, arr: Any = arr) -> None:
                with open(tmp, "wb") as fh:
                    np.save(fh, arr, allow_pickle=False)

            _check_interrupt()
            atomic_write(staged.path(out / name), save)

        # A plain CSV (frame, x); the noise sd and the seed in its CSVW metadata file beside it.
        truth = pd.DataFrame({"x": sim.x}, index=pd.RangeIndex(len(sim.x), name="frame"))
        _check_interrupt()
        write_csv_table(truth, staged.path(out / names[3]), {"sigma": sim.sigma, "seed": args.seed},
                        descriptions={"x": "true weight of reference A"})  # fmt: skip
        with _held():
            staged.commit()
    names += (csv_metadata_path(out / names[3]).name,)
    print(f"wrote {args.frames} frames of shape {tuple(args.shape)} (noise sd {sim.sigma}) "
          f"to {out}/: {', '.join(names)}")  # fmt: skip
    return 0


def _report(args: argparse.Namespace) -> int:
    from bayesmix._report import check_report_path
    from bayesmix._writers import csv_metadata_path

    check_report_path(args.out)
    src = Path(args.source)
    if not src.is_file():
        raise InputError(f"no such file: {src}")
    inputs = [("IDATA_OR_RESULTS", args.source)]
    if src.suffix.lower() == ".csv":
        inputs.append(("the metadata file of IDATA_OR_RESULTS", str(csv_metadata_path(src))))
    _check_apart(inputs, [("--out", args.out)])
    _free([("--out", args.out)], args.overwrite)
    from bayesmix._arviz import is_inference_data, read_idata
    from bayesmix._report import report
    from bayesmix._writers import read_results

    result: Any = None
    variance = None
    if src.suffix.lower() == ".nc":
        with contextlib.suppress(ValueError):
            result = read_idata(src)
    if not is_inference_data(result):
        table = read_results(src)
        sidecar = csv_metadata_path(src)
        if src.suffix.lower() == ".csv" and not table.attrs and not sidecar.exists():
            raise InputError(
                f"{src} has no provenance (sigma, priors, model): its metadata file "
                f"{sidecar.name} is missing; keep the two files written by bayesmix fit together"
            )
        variance = table.attrs.get("variance")
        # The table itself: its metadata keep what the rebuilt fit does not (a learned prior's
        # hyperparameters and their sds).
        result = table
    with _Staged(args.overwrite) as staged:
        _check_interrupt()
        report(result, staged.path(args.out), prob=args.prob, variance=variance)
        with _held():
            staged.commit()
    print(f"wrote {args.out}")
    return 0


COMMANDS = {"fit": _fit, "demo": _demo, "simulate": _simulate, "report": _report}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bayesmix`` console script."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error (already printed)
        return int(exc.code or 0)
    try:
        with _sigint_handler():
            return COMMANDS[args.command](args)
    except (InputError, *USER_OS_ERRORS) as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"bayesmix: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as exc:
        detail = str(exc) or ("the outputs were all in place before it" if _SIGINT["written"]
                              else "no output was written")  # fmt: skip
        print(f"bayesmix: interrupted: {detail}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception:  # a bug, not the user's input: show where it happened
        traceback.print_exc()
        print("bayesmix: internal error (not a problem with your input); please report it with "
              "the traceback above", file=sys.stderr)  # fmt: skip
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
