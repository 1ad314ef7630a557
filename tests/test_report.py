"""The HTML report: the sections that apply and only those, images real PNGs, figures that read
at any N (sorted bands, distributions, density plots), the truth's coverage, misfit flags by
false discovery rate, atomic and no silent overwrite."""

from __future__ import annotations

import base64
import io
import re
import time

import numpy as np
import pytest
from matplotlib.image import imread

import bayesmix
from bayesmix import _report
from bayesmix._likelihood import misfit_qvalues
from bayesmix._report import ALL_SECTIONS, SECTIONS
from bayesmix._stats import FrameStats
from bayesmix._writers import map_result_from_table

#: The figures of "Weights per frame" for two references, by their alt text.
WEIGHT_FIGURES = [
    "frames sorted by estimate, with their intervals",
    "distribution of the estimates over the prior",
    "posterior mean against least squares",
    "posterior sd against posterior mean",
]


@pytest.fixture(scope="module")
def data():
    x = np.r_[np.random.default_rng(0).uniform(0.3, 0.8, 58), -0.2, 1.1]
    sim = bayesmix.simulate(60, shape=(16, 16), noise=0.2, x=x, seed=1)
    sim.frames[5, :4, :4] += 3.0  # one badly fit frame
    return sim


@pytest.fixture(scope="module")
def map_fit(data):
    return bayesmix.fit_map(data.frames, data.ref_a, data.ref_b)


def _headings(page: str) -> list[str]:
    return re.findall(r"<h2>(.*?)</h2>", page)


def _alts(page: str) -> list[str]:
    return re.findall(r'<img alt="([^"]*)" src="data:image/png;base64,', page)


def _section(page: str, name: str) -> str:
    anchor = name.lower().replace(" ", "-")
    match = re.search(rf"<section id='{anchor}'>(.*?)</section>", page, flags=re.S)
    return "" if match is None else match.group(1)


def _check_page(path, headings, alts):
    page = path.read_text("utf-8")
    assert _headings(page) == headings
    assert _alts(page) == alts
    for b64 in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page):
        raw = base64.b64decode(b64)
        assert raw[:8] == b"\x89PNG\r\n\x1a\n" and len(raw) > 10_000
        img = imread(io.BytesIO(raw), format="png")
        assert img.shape[0] > 200 and img.shape[1] > 200 and img[..., :3].std() > 0.05
    assert "http://" not in page and "https://" not in page  # self-contained
    assert "not applicable" not in page.lower()
    return page


def test_report_of_a_map_result_has_only_the_sections_that_apply(tmp_path, data, map_fit):
    res = map_fit
    out = bayesmix.report(res, tmp_path / "map.html", frames=data.frames, ref_a=data.ref_a,
                          ref_b=data.ref_b)  # fmt: skip
    page = _check_page(out, list(SECTIONS), [*WEIGHT_FIGURES, "mean residual image"])
    assert "Trace and rank plots" not in page and "Energy" not in page
    # No plot in input order for independent frames: the frames are sorted by their estimate.
    assert "(not in input order)" in page
    assert "<h2>Sequence</h2>" not in page and "sequences over time" not in page
    # frames 58, 59 lie beyond the bounds; frame 5 carries a patch the model cannot explain
    assert res.at_bound[58] and res.at_bound[59]
    assert f"{int(res.at_bound.sum())} frame(s) with the posterior piled up at a bound" in page
    assert "1 frame(s) badly fit" in page
    with pytest.raises(FileExistsError, match="already exists"):
        bayesmix.report(res, out)
    assert out.stat().st_mode & 0o044  # readable like any file the user writes


def test_the_method_is_named_as_run(tmp_path, map_fit, data):
    """The header and the diagnostics name what ran, as the result records it
    (``MapResult.sigma_method``, kept through a results file): EM by default."""
    page = bayesmix.report(map_fit, tmp_path / "m.html").read_text()
    kind, text = _report._map_method(map_fit)
    assert kind == "MAP by EM" and "sigma by EM" in text
    assert f"&middot; {kind} &middot;" in page and "coordinate ascent" not in page
    joint = bayesmix.fit_map(data.frames, data.ref_a, data.ref_b, sigma_method="joint")
    assert joint.sigma_method == "joint"
    assert _report._map_method(joint)[0] == "MAP by coordinate ascent"
    given = bayesmix.fit_map(data.frames, data.ref_a, data.ref_b, sigma=0.1)
    assert _report._map_method(given)[0] == "MAP given sigma"
    path = bayesmix.write_results(joint, tmp_path / "j.csv")
    back = map_result_from_table(bayesmix.read_results(path))
    assert back.sigma_method == "joint"


def test_badly_fit_frames_are_flagged_by_their_q_value(map_fit, monkeypatch):
    """Flags keep the false discovery rate at 5% over the frames (Benjamini-Hochberg): p = 9e-4
    alone among 60 frames has q = 0.054 and is not flagged; the table shows p and q."""
    v = _report._View(map_fit, 0.9)
    np.testing.assert_array_equal(v.misfit_q, v.table["misfit_q"].to_numpy())
    text = _report._flagged_html(v)
    assert "Benjamini&ndash;Hochberg at 5% false discovery rate over the 60 frames" in text
    assert "<th>misfit p</th>" in text and "<th>misfit q</th>" in text
    v.misfit_p = np.full(60, 0.5)
    v.misfit_p[7] = 9e-4
    v.misfit_q = misfit_qvalues(v.misfit_p)
    assert "0 frame(s) badly fit" in _report._flagged_html(v)
    v.misfit_p[7] = 5e-4  # q = 0.03
    v.misfit_q = misfit_qvalues(v.misfit_p)
    assert "1 frame(s) badly fit" in _report._flagged_html(v)

    # An old results table without misfit_q: the q-values are computed from p.
    from bayesmix import _writers

    table = _writers.results_table
    monkeypatch.setattr(_writers, "results_table",
                        lambda *a, **k: table(*a, **k).drop(columns="misfit_q"))  # fmt: skip
    old = _report._View(map_fit, 0.9)
    np.testing.assert_allclose(old.misfit_q, misfit_qvalues(old.misfit_p))


def test_truth_section_measures_coverage_on_a_demo_like_simulation(tmp_path):
    sim = bayesmix.simulate(400, shape=(16, 16), noise=0.3, seed=5)
    res = bayesmix.fit_map(sim.frames, sim.ref_a, sim.ref_b)
    page = _check_page(bayesmix.report(res, tmp_path / "t.html", truth=sim.x),
                       [SECTIONS[0], "Truth vs estimate", *SECTIONS[1:]],
                       [*WEIGHT_FIGURES, "estimate against truth and coverage"])  # fmt: skip
    lo, hi = res.interval(0.9)
    cover = np.mean((lo <= sim.x) & (sim.x <= hi))
    rmse = np.sqrt(np.mean((res.mean - sim.x) ** 2))
    section = _section(page, "Truth vs estimate")
    assert f"{cover:.2%} (binomial sd {np.sqrt(0.09 / 400):.2%}" in section
    assert f"<td>{rmse:.4g}</td>" in section
    assert "consistent with calibrated intervals" in section  # 400 frames: 90% +/- 3%
    for bad, why in ((sim.x[:10], r"shape \(400,\)"), (np.r_[sim.x[:-1], np.nan], "non-finite"),
                     (["a"] * 400, "array of numbers")):  # fmt: skip
        with pytest.raises(bayesmix.InputError, match=why):
            bayesmix.report(res, tmp_path / "bad.html", truth=bad)
    assert not (tmp_path / "bad.html").exists()


def test_a_temporal_fit_has_the_ribbon_over_time(tmp_path):
    x = bayesmix.simulate_walk(80, 0.02, seed=3)
    sim = bayesmix.simulate(80, shape=(12, 12), noise=0.3, x=x, seed=4)
    res = bayesmix.fit_map(sim.frames, sim.ref_a, sim.ref_b, temporal="random_walk")
    page = bayesmix.report(res, tmp_path / "w.html").read_text()
    assert _headings(page) == [SECTIONS[0], "Sequence", *SECTIONS[1:]]
    assert _alts(page) == [*WEIGHT_FIGURES, "sequences over time"]
    assert "MAP along a random walk (sigma by EM)" in page


def _synthetic_fit(n: int, seed: int = 0):
    """A fit of n frames from their statistics (no pixels): 256 pixels a frame, sigma 0.2."""
    rng = np.random.default_rng(seed)
    x = np.clip(rng.normal(0.55, 0.15, n), 0.0, 1.0)
    dd = np.full(n, 40.0)
    stats = FrameStats(xhat=x + 0.2 / np.sqrt(dd) * rng.standard_normal(n),
                       rss=0.04 * rng.chisquare(255, n), dd=dd,
                       n=np.full(n, 256, np.int64))  # fmt: skip
    return bayesmix.fit_map_stats(stats), x


def test_report_of_100k_frames_is_fast_small_and_draws_a_bounded_number_of_marks(
    tmp_path, monkeypatch
):
    """10^5 frames. What is drawn is capped independently of N: a band through at most
    _BAND_POINTS ranks, scatter plots of at most _MAX_SCATTER dots, else hexagons on a fixed
    grid. So every PNG is a fixed-size figure of bounded content (< 200 KB each), and the page
    of 5 figures plus tables of at most 50 rows stays under 1 MB (measured about 0.3 MB at both
    10^5 and 10^6 frames). The time bound is generous for a loaded 2-core machine (measured
    about 3 s, of which about 1.5 s is the results table)."""
    res, x = _synthetic_fit(100_000)
    figures = []

    def keep(*args):
        fig = make(*args)
        figures.append(fig)
        return fig

    make = _report._figure
    monkeypatch.setattr(_report, "_figure", keep)
    t0 = time.perf_counter()
    out = bayesmix.report(res, tmp_path / "big.html", truth=x)
    seconds = time.perf_counter() - t0
    page = out.read_text()
    assert seconds < 30, f"report of 10^5 frames took {seconds:.1f} s"
    assert out.stat().st_size < 1_000_000
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 5 and max(len(b) * 3 // 4 for b in images) < 200_000
    assert "frames as a 2-D histogram" in page and "Drawn through 1000 evenly spaced" in page
    from matplotlib.collections import Collection
    from matplotlib.lines import Line2D

    most = max(_report._MAX_SCATTER, 2 * (_report._HEX_GRID + 1) ** 2)
    for fig in figures:
        for line in fig.findobj(Line2D):
            assert len(line.get_xdata()) <= _report._BAND_POINTS
        for coll in fig.findobj(Collection):
            assert len(coll.get_offsets()) <= most
            assert sum(len(p.vertices) for p in coll.get_paths()) <= 2 * _report._BAND_POINTS + 8


def test_report_of_an_inference_data(tmp_path, data):
    idata = bayesmix.sample(data.frames, data.ref_a, data.ref_b, num_chains=2, num_warmup=200,
                            num_samples=200, progress=False)  # fmt: skip
    out = bayesmix.report(idata, tmp_path / "nuts.html", frames=data.frames, ref_a=data.ref_a,
                          ref_b=data.ref_b)  # fmt: skip
    names = [n for n in ALL_SECTIONS if n in (*SECTIONS, "Trace and rank plots", "Energy")]
    page = _check_page(out, names, [*WEIGHT_FIGURES, "trace and rank plots", "energy plot",
                                    "mean residual image"])  # fmt: skip
    assert "&middot; NUTS, 2 chains x 200 draws &middot;" in page
    assert "R-hat max" in page and "ess_bulk" in page and "bayesmix.diagnose" in page


def test_report_rejects_other_objects(tmp_path):
    with pytest.raises(ValueError, match="report needs a MapResult"):
        bayesmix.report({"x": 1}, tmp_path / "r.html")
