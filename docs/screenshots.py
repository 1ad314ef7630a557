"""Screenshots of the HTML report for docs/report.md, taken in headless Chromium.

Run from the repository: ``.venv/bin/python docs/screenshots.py``. It builds three reports
(MAP on the demo's simulation, a small NUTS run, the maps of a spectrum image: the STXM data in
``../shared/realdata`` when present beside the repository, else a simulated spectrum image)
and saves ``docs/images/report-map.png``, ``report-nuts.png`` and ``report-maps.png``: the top
of each page (the NUTS one from its diagnostics), each under 400 KB.

Chromium is driven by the CDP client of the browser test (``tests/test_browser.py``); it needs
the Debian ``chromium`` package (``.ci/ensure-chromium`` installs it).
"""

from __future__ import annotations

import base64
import json
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

import bayesmix

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "docs" / "images"
REALDATA = ROOT.parent / "shared" / "realdata" / "stxm_fe_l_edge.npz"
TOP = 1600  # CSS pixels of the page kept in each screenshot
MAX_BYTES = 400_000

sys.path.insert(0, str(ROOT / "tests"))
from test_browser import WIDTH, Browser, _chromium  # noqa: E402


def map_report(out: Path) -> Path:
    """``bayesmix demo``'s fit: 2000 frames of 64 x 64 pixels, noise 0.3, with the truth."""
    sim = bayesmix.simulate(2000, shape=(64, 64), noise=0.3, seed=0)
    res = bayesmix.fit_map(sim.frames, sim.ref_a, sim.ref_b)
    return bayesmix.report(res, out / "map.html", frames=sim.frames, ref_a=sim.ref_a,
                           ref_b=sim.ref_b, truth=sim.x, title="bayesmix demo",
                           overwrite=True)  # fmt: skip


def nuts_report(out: Path) -> Path:
    """NUTS on 200 frames of 32 x 32 pixels: 4 chains x 500 draws."""
    sim = bayesmix.simulate(200, shape=(32, 32), noise=0.3, seed=1)
    idata = bayesmix.sample(sim.frames, sim.ref_a, sim.ref_b, num_chains=4, num_warmup=500,
                            num_samples=500, progress=False)  # fmt: skip
    return bayesmix.report(idata, out / "nuts.html", frames=sim.frames, ref_a=sim.ref_a,
                           ref_b=sim.ref_b, title="bayesmix NUTS run",
                           overwrite=True)  # fmt: skip


def _simulated_cube(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 60 x 80 spectrum image of 123 channels: a smooth weight field, particles of varying
    amount (gain) on a flat background, like the STXM data."""
    ref_a, ref_b = bayesmix.sample_references((123,))
    yy, xx = np.mgrid[0:60, 0:80]
    x = 0.5 + 0.35 * np.sin(xx / 13.0) * np.cos(yy / 11.0)
    g = np.exp(-(((xx - 40) / 22.0) ** 2 + ((yy - 30) / 16.0) ** 2)) * 1.5
    spectra = g[..., None] * (x[..., None] * ref_a + (1 - x[..., None]) * ref_b) + 0.05
    cube = np.moveaxis(spectra, -1, 0) + 0.02 * rng.standard_normal((123, 60, 80))
    return cube, ref_a, ref_b


def maps_report(out: Path) -> Path:
    """A spectrum image with a linear background and a gain: the STXM Fe L-edge data when
    present, else a simulated one."""
    if REALDATA.is_file():
        with np.load(REALDATA, allow_pickle=False) as z:
            cube = -np.log(z["transmitted"] / z["i0"][:, None, None])
            ref_a, ref_b = z["ref_fe3_oxidized"], z["ref_fe2_reduced"]
        title = "STXM Fe L-edge spectrum image (Fe3+ fraction)"
    else:
        cube, ref_a, ref_b = _simulated_cube(np.random.default_rng(0))
        title = "simulated spectrum image"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # iron-poor pixels: prior-only, said so
        res = bayesmix.fit_map(cube, ref_a, ref_b, spectral_axis=0, background="linear",
                               gain=True)  # fmt: skip
    return bayesmix.report(res, out / "maps.html", title=title, overwrite=True)


def screenshot(browser: Browser, page: Path, start: str | None = None) -> bytes:
    """A PNG of ``TOP`` CSS pixels of ``page`` from the top (or from the section ``start``),
    scaled down until it is under ``MAX_BYTES``."""
    target = browser.send("Target.createTarget", url="about:blank")["targetId"]
    session = browser.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
    try:
        browser.send("Page.enable", session)
        browser.send("Emulation.setDeviceMetricsOverride", session, width=WIDTH, height=900,
                     deviceScaleFactor=1, mobile=False)  # fmt: skip
        since = len(browser.events)
        browser.send("Page.navigate", session, url=page.as_uri())
        browser.wait_for("Page.loadEventFired", session, since)
        where = f"document.getElementById({json.dumps(start)}).offsetTop" if start else "0"
        facts: dict[str, Any] = json.loads(browser.send(
            "Runtime.evaluate", session, returnByValue=True,
            expression=f"JSON.stringify({{y: {where}, h: document.documentElement.scrollHeight}})",
        )["result"]["value"])  # fmt: skip
        y = max(int(facts["y"]) - 8, 0)
        height = min(TOP, int(facts["h"]) - y)
        for scale in (1.0, 0.85, 0.7, 0.6, 0.5):
            shot = browser.send("Page.captureScreenshot", session, format="png",
                                captureBeyondViewport=True,
                                clip={"x": 0, "y": y, "width": WIDTH, "height": height,
                                      "scale": scale})  # fmt: skip
            data = base64.b64decode(shot["data"])
            if len(data) < MAX_BYTES:
                return data
        raise RuntimeError(f"the screenshot of {page.name} stays above {MAX_BYTES} bytes")
    finally:
        browser.send("Target.closeTarget", targetId=target)


def main() -> int:
    exe = _chromium()
    if exe is None:
        print("Chromium not found: install Debian's chromium package (.ci/ensure-chromium)")
        return 1
    IMAGES.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        pages = [("report-map.png", map_report(work), None),
                 ("report-nuts.png", nuts_report(work), "diagnostics"),
                 ("report-maps.png", maps_report(work), None)]  # fmt: skip
        browser = Browser(exe, work)
        try:
            for name, page, start in pages:
                data = screenshot(browser, page, start)
                (IMAGES / name).write_bytes(data)
                print(f"wrote {IMAGES / name} ({len(data) / 1000:.0f} KB)")
        finally:
            browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
