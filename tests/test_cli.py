"""The command line: the demo end to end, and user errors as one line with exit status 2."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd

from bayesmix.cli import main


def _run(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "bayesmix.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_demo_writes_results_that_recover_the_truth(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "d"), "--frames", "600", "--size", "32"]) == 0
    out = capsys.readouterr().out
    assert "90% interval" in out and "results.csv" in out
    df = pd.read_csv(tmp_path / "d" / "results.csv", index_col="frame")
    assert len(df) == 600
    inside = (df["q05"] <= df["x_true"]) & (df["x_true"] <= df["q95"])
    # 600 frames: binomial sd of the coverage is 1.2%, so 90% +/- 5% is a 4 sd band.
    assert 0.85 <= inside.mean() <= 0.95
    assert np.all((df["x_map"] >= 0) & (df["x_map"] <= 1))


def test_demo_refuses_to_overwrite_and_errors_are_one_line(tmp_path):
    first = _run("demo", "--out", "d", "--frames", "50", "--size", "8", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    again = _run("demo", "--out", "d", "--frames", "50", "--size", "8", cwd=tmp_path)
    assert again.returncode == 2
    assert again.stderr.strip().count("\n") == 0 and "Traceback" not in again.stderr
    assert "already exists; pass --overwrite" in again.stderr
    forced = _run(
        "demo", "--out", "d", "--frames", "50", "--size", "8", "--overwrite", cwd=tmp_path
    )
    assert forced.returncode == 0, forced.stderr


def test_bad_argument_exits_2(tmp_path):
    bad = _run("demo", "--frames", "zero", cwd=tmp_path)
    assert bad.returncode == 2 and "expected a positive integer" in bad.stderr
    noise = _run("demo", "--noise", "-1", cwd=tmp_path)
    assert noise.returncode == 2 and noise.stderr.startswith("bayesmix: error: --noise")
