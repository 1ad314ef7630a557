"""The HTML report: every section present, images real PNGs, atomic and no silent overwrite."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pytest
from matplotlib.image import imread

import bayesmix
from bayesmix._report import SECTIONS


@pytest.fixture(scope="module")
def data():
    x = np.r_[np.random.default_rng(0).uniform(0.3, 0.8, 58), -0.2, 1.1]
    sim = bayesmix.simulate(60, shape=(16, 16), noise=0.2, x=x, seed=1)
    sim.frames[5, :4, :4] += 3.0  # one badly fit frame
    return sim


def _check_page(path, n_images):
    page = path.read_text("utf-8")
    for name in SECTIONS:
        assert f"<h2>{name}</h2>" in page, name
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == n_images
    for b64 in images:
        raw = base64.b64decode(b64)
        assert raw[:8] == b"\x89PNG\r\n\x1a\n" and len(raw) > 10_000
        img = imread(io.BytesIO(raw), format="png")
        assert img.shape[0] > 200 and img.shape[1] > 200 and img[..., :3].std() > 0.05
    assert "http://" not in page and "https://" not in page  # self-contained
    return page


def test_report_of_a_map_result(tmp_path, data):
    res = bayesmix.fit_map(data.frames, data.ref_a, data.ref_b)
    out = bayesmix.report(res, tmp_path / "map.html", frames=data.frames, ref_a=data.ref_a,
                          ref_b=data.ref_b)  # fmt: skip
    page = _check_page(out, n_images=2)  # weights and residual image
    # frames 58, 59 lie beyond the bounds; frame 5 carries a patch the model cannot explain
    assert res.at_bound[58] and res.at_bound[59]
    assert f"{int(res.at_bound.sum())} frame(s) with the posterior piled up at a bound" in page
    assert "1 frame(s) badly fit" in page
    with pytest.raises(FileExistsError, match="already exists"):
        bayesmix.report(res, out)
    assert out.stat().st_mode & 0o044  # readable like any file the user writes


def test_report_of_an_inference_data(tmp_path, data):
    idata = bayesmix.sample(data.frames, data.ref_a, data.ref_b, num_chains=2, num_warmup=200,
                            num_samples=200, progress=False)  # fmt: skip
    out = bayesmix.report(idata, tmp_path / "nuts.html", frames=data.frames, ref_a=data.ref_a,
                          ref_b=data.ref_b)  # fmt: skip
    page = _check_page(out, n_images=4)  # weights, traces/ranks, energy, residual
    assert "R-hat max" in page and "ess_bulk" in page


def test_report_rejects_other_objects(tmp_path):
    with pytest.raises(ValueError, match="report needs a MapResult"):
        bayesmix.report({"x": 1}, tmp_path / "r.html")
