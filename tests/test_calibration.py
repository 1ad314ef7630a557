"""The calibration suite (benchmarks/calibrate.py) runs end to end: a slow smoke test.

The full run is ``make calibrate``; this runs its ``--quick`` form in a subprocess (as a user
would) and checks its outputs: exit status 0, a real PNG per configuration, a summary that lists
every configuration with a verdict, and coverage of every inference path and prior.
"""

from __future__ import annotations

import csv
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "calibrate.py"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _load_script():
    spec = importlib.util.spec_from_file_location("bayesmix_calibrate", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module while being built
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_calibration_quick_run(tmp_path):
    cal = _load_script()
    configs = cal.configurations(quick=True)
    names = [c.name for c in configs]
    out = tmp_path / "calibration"

    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]

    # One real PNG per configuration, of a size only a drawn figure has.
    for name in names:
        png = out / f"{name}.png"
        assert png.is_file(), name
        data = png.read_bytes()
        assert data[:8] == PNG_MAGIC, name
        assert len(data) > 5000, (name, len(data))

    # The summary lists every configuration (and every quantity of it) with a verdict.
    with open(out / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {(r["configuration"], r["quantity"]) for r in rows} == {
        (c.name, q) for c in configs for q in c.quantities
    }
    for r in rows:
        assert r["verdict"] in {"PASS", "FAIL"}, r
        assert r["as_expected"] == "yes", r
        assert 0.0 <= float(r["p"]) <= 1.0, r
    markdown = (out / "summary.md").read_text()
    printed = proc.stdout
    for name in names:
        assert f"| {name} |" in markdown, name
        assert name in printed, name
    assert (out / "ranks.npz").is_file()

    # Every path and prior the toolkit offers is covered: NUTS and both fast-path sigma methods,
    # each with truncated-normal (default and other bounds), uniform (idem) and Beta priors.
    from bayesmix.priors import Beta, TruncatedNormal, Uniform

    wanted = {
        TruncatedNormal(),
        TruncatedNormal(0.5, 0.2, 0.1, 0.9),
        Uniform(0.0, 1.0),
        Uniform(0.2, 0.8),
        Beta(2.0, 3.0),
        Beta(1.0, 1.0),
    }
    groups = {
        "nuts": {c.prior for c in configs if c.path == "nuts"},
        "fast marginal": {
            c.prior for c in configs if c.path == "fast" and c.sigma_method == "marginal"
        },
        "fast joint": {c.prior for c in configs if c.path == "fast" and c.sigma_method == "joint"},
    }
    for group, covered in groups.items():
        assert wanted <= covered, (group, wanted - covered)
    assert all(c.sigma_prior is not None for c in configs if c.path == "nuts")  # proper priors
