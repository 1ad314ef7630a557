"""The HTML report: the sections that apply and only those, images real PNGs, figures that read
at any N (sorted bands, distributions, density plots), the truth's coverage, misfit flags by
false discovery rate, atomic and no silent overwrite."""

from __future__ import annotations

import base64
import html
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


# --- Learned priors (prior="learn") and point masses on the pure phases -------------------------


@pytest.fixture(scope="module")
def pure_sim():
    """120 small frames whose weights are pure A (20%), pure B (10%) or a truncated normal."""
    from bayesmix.priors import PointMassMixture, TruncatedNormal

    prior = PointMassMixture((0.2, 0.1), TruncatedNormal(0.4, 0.2))
    x = prior.sample(np.random.default_rng(0), 120)
    return bayesmix.simulate(120, shape=(8, 8), noise=0.3, x=x, seed=1)


@pytest.fixture(scope="module")
def learned_tn(map_fit):
    """The module's fit as if its truncated normal had been learned (prior='learn'): the report
    reads ``population``; a real learned fit is ``learned_pm`` (one compilation, not two)."""
    import dataclasses

    from bayesmix._population import PopulationFit

    prior = map_fit.prior
    mean, sd = _report._moments(_report._prior_parts(prior, prior.bounds))
    params = {"loc": prior.loc, "mean": mean, "scale": prior.scale, "sd": sd}
    sds = {"loc": 0.012, "mean": 0.0061, "scale": 0.0094, "sd": 0.0047}
    pop = PopulationFit("truncnormal", params, sds, np.zeros(2), np.eye(2), -1.0, 5, True)
    return dataclasses.replace(map_fit, population=pop)


@pytest.fixture(scope="module")
def learned_pm(pure_sim):
    from bayesmix.priors import learn

    return bayesmix.fit_map(pure_sim.frames, pure_sim.ref_a, pure_sim.ref_b,
                            prior=learn("point_mass"))  # fmt: skip


def _caption(page: str, alt: str) -> str:
    """The caption of the figure whose alt text is ``alt``."""
    alt = re.escape(html.escape(alt))
    match = re.search(rf'<img alt="{alt}"[^>]*><figcaption>(.*?)</figcaption>', page, flags=re.S)
    assert match, f"no figure {alt!r}"
    return match.group(1)


def _keep_figures(monkeypatch) -> list:
    """Every figure the report draws, to read its legends and labels."""
    figures, make = [], _report._figure

    def keep(*args):
        figures.append(make(*args))
        return figures[-1]

    monkeypatch.setattr(_report, "_figure", keep)
    return figures


def _texts(figures) -> list[str]:
    from matplotlib.text import Text

    return [t.get_text() for fig in figures for t in fig.findobj(Text)]


def _hyper(res) -> list[str]:
    """Each learned hyperparameter as the captions write it."""
    pop = res.population
    return [f"{k} = {v:.3g} ± {pop.sd[k]:.2g}" for k, v in pop.params.items()]


def test_a_learned_prior_is_drawn_with_its_hyperparameters(tmp_path, learned_tn, map_fit,
                                                          monkeypatch):  # fmt: skip
    """prior='learn': the curve is labelled "learned prior", and the caption names the family,
    every hyperparameter with its sd, and what it is (the frames' population, by maximum
    marginal likelihood). A fixed prior keeps its wording."""
    res = learned_tn
    assert res.population is not None and res.population.family == "truncnormal"
    figures = _keep_figures(monkeypatch)
    page = bayesmix.report(res, tmp_path / "learned.html").read_text("utf-8")
    caption = _caption(page, "distribution of the estimates over the prior")
    assert "learned prior" in caption and "a truncated normal, learned from the 60 frames" in caption
    assert "maximum marginal likelihood" in caption and "population the frames' weights" in caption
    for words in _hyper(res):
        assert words in caption and words in _section(page, "Summary")
    texts = _texts(figures)
    assert "learned prior" in texts and "The learned prior over the histogram of estimates" in texts

    fixed = _report._distribution_fig(_report._View(map_fit, 0.9))
    caption = _caption(fixed, "distribution of the estimates over the prior")
    assert "learned" not in caption and "over the prior's density (TruncatedNormal(" in caption


def test_point_masses_are_drawn_as_spikes_with_their_probabilities(tmp_path, learned_pm,
                                                                   pure_sim, monkeypatch):  # fmt: skip
    """A PointMassMixture: the continuous part's density times its probability, and each atom
    a spike of its probability (right axis) with its value written beside it; the frames with
    the truth at a bound are counted; the intervals' text says when to use the HDI."""
    res = learned_pm
    p_a, p_b = res.prior.atoms
    figures = _keep_figures(monkeypatch)
    page = _check_page(bayesmix.report(res, tmp_path / "pm.html", truth=pure_sim.x),
                       [SECTIONS[0], "Truth vs estimate", *SECTIONS[1:]],
                       [*WEIGHT_FIGURES, "estimate against truth and coverage"])  # fmt: skip
    caption = _caption(page, "distribution of the estimates over the prior")
    assert f"P(x = 1) = {p_a:.3g} (pure A), P(x = 0) = {p_b:.3g} (pure B)" in caption
    assert f"1 &minus; &Sigma; atoms = {1 - p_a - p_b:.3g}" in caption
    assert "probabilities, not densities" in caption and "right axis" in caption
    for words in _hyper(res):
        assert words in caption
    texts = _texts(figures)
    assert f"P(x = 1) = {p_a:.3g}" in texts and "probability of a pure phase" in texts
    pure = int(np.sum((pure_sim.x == 0) | (pure_sim.x == 1)))
    assert f"{pure} frame(s) have a true weight exactly at a bound" in page
    band = _caption(page, "frames sorted by estimate, with their intervals")
    assert "equal-tailed" in band and 'res.interval(0.9, kind="hdi")' in band
    assert "res.prob_near_bound(tol)" in band


def test_point_masses_of_three_references(monkeypatch):
    """K = 3: each panel draws its reference's marginal, a spike at 1 (its own pure phase) and
    at 0 (the others' sum), and the caption lists every pure phase's probability. The figures
    are drawn from the numbers a view holds (a learned K = 3 fit takes seconds to compile;
    ``test_simplex`` and ``test_learn*`` fit them)."""
    from types import SimpleNamespace

    from bayesmix.priors import Dirichlet, PointMassMixture

    prior = PointMassMixture((0.2, 0.1, 0.3), Dirichlet(1.0))
    mean = prior.sample(np.random.default_rng(2), 90)
    learned = _report._Learned("point_mass", {f"p_pure_{k}": (p, 0.03)
                                              for k, p in enumerate(prior.atoms)}, _report._MML)
    v = SimpleNamespace(names=("fe2", "fe3", "oxide"), center=mean, lo=np.clip(mean - 0.1, 0, 1),
                        hi=np.clip(mean + 0.1, 0, 1), prior_obj=prior, prior=repr(prior),
                        bounds=(0.0, 1.0), learned=learned, prior_draws=[], idata=None)  # fmt: skip
    figures = _keep_figures(monkeypatch)
    page = _report._simplex_weights_html(v, 0.9)
    caption = _caption(page, "distribution of each reference's estimates over the prior")
    assert "The pure phases' probabilities: fe2 0.2, fe3 0.1, oxide 0.3." in caption
    assert "learned prior" in caption and "p_pure_0 = 0.2 ± 0.03" in caption
    assert "1 &minus; &Sigma; atoms = 0.4" in caption
    texts = _texts(figures)
    for own, others in ((0.2, 0.4), (0.1, 0.5), (0.3, 0.3)):
        assert f"P(x = 1) = {own:.3g}" in texts and f"P(x = 0) = {others:.3g}" in texts
    parts = _report._prior_parts(prior, (0.0, 1.0), 1)
    np.testing.assert_allclose(parts.atoms, [(1.0, 0.1), (0.0, 0.2 + 0.3)], rtol=1e-15)


def test_a_report_of_a_results_file_keeps_the_learned_prior(tmp_path, learned_pm):
    """The file's metadata (prior_learned, prior_<name>, prior_<name>_sd) is the learned prior's
    record: the report of the table read back says so, with the same numbers."""
    path = bayesmix.write_results(learned_pm, tmp_path / "pm.csv")
    table = bayesmix.read_results(path)
    assert table.attrs["prior_learned"] == "point_mass"
    page = bayesmix.report(table, tmp_path / "file.html").read_text("utf-8")
    caption = _caption(page, "distribution of the estimates over the prior")
    assert "learned prior" in caption and "maximum marginal likelihood" in caption
    for words in _hyper(learned_pm):
        assert words in caption
    with pytest.raises(bayesmix.InputError, match="report needs a MapResult"):
        bayesmix.report([1, 2], tmp_path / "no.html")


def test_prior_moments_count_the_point_masses(learned_pm):
    """The mean and sd of a PointMassMixture (the red lines of the pull and sd plots) include
    its atoms: against the exact moments (scipy's truncated normal mixed with the atoms) and
    against 200,000 draws of the prior (within 4 Monte Carlo sds)."""
    from scipy import stats

    from bayesmix.priors import Dirichlet, PointMassMixture, TruncatedNormal

    def exact(prior):
        c = prior.continuous
        tn = stats.truncnorm((c.low - c.loc) / c.scale, (c.high - c.loc) / c.scale, c.loc,
                             c.scale)  # fmt: skip
        # Pure A is x = 1 (adds p_A to both moments); pure B is x = 0 (adds nothing).
        pa, w = prior.atoms[0], prior.continuous_weight
        mean = w * tn.mean() + pa
        second = w * (tn.var() + tn.mean() ** 2) + pa
        return mean, np.sqrt(second - mean**2)

    def close(got, draws):
        """Within 4 Monte Carlo sds of the draws' mean and sd (the sd's by the delta method,
        from the fourth central moment)."""
        d = draws - draws.mean()
        var, n = d.var(), d.size
        se_mean = np.sqrt(var / n)
        se_sd = np.sqrt((np.mean(d**4) - var**2) / (4.0 * var * n))
        assert abs(got[0] - draws.mean()) < 4 * se_mean
        assert abs(got[1] - np.sqrt(var)) < 4 * se_sd

    rng = np.random.default_rng(3)
    for prior in (PointMassMixture((0.2, 0.1), TruncatedNormal(0.4, 0.2)),
                  PointMassMixture((0.05, 0.6), TruncatedNormal(0.8, 0.5)), learned_pm.prior):  # fmt: skip
        got = _report._moments(_report._prior_parts(prior, (0.0, 1.0)))
        np.testing.assert_allclose(got, exact(prior), atol=2e-5)
        close(got, prior.sample(rng, 200_000))
    v = _report._View(learned_pm, 0.9)
    np.testing.assert_allclose(_report._prior_moments(v), exact(learned_pm.prior), atol=2e-5)
    # K = 3: each weight's marginal, atoms at 1 (its phase) and 0 (the others'), by sampling.
    prior = PointMassMixture((0.2, 0.1, 0.3), Dirichlet(1.0))
    draws = prior.sample(rng, 200_000)
    for k in range(3):
        close(_report._moments(_report._prior_parts(prior, (0.0, 1.0), k)), draws[:, k])
