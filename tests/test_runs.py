"""Resumable runs: a fit killed part-way and resumed writes the same file, byte for byte, as an
uninterrupted one; nothing half-written is taken as finished."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import bayesmix
from bayesmix.cli import main


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """300,000 frames of 8x8 (77 MB): 600 checkpointed chunks of 500 frames."""
    d = tmp_path_factory.mktemp("big")
    assert main(["simulate", str(d), "--frames", "300000", "--shape", "8", "8", "--seed", "3"]) == 0
    return d


def _fit_args(d, out, *extra):
    return ["fit", str(d / "frames.npy"), "--ref-a", str(d / "ref_a.npy"), "--ref-b",
            str(d / "ref_b.npy"), "--out", str(out), "--checkpoint", "500", "--quiet", *extra]  # fmt: skip


def _done(work):
    try:
        return len(json.loads((work / "manifest.json").read_text())["done"])
    except (OSError, ValueError, KeyError):
        return 0


@pytest.mark.parametrize(
    "sig", [pytest.param(signal.SIGKILL, marks=pytest.mark.slow), signal.SIGINT]
)
def test_killed_run_resumes_to_the_same_file(tmp_path, big, sig):
    full = tmp_path / "full.parquet"
    assert main(_fit_args(big, full)) == 0
    assert not (tmp_path / "full.parquet.parts").exists()  # cleaned up after success

    out = tmp_path / "r.parquet"
    work = tmp_path / "r.parquet.parts"
    proc = subprocess.Popen([sys.executable, "-m", "bayesmix.cli", *_fit_args(big, out)],
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while _done(work) < 40 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, "the run finished before it could be interrupted"
    proc.send_signal(sig)
    code = proc.wait(timeout=60)
    assert code == (-9 if sig == signal.SIGKILL else 130), proc.stderr.read()
    done = _done(work)
    assert 40 <= done < 600 and not out.exists()

    # Without --resume the leftover is an error, not silently reused or deleted.
    assert main(_fit_args(big, out)) == 2
    assert _done(work) == done
    # A chunk listed as done but damaged on disk is recomputed, not trusted.
    listed = sorted(json.loads((work / "manifest.json").read_text())["done"])
    (work / listed[3]).write_bytes((work / listed[3]).read_bytes()[:100])
    assert main(_fit_args(big, out, "--resume")) == 0
    assert out.read_bytes() == full.read_bytes()
    assert not work.exists()


def test_resume_refuses_a_work_folder_of_other_inputs(tmp_path, big):
    out = tmp_path / "r.csv"
    work = tmp_path / "r.csv.parts"
    work.mkdir()
    (work / "manifest.json").write_text(json.dumps({"key": "other", "chunk": 500, "done": {}}))
    assert main(_fit_args(big, out, "--resume")) == 2
    assert main(_fit_args(big, out, "--overwrite")) == 0  # --overwrite starts again
    df = bayesmix.read_results(out)
    assert len(df) == 300_000 and not work.exists()
    truth = np.loadtxt(big / "x_true.csv", delimiter=",", skiprows=1)[:, 1]  # header frame,x
    inside = (df["q05"].to_numpy() <= truth) & (truth <= df["q95"].to_numpy())
    assert abs(inside.mean() - 0.9) < 0.005  # 300,000 frames: binomial sd 0.05%
