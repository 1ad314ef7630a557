"""What bayesmix writes for people to read: the interval's column names (exact, unique, plain
decimals for any prob, read back to the same prob) and the report's path (HTML only, refused
before any work)."""

from __future__ import annotations

import math
import re
from functools import cache

import numpy as np
import pytest

import bayesmix
from bayesmix import _report
from bayesmix._schema import interval_labels, interval_prob, label_quantile, percent
from bayesmix.cli import main

PROBS = [0.5, 0.68, 0.9, 0.95, 0.99, 0.999, 0.9999999, 1e-6]
#: A label: 'q' and a plain decimal, no exponent, no sign.
PLAIN = re.compile(r"q\d+(?:\.\d+)?")


@cache
def _sim():
    return bayesmix.simulate(20, shape=(6, 6), noise=0.1, seed=0)


@cache
def _res():
    sim = _sim()
    return bayesmix.fit_map(sim.frames, sim.ref_a, sim.ref_b)


def _old_label(q: float) -> str:
    """The labels of earlier versions (fine for ordinary probs, coarse for extreme ones)."""
    s = f"{100 * q:g}"
    return "q" + (s if "." in s else s.zfill(2))


@pytest.mark.parametrize("prob", [*PROBS, 0.98, 0.6827, 0.1 + 0.2, math.nextafter(1.0, 0.0), 5e-324])
def test_interval_labels_are_plain_distinct_and_read_back_to_the_prob(prob):
    lo, hi = interval_labels(prob)
    assert PLAIN.fullmatch(lo) and PLAIN.fullmatch(hi), (lo, hi)
    assert lo != hi and hi != "q100" and lo not in ("q0", "q00")
    assert interval_prob(lo, hi) == prob  # exact: no rounding on the way
    # The quantiles computed, to the float resolution of prob (the labels hold its decimal).
    tail = 0.5 * (1.0 - prob)
    assert label_quantile(lo) == pytest.approx(tail, rel=1e-12, abs=2**-53)
    assert label_quantile(hi) == pytest.approx(1.0 - tail, rel=1e-12, abs=2**-53)
    assert label_quantile(lo) < 0.5 < label_quantile(hi) or prob < 1e-15


def test_labels_of_ordinary_probs_are_those_files_have_always_had():
    assert interval_labels(0.9) == ("q05", "q95")
    assert interval_labels(0.95) == ("q2.5", "q97.5")
    assert interval_labels(0.5) == ("q25", "q75")
    assert interval_labels(0.99) == ("q0.5", "q99.5")
    assert interval_labels(0.9999999) == ("q0.000005", "q99.999995")
    assert interval_labels(1e-6) == ("q49.99995", "q50.00005")
    # Every prob of up to 4 decimals keeps the earlier name.
    for k in range(1, 10_000):
        prob = k / 10_000
        tail = 0.5 * (1.0 - prob)
        assert interval_labels(prob) == (_old_label(tail), _old_label(1.0 - tail)), prob


def test_the_labels_are_the_shortest_decimals_of_the_prob():
    # From the shortest decimal of prob (its repr), exactly: never a float's rounding error.
    assert interval_labels(0.1 + 0.2) == ("q34.999999999999998", "q65.000000000000002")
    assert interval_labels(np.float32(0.9)) == interval_labels(float(np.float32(0.9)))
    assert interval_labels(np.float64(0.95)) == ("q2.5", "q97.5")


def test_label_parsing_refuses_other_names():
    assert label_quantile("q2.5") == 0.025 and label_quantile("q05") == 0.05
    for name in ("mean", "q5e-06", "q", "qx", "q-1", "misfit_q"):
        assert label_quantile(name) is None
    with pytest.raises(bayesmix.InputError, match=r"expected two quantile column names .* 'mean'"):
        interval_prob("mean", "q95")


def test_percent_text_is_exact():
    assert [percent(p) for p in (0.9, 0.95, 0.999, 0.9999999, 1e-6, 0.5)] == [
        "90%", "95%", "99.9%", "99.99999%", "0.0001%", "50%",
    ]  # fmt: skip


@pytest.mark.parametrize("prob", PROBS)
def test_results_tables_name_the_interval_by_its_labels(prob):
    df = _res().to_dataframe(prob=prob)
    lo, hi = interval_labels(prob)
    quantiles = [c for c in df.columns if label_quantile(c) is not None]
    assert quantiles == [lo, hi]
    assert np.all(df[lo] < df[hi])
    assert list(df.columns[:5]) == ["x_map", "mean", "sd", lo, hi]


@pytest.mark.parametrize("ext", ["csv", "parquet", "nc"])
def test_an_extreme_prob_reads_back_from_every_format(tmp_path, ext):
    prob = 0.9999999
    path = bayesmix.write_results(_res(), tmp_path / f"r.{ext}", prob=prob)
    df = bayesmix.read_results(path)
    assert ["q0.000005", "q99.999995"] == [c for c in df.columns if label_quantile(c) is not None]
    assert df.attrs["prob"] == prob == interval_prob("q0.000005", "q99.999995")
    back = bayesmix._writers.map_result_from_table(df).to_dataframe(prob)
    np.testing.assert_allclose(back["q99.999995"], df["q99.999995"], rtol=1e-12)


def test_cli_prob_names_the_columns(tmp_path):
    sim = _sim()
    for name, arr in (("f", sim.frames), ("a", sim.ref_a), ("b", sim.ref_b)):
        np.save(tmp_path / f"{name}.npy", arr)
    argv = ["fit", str(tmp_path / "f.npy"), "--ref-a", str(tmp_path / "a.npy"), "--ref-b",
            str(tmp_path / "b.npy"), "--out", str(tmp_path / "r.csv"), "--prob", "0.9999999",
            "--quiet"]  # fmt: skip
    assert main(argv) == 0
    cols = list(bayesmix.read_results(tmp_path / "r.csv").columns)
    assert "q0.000005" in cols and "q99.999995" in cols
    assert not [c for c in cols if "e-" in c or c == "q100"]


def test_simplex_quantiles_group_per_reference_with_underscored_names():
    rng = np.random.default_rng(0)
    refs = rng.uniform(0, 1, (3, 6, 6))
    w = rng.dirichlet([1.0, 1.0, 1.0], 20)
    frames = np.einsum("nk,kij->nij", w, refs) + rng.normal(0, 0.05, (20, 6, 6))
    res = bayesmix.fit_map(frames, *refs, ref_names=("ref_a", "ref_b", "ref_c"))
    for prob in (0.9, 0.9999999):
        ds = res.to_xarray(prob)
        lo, hi = interval_labels(prob)
        assert ds[lo].dims == ("frame", "reference") and ds[hi].dims == ("frame", "reference")
        assert not [v for v in ds.data_vars if str(v).startswith(f"{lo}_")]


@pytest.mark.parametrize("name", ["r.pdf", "r.png", "r", "r.html.txt", "report.HTML.bak"])
def test_report_refuses_a_path_that_is_not_html_before_any_work(tmp_path, monkeypatch, name):
    def no_work(*args, **kwargs):
        raise AssertionError("the path is checked first")

    monkeypatch.setattr(_report, "_View", no_work)
    path = tmp_path / name
    with pytest.raises(bayesmix.InputError, match=r"the report is an HTML file") as err:
        bayesmix.report(_res(), path)
    msg = str(err.value)
    assert f"e.g. '{path.with_suffix('.html')}'" in msg and f"got '{path}'" in msg
    assert not path.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["r.html", "r.htm", "R.HTML", "r.Htm"])
def test_report_accepts_html_suffixes_in_any_case(tmp_path, monkeypatch, name):
    class Reached(Exception):
        pass

    def reached(*args, **kwargs):
        raise Reached

    monkeypatch.setattr(_report, "_View", reached)
    with pytest.raises(Reached):
        bayesmix.report(_res(), tmp_path / name)


def test_report_of_an_extreme_prob_reads_its_columns_and_says_the_prob(tmp_path):
    out = bayesmix.report(_res(), tmp_path / "r.html", prob=0.9999999)
    page = out.read_text("utf-8")
    assert "99.99999% interval" in page and "100% interval" not in page


def test_report_path_of_a_folder_suggests_a_file_in_it():
    with pytest.raises(bayesmix.InputError, match=r"e\.g\. 'report\.html'; got '\.' \(no suffix\)"):
        _report.check_report_path("")
