"""The command line keeps the user's files safe: no output may replace or remove an input, every
option is checked before any data is read (a bad one leaves no file behind), Ctrl-C stops a run
at any moment with status 130 and no output, and a NUTS run that failed its convergence checks
says so with status 3 after writing its outputs."""

from __future__ import annotations

import gc
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import arviz as az
import numpy as np
import pytest

import bayesmix
from bayesmix import cli
from bayesmix.cli import main

IN_MAIN_THREAD = threading.current_thread() is threading.main_thread()


def _inputs(tmp: Path, n: int = 30, shape: tuple[int, int] = (8, 8)) -> dict[str, Path]:
    sim = bayesmix.simulate(n, shape=shape, noise=0.1, seed=0)
    paths = {k: tmp / f"{k}.npy" for k in ("v", "a", "b")}
    for key, arr in zip(paths, (sim.frames, sim.ref_a, sim.ref_b), strict=True):
        np.save(paths[key], arr)
    return paths


def _snapshot(tmp: Path) -> dict[str, bytes | None]:
    """Every file and folder under ``tmp`` (hidden ones too), with the files' bytes."""
    return {str(p.relative_to(tmp)): None if p.is_dir() else p.read_bytes()
            for p in sorted(tmp.rglob("*"))}  # fmt: skip


def _one_line(capsys, argv: list[str], match: str, status: int = 2) -> str:
    assert main(argv) == status
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert re.search(match, err), err
    return err


# --- 1. An output never replaces or removes an input -----------------------------------------


def _png_folder(tmp: Path) -> Path:
    import imageio.v3 as iio

    (tmp / "pngs").mkdir()
    frames = np.load(tmp / "v.npy")
    for i, f in enumerate(frames):
        iio.imwrite(tmp / "pngs" / f"f{i:02d}.png", np.rint(f * 1000).clip(0, 65535).astype("u2"))
    return tmp / "pngs"


def _h5(tmp: Path) -> Path:
    import h5py

    with h5py.File(tmp / "d.h5", "w") as h:
        h["frames"] = np.load(tmp / "v.npy")
    return tmp / "d.h5"


def _zarr(tmp: Path) -> str:
    import zarr

    zarr.save_group(str(tmp / "d.zarr"), frames=np.load(tmp / "v.npy"))
    return "d.zarr:frames"


def _times(tmp: Path, name: str = "t.csv") -> Path:
    path = tmp / name
    path.parent.mkdir(exist_ok=True)
    path.write_text("time\n" + "\n".join(str(i) for i in range(30)) + "\n")
    return path


WALK = ["--temporal", "random_walk", "--times"]

# (name, how to make the case: tmp -> (FRAMES, extra arguments), what the error says). Reports
# end in .html and results in .csv/.parquet/.nc (checked first): an input with such a name, or
# a link of that name to an input, or a path inside an input folder.
COLLISIONS = [
    ("out-is-the-times-file", lambda t: ("v.npy", [*WALK, str(_times(t).name), "--out", "t.csv"]),
     r"--out t.csv is also an input \(--times t.csv\): writing it would destroy that input, "
     r"with --overwrite or not; give --out another path"),
    ("symbolic-link-to-the-stack", lambda t: os.symlink(t / "v.npy", t / "link.html") or (
        "v.npy", ["--report", "link.html"]),
     r"--report link.html is also an input \(FRAMES v.npy\)"),
    ("hard-link-to-a-reference", lambda t: os.link(t / "a.npy", t / "hard.csv") or (
        "v.npy", ["--out", "hard.csv"]),
     r"--out hard.csv is also an input \(--ref-a a.npy\)"),
    ("link-to-the-hdf5-file-of-the-stack", lambda t: os.symlink(_h5(t), t / "d.html") or (
        "d.h5:/frames", ["--report", "d.html"]),
     r"--report d.html is also an input \(FRAMES d.h5\)"),
    ("out-inside-a-folder-of-images", lambda t: (_png_folder(t).name, ["--out", "pngs/r.csv"]),
     r"--out pngs/r.csv is inside the input folder pngs \(FRAMES\): it would change that "
     r"input; give --out another path, outside that folder"),
    ("report-inside-a-folder-of-images", lambda t: (_png_folder(t).name,
                                                    ["--report", "pngs/r.html"]),
     r"--report pngs/r.html is inside the input folder pngs"),
    ("out-inside-a-zarr-store", lambda t: (_zarr(t), ["--out", "d.zarr/r.parquet"]),
     r"--out d.zarr/r.parquet is inside the input folder d.zarr"),
    ("report-matches-the-glob", lambda t: (_png_folder(t).name + "/f*",
                                           ["--report", "pngs/fit.html"]),
     r"--report pngs/fit.html matches the input pattern pngs/f\* \(FRAMES\): the next run "
     r"would read it as a frame"),
    ("input-inside-the-work-folder", lambda t: (
        "v.npy", [*WALK, str(_times(t, "r.csv.parts/t.csv").relative_to(t)), "--out", "r.csv"]),
     r"--times r.csv.parts/t.csv is inside the work folder of --out \(r.csv.parts\), which the "
     r"run replaces or removes; move that input, or give --out another path"),
]  # fmt: skip


@pytest.mark.parametrize("overwrite", [False, True], ids=["", "overwrite"])
@pytest.mark.parametrize("case", COLLISIONS, ids=[c[0] for c in COLLISIONS])
def test_an_output_that_is_an_input_is_refused_with_or_without_overwrite(
    case, overwrite, tmp_path, capsys, monkeypatch
):
    _, make, match = case
    _inputs(tmp_path)
    monkeypatch.chdir(tmp_path)
    frames, extra = make(tmp_path)
    before = _snapshot(tmp_path)
    argv = ["fit", frames, "--ref-a", "a.npy", "--ref-b", "b.npy", "--quiet", *extra]
    _one_line(capsys, argv + (["--overwrite"] if overwrite else []), match)
    assert _snapshot(tmp_path) == before  # nothing replaced, nothing added


def test_the_reported_data_loss_is_refused(tmp_path, capsys, monkeypatch):
    """The issue's command replaced the input stack by the report; now it is refused (a
    report is .html), and so is the same through a link named like a report."""
    _inputs(tmp_path)
    os.symlink(tmp_path / "v.npy", tmp_path / "v.html")
    monkeypatch.chdir(tmp_path)
    before = _snapshot(tmp_path)
    base = ["fit", "v.npy", "--ref-a", "a.npy", "--ref-b", "b.npy", "--overwrite"]
    _one_line(capsys, [*base, "--report", "v.npy"], r"the report is an HTML file")
    _one_line(capsys, [*base, "--report", "v.html"],
              r"--report v.html is also an input \(FRAMES v.npy\)")  # fmt: skip
    assert _snapshot(tmp_path) == before


def test_report_command_refuses_to_write_over_its_source(tmp_path, capsys, monkeypatch):
    _inputs(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main(["fit", "v.npy", "--ref-a", "a.npy", "--ref-b", "b.npy", "--out", "r.csv",
                 "--quiet"]) == 0  # fmt: skip
    os.symlink(tmp_path / "r.csv", tmp_path / "r.html")
    os.symlink(tmp_path / "r.csv-metadata.json", tmp_path / "m.html")
    before = _snapshot(tmp_path)
    _one_line(capsys, ["report", "r.csv", "--out", "r.html", "--overwrite"],
              r"--out r.html is also an input \(IDATA_OR_RESULTS r.csv\)")  # fmt: skip
    _one_line(capsys, ["report", "r.csv", "--out", "m.html", "--overwrite"],
              r"--out m.html is also an input \(the metadata file of IDATA_OR_RESULTS")  # fmt: skip
    assert _snapshot(tmp_path) == before


# --- 2. Every option is checked before any data is read ---------------------------------------

# Bad options of every command: each is refused before any data is read and leaves nothing.
BAD_OPTIONS = [
    (["--out", "res.xlsx"], r"--out res.xlsx: cannot tell the results format .* use one of "
                            r"\.csv, \.parquet, \.nc"),
    (["--out", "folder.csv"], r"--out folder.csv is an existing folder; give the path of a file"),
    (["--method", "nuts", "--idata", "post.csv"],
     r"--idata post.csv: an InferenceData is written as netCDF; give a path ending in \.nc"),
    (["--seed", "-1"], r"argument --seed: expected an integer from 0 to 2\*\*63 - 1, got '-1'"),
    (["--method", "nuts", "--seed", "-1"], r"argument --seed: expected an integer"),
    (["--seed", str(2**64)], r"argument --seed: expected an integer"),
    (["--report", "r.pdf"], r"the report is an HTML file"),
    (["--report", "folder.csv"], r"the report is an HTML file"),
    (["--report", "r.csv"], r"the report is an HTML file"),
    (["--out", "r.parquet", "--report", "nowhere/r.html"], r"output folder nowhere does not exist"),
    (["--method", "nuts", "--out", "r.nc", "--idata", "r.nc"],
     r"two outputs go to the same file r.nc \(--out and --idata\)"),
    (["--mask", "missing.npy"], r"--mask: no such file or folder: missing.npy"),
    (["--ref", "c.npy"], r"--ref: no such file or folder: c.npy"),
    (["--background", "cubic"], r"--background must be one of none, constant, linear"),
    (["--idata", "p.nc"], r"--idata needs --method nuts"),
    (["--times", "t.csv"], r"--times orders the frames of a temporal model"),
    (["--prior", "beta:1"], r"prior 'beta:1' takes 2 to 2 parameters"),
    (["--temporal", "random_wobble"], r"--temporal 'random_wobble'"),
    (["--noise", "poisson", "--variance", "v.npy"], r"--variance and --noise poisson"),
    (["--checkpoint", "0"], r"argument --checkpoint: expected a positive integer"),
]  # fmt: skip


def test_bad_options_are_refused_before_any_data_is_read(tmp_path, capsys, monkeypatch):
    """Before: --out res.xlsx, --out naming a folder, --idata post.csv and --seed -1 failed
    after the statistics pass (or the NUTS run) and left OUT.parts/, so that the rerun was told
    to --resume. Now each is one line, exit 2, before any frame is read, leaving no file."""
    import bayesmix._readers as readers

    _inputs(tmp_path)
    (tmp_path / "folder.csv").mkdir()
    monkeypatch.chdir(tmp_path)
    read = []
    for name in ("read_frames", "read_reference"):
        monkeypatch.setattr(readers, name, lambda *a, _n=name, **k: read.append(_n))
    before = _snapshot(tmp_path)
    for extra, match in BAD_OPTIONS:
        _one_line(capsys, ["fit", "v.npy", "--ref-a", "a.npy", "--ref-b", "b.npy", *extra], match)
        assert not read, (extra, read)
        assert _snapshot(tmp_path) == before, extra


def test_bad_options_of_the_other_commands_leave_nothing(tmp_path, capsys, monkeypatch):
    _inputs(tmp_path)
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.chdir(tmp_path)
    before = _snapshot(tmp_path)
    for argv, match in [
        (["demo", "--seed", "-1"], r"argument --seed: expected an integer"),
        (["demo", "--out", "file"], r"file exists and is not a folder"),
        (["simulate", "s", "--frames", "5", "--seed", "-1"], r"argument --seed"),
        (["simulate", "file", "--frames", "5"], r"file exists and is not a folder"),
        (["report", "v.npy", "--out", "r.pdf"], r"the report is an HTML file"),
        (["report", "missing.nc", "--out", "r.html"], r"no such file: missing.nc"),
    ]:
        _one_line(capsys, argv, match)
        assert _snapshot(tmp_path) == before, argv


def test_a_user_error_found_in_the_pass_leaves_no_work_folder(tmp_path, capsys):
    """A frame with no finite pixel is found by the statistics pass, after OUT.parts/ was made:
    the folder goes with the error, so the rerun is not told to --resume."""
    paths = _inputs(tmp_path)
    frames = np.load(paths["v"])
    frames[4] = np.nan
    np.save(paths["v"], frames)
    before = _snapshot(tmp_path)
    argv = ["fit", str(paths["v"]), "--ref-a", str(paths["a"]), "--ref-b", str(paths["b"]),
            "--out", str(tmp_path / "r.csv"), "--quiet", "--checkpoint", "10"]  # fmt: skip
    _one_line(capsys, argv, r"1 frame\(s\) have no finite pixel")
    assert _snapshot(tmp_path) == before


# --- 3. Ctrl-C: status 130, no output ----------------------------------------------------------

NUTS = ["--method", "nuts", "--chains", "2"]


def _start_on_a_terminal(argv: list[str], cwd: Path) -> tuple[subprocess.Popen, int]:
    """``argv`` with stderr on a pseudo-terminal, so that it draws its progress bars there."""
    import fcntl
    import pty
    import struct
    import termios

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    proc = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=follower)  # fmt: skip
    os.close(follower)
    return proc, leader


def _read_until(leader: int, proc: subprocess.Popen, pattern: bytes | None, seen: bytearray,
                timeout: float) -> bool:  # fmt: skip
    """Read the terminal into ``seen`` until ``pattern`` shows (True) or the process ends."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.05)
        if ready:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the process closed the terminal
                return False
            if not chunk:
                return False
            seen += chunk
            if pattern is not None and re.search(pattern, bytes(seen)):
                return True
        elif proc.poll() is not None:
            return False
    raise AssertionError(f"timed out; the terminal shows {bytes(seen[-300:])!r}")


# When to press Ctrl-C, as the terminal shows it: the NUTS bar at 0% (compiling), then the
# first draws counted (sampling, about 2 s left).
MOMENTS = {
    "compiling": [rb"NUTS, 2 chain\(s\):\s+0%"],
    "sampling": [rb"NUTS, 2 chain\(s\)", rb"NUTS, 2 chain\(s\):\s+[0-9]+%[^\r]*\| *[1-9][0-9]*/"],
}


@pytest.mark.skipif(sys.platform == "win32", reason="pseudo-terminals and SIGINT are POSIX")
# During sampling in the default run; during compilation too with `make slow`.
@pytest.mark.parametrize("moment", [pytest.param(m, marks=pytest.mark.slow) if m == "compiling"
                                    else m for m in MOMENTS])  # fmt: skip
def test_ctrl_c_during_nuts_stops_the_run_with_no_output(moment, tmp_path):
    """Before: the KeyboardInterrupt was raised inside JAX's garbage-collector callback,
    printed as 'Exception ignored' and lost; the run went on, wrote its outputs and exited 0
    (3 times in 6). Now the interrupt is recorded and honoured at the next phase: exit 130,
    no results, report, InferenceData nor temporary file; the statistics pass stays in
    OUT.parts/ for --resume (docs/cli.md, "Long runs")."""
    _inputs(tmp_path, n=200, shape=(16, 16))
    before = set(os.listdir(tmp_path))
    argv = [sys.executable, "-m", "bayesmix.cli", "fit", "v.npy", "--ref-a", "a.npy", "--ref-b",
            "b.npy", *NUTS, "--warmup", "3000", "--samples", "3000", "--out", "r.csv",
            "--idata", "post.nc", "--report", "r.html"]  # fmt: skip
    proc, leader = _start_on_a_terminal(argv, tmp_path)
    seen = bytearray()
    try:
        for pattern in MOMENTS[moment]:
            del seen[:]
            assert _read_until(leader, proc, pattern, seen, timeout=120), (
                f"the run ended before {moment}: {bytes(seen[-300:])!r}"
            )
        proc.send_signal(signal.SIGINT)
        _read_until(leader, proc, None, seen, timeout=120)
        status = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(leader)
    text = bytes(seen).decode(errors="replace")
    assert status == 130, text[-2000:]
    assert "bayesmix: interrupted: no output was written" in text and "--resume" in text, text
    assert set(os.listdir(tmp_path)) - before == {"r.csv.parts"}, os.listdir(tmp_path)
    assert proc.stdout.read() == b""  # no 'wrote' line


def _fit_argv(tmp: Path, *extra: str) -> list[str]:
    return ["fit", str(tmp / "v.npy"), "--ref-a", str(tmp / "a.npy"), "--ref-b",
            str(tmp / "b.npy"), "--out", str(tmp / "r.csv"), "--quiet", *extra]  # fmt: skip


def _ctrl_c_in_a_gc_callback() -> None:
    """Ctrl-C as the issue saw it: delivered while a garbage-collector callback runs, where
    Python's own handler would raise KeyboardInterrupt only for gc to print and drop it."""

    def noop() -> None:
        pass

    def callback(phase: str, info: dict) -> None:
        if phase == "start":
            signal.raise_signal(signal.SIGINT)
            noop()  # a Python call: the handler runs here, inside the callback

    gc.callbacks.insert(0, callback)
    try:
        gc.collect()
    finally:
        gc.callbacks.remove(callback)


@pytest.mark.skipif(not IN_MAIN_THREAD, reason="signal handlers need the main thread")
# The MAP run in the default run (the same handler and checks); the NUTS run with `make slow`.
@pytest.mark.parametrize("method", ["map", pytest.param("nuts", marks=pytest.mark.slow)])
def test_ctrl_c_swallowed_by_a_gc_callback_just_before_writing_still_stops(
    method, tmp_path, capsys, monkeypatch
):
    """Deterministic form of the issue: the interrupt arrives in a gc callback after the fit,
    just before the outputs are written. The run stops there with 130 and writes nothing."""
    import bayesmix._writers as writers

    _inputs(tmp_path)
    before = os.listdir(tmp_path)
    real = writers.write_results

    def interrupted(*args, **kwargs):
        _ctrl_c_in_a_gc_callback()
        return real(*args, **kwargs)

    monkeypatch.setattr(writers, "write_results", interrupted)
    previous = signal.getsignal(signal.SIGINT)
    extra = [*NUTS, "--warmup", "1", "--samples", "20", "--idata", str(tmp_path / "p.nc")]
    assert main(_fit_argv(tmp_path, "--report", str(tmp_path / "r.html"),
                          *(extra if method == "nuts" else []))) == 130  # fmt: skip
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("bayesmix: interrupted"), err
    assert "Exception ignored" not in err, err
    assert signal.getsignal(signal.SIGINT) is previous  # the handler of the caller is back
    # No results, report, InferenceData nor hidden folder; the pass stays for --resume.
    assert set(os.listdir(tmp_path)) - set(before) <= {"r.csv.parts"}


@pytest.mark.skipif(not IN_MAIN_THREAD, reason="signal handlers need the main thread")
def test_ctrl_c_between_two_outputs_leaves_neither(tmp_path, capsys, monkeypatch):
    """The results are written, the report is being written: the results go too."""
    import bayesmix._report as report

    _inputs(tmp_path)
    before = os.listdir(tmp_path)

    def interrupted(*args, **kwargs):
        signal.raise_signal(signal.SIGINT)
        raise AssertionError("not reached: the interrupt is raised in the handler")

    monkeypatch.setattr(report, "report", interrupted)
    assert main(_fit_argv(tmp_path, "--report", str(tmp_path / "r.html"))) == 130
    err = capsys.readouterr().err
    assert err.startswith("bayesmix: interrupted: no output was written; ") and "--resume" in err
    # No results, no metadata file, no hidden folder; the statistics stay for --resume.
    assert set(os.listdir(tmp_path)) - set(before) == {"r.csv.parts"}


@pytest.mark.skipif(not IN_MAIN_THREAD, reason="signal handlers need the main thread")
def test_ctrl_c_while_outputs_are_moved_into_place_keeps_them_whole(tmp_path, capsys,
                                                                    monkeypatch):  # fmt: skip
    """Moving the outputs into place is not split by Ctrl-C: they all arrive, then 130."""
    _inputs(tmp_path)
    real = cli._Staged.commit

    def commit(self):
        signal.raise_signal(signal.SIGINT)
        return real(self)

    monkeypatch.setattr(cli._Staged, "commit", commit)
    assert main(_fit_argv(tmp_path, "--report", str(tmp_path / "r.html"))) == 130
    assert capsys.readouterr().err == (
        "bayesmix: interrupted: the outputs were all in place before it\n"
    )
    assert bayesmix.read_results(tmp_path / "r.csv").shape[0] == 30
    assert (tmp_path / "r.html").stat().st_size > 0 and not (tmp_path / "r.csv.parts").exists()
    assert not any(p.name.startswith(".bayesmix-") for p in tmp_path.iterdir())


# --- 4. A run that failed its convergence checks: outputs written, status 3 --------------------


def test_a_broken_nuts_run_writes_its_outputs_and_exits_3(tmp_path, capsys):
    """One warm-up iteration (no adaptation) and 20 draws: the chains disagree (R-hat far
    above 1.1) and most transitions diverge. The outputs are written for inspection, one line
    on stderr says the run failed and what to do, and the status is 3."""
    _inputs(tmp_path)
    argv = _fit_argv(tmp_path, *NUTS, "--warmup", "1", "--samples", "20", "--idata",
                     str(tmp_path / "p.nc"))  # fmt: skip
    err = _one_line(capsys, argv, r"^bayesmix: failed: the NUTS draws failed their convergence "
                    r"checks.*run a longer warm-up", status=3)  # fmt: skip
    assert "R-hat" in err
    assert bayesmix.read_results(tmp_path / "r.csv").shape[0] == 30
    diag = bayesmix.diagnose(bayesmix.read_idata(tmp_path / "p.nc"))
    assert diag.failed and diag.verdict == "warn" and "FAILED: " in str(diag)


def _idata(x: np.ndarray, diverging: np.ndarray | None = None) -> az.InferenceData:
    chains, draws, _ = x.shape
    rng = np.random.default_rng(1)
    stats = {"diverging": np.zeros((chains, draws), bool) if diverging is None else diverging,
             "energy": rng.standard_normal((chains, draws))}  # fmt: skip
    sigma = 0.3 + 0.01 * rng.standard_normal((chains, draws))
    return az.from_dict(posterior={"x": x, "sigma": sigma}, sample_stats=stats,
                        dims={"x": ["frame"]})  # fmt: skip


def test_failed_is_beyond_a_warning():
    """Independent draws pass; a warning alone (a few divergences) is not a failure; a chain
    5 sd away, most draws divergent, or chains that never move are failures, with reasons."""
    rng = np.random.default_rng(0)
    x = 0.5 + 0.05 * rng.standard_normal((4, 200, 50))
    assert not bayesmix.diagnose(_idata(x)).failed
    few = np.zeros((4, 200), bool)
    few[0, :3] = True
    warned = bayesmix.diagnose(_idata(x, few))
    assert warned.verdict == "warn" and not warned.failed and warned.failures == ()
    apart = x.copy()
    apart[0, :, 7] += 0.25
    diag = bayesmix.diagnose(_idata(apart))
    assert diag.failed and re.search(r"R-hat .* \(x\[7\]\) is far from 1", diag.failures[0])
    most = np.ones((4, 200), bool)
    diag = bayesmix.diagnose(_idata(x, most))
    assert diag.failed and any("800 of 800 draws (100%) are divergent" in f
                               for f in diag.failures)  # fmt: skip
    stuck = x.copy()
    stuck[:, :, 3] = 0.5
    diag = bayesmix.diagnose(_idata(stuck))
    assert diag.failed and any("never moved" in f and "x[3]" in f for f in diag.failures)
    sticky = np.repeat(x[:, :2], 100, axis=1)  # each value held 100 draws: ~2 effective a chain
    diag = bayesmix.diagnose(_idata(sticky))
    assert diag.failed and any("bulk ESS" in f for f in diag.failures), diag.failures
