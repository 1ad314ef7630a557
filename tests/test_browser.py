"""The HTML report in a real browser: headless Chromium loads it without console errors, every
image decodes, and the rendered page is not blank.

Chromium is driven over the Chrome DevTools Protocol on a pipe (``--remote-debugging-pipe``:
NUL-separated JSON on file descriptors 3 and 4), so the test needs only the Debian ``chromium``
package (``.ci/ensure-chromium`` installs it on CI) and the standard library: no driver binary
whose version must match the browser, no browser download, no websocket client.
"""

from __future__ import annotations

import base64
import fcntl
import io
import json
import os
import queue
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import NoReturn

import numpy as np
import pytest
from matplotlib.image import imread

import bayesmix
from bayesmix._report import ALL_SECTIONS, SECTIONS

WIDTH, HEIGHT = 1200, 900  # CSS pixels of the viewport; screenshots are taken at scale 1
TIMEOUT = 60.0  # seconds for any one browser round trip (a loaded 2-core machine is slow)


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


class Browser:
    """Headless Chromium and a minimal CDP client over its debugging pipe."""

    def __init__(self, exe: str, workdir: Path) -> None:
        flags = [
            "--headless",
            "--remote-debugging-pipe",
            f"--user-data-dir={workdir / 'profile'}",
            f"--window-size={WIDTH},{HEIGHT}",
            "--no-sandbox",  # CI runs as root; the page is our own file
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--mute-audio",
            "--force-color-profile=srgb",
            "about:blank",
        ]
        # The browser reads commands on its fd 3 and writes replies and events on its fd 4.
        # posix_spawn maps the pipes there (fds moved above 9 first, so no mapping clobbers
        # another) with no Python code running in the child.
        to_chrome, self._cmd = os.pipe()
        self._out, from_chrome = os.pipe()
        ends = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (to_chrome, from_chrome)]
        for fd in (to_chrome, from_chrome):
            os.close(fd)
        self.log = workdir / "chromium-stderr.txt"
        self.pid = os.posix_spawn(
            exe,
            [exe, *flags],
            os.environ,
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_OPEN, 1, str(self.log), os.O_WRONLY | os.O_CREAT, 0o644),
                (os.POSIX_SPAWN_DUP2, 1, 2),
                (os.POSIX_SPAWN_DUP2, ends[0], 3),
                (os.POSIX_SPAWN_DUP2, ends[1], 4),
            ],
        )
        for fd in ends:
            os.close(fd)
        self._inbox: queue.Queue = queue.Queue()
        self._next_id = 0
        self.events: list[dict] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        buf = b""
        with open(self._out, "rb", buffering=0) as pipe:
            while chunk := pipe.read(1 << 20):
                buf += chunk
                *messages, buf = buf.split(b"\0")
                for m in messages:
                    self._inbox.put(json.loads(m))
        self._inbox.put(None)  # the browser closed its end

    def _fail(self, why: str, what: str) -> NoReturn:
        tail = self.log.read_text("utf-8", "replace")[-2000:]
        raise AssertionError(f"Chromium {why} during {what}; its stderr ends:\n{tail}")

    def _next(self, deadline: float, what: str) -> dict:
        try:
            msg = self._inbox.get(timeout=max(deadline - time.monotonic(), 0.01))
        except queue.Empty:
            self._fail(f"gave no answer in {TIMEOUT:.0f} s", what)
        if msg is None:
            self._fail("exited", what)
        return msg

    def send(self, method: str, session: str | None = None, **params) -> dict:
        self._next_id += 1
        msg = {"id": self._next_id, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        data = json.dumps(msg).encode() + b"\0"
        try:
            while data:
                data = data[os.write(self._cmd, data) :]
        except BrokenPipeError:
            self._fail("exited", method)
        deadline = time.monotonic() + TIMEOUT
        while True:
            reply = self._next(deadline, method)
            if reply.get("id") != self._next_id:
                self.events.append(reply)
                continue
            assert "error" not in reply, f"{method}: {reply['error']}"
            return reply["result"]

    def wait_for(self, method: str, session: str, since: int) -> dict:
        """The first event ``method`` of ``session`` from ``self.events[since]`` on."""
        for event in self.events[since:]:
            if event["method"] == method and event.get("sessionId") == session:
                return event
        deadline = time.monotonic() + TIMEOUT
        while True:
            event = self._next(deadline, method)
            self.events.append(event)
            if event.get("method") == method and event.get("sessionId") == session:
                return event

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except (AssertionError, OSError):
            pass
        deadline = time.monotonic() + 10
        while os.waitpid(self.pid, os.WNOHANG) == (0, 0):
            if time.monotonic() > deadline:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
                break
            time.sleep(0.05)
        os.close(self._cmd)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    exe = _chromium()
    if exe is None:
        pytest.skip(
            "Chromium not found (install Debian's chromium package: .ci/ensure-chromium does "
            "it as root, and `make test` runs it)"
        )
    b = Browser(exe, tmp_path_factory.mktemp("chromium"))
    yield b
    b.close()


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """The three kinds of report, each with its expected headings and number of images: MAP
    (weights figures, residual), NUTS (also chains and energy), and the maps of a spectrum
    image (a map first)."""
    out = tmp_path_factory.mktemp("reports")
    sim = bayesmix.simulate(60, shape=(16, 16), noise=0.2, seed=1)
    data = {"frames": sim.frames, "ref_a": sim.ref_a, "ref_b": sim.ref_b}
    res = bayesmix.fit_map(sim.frames, sim.ref_a, sim.ref_b)
    idata = bayesmix.sample(sim.frames, sim.ref_a, sim.ref_b, num_chains=2, num_warmup=100,
                            num_samples=100, progress=False)  # fmt: skip
    # A spectrum image: 8 x 10 pixels, each a spectrum of 40 channels.
    spec = bayesmix.simulate(80, shape=(40,), noise=0.02, seed=2)
    cube = spec.frames.T.reshape(40, 8, 10)
    image = bayesmix.fit_map(cube, spec.ref_a, spec.ref_b, spectral_axis=0)
    nuts = [n for n in ALL_SECTIONS if n in (*SECTIONS, "Trace and rank plots", "Energy")]
    return {
        "map": (bayesmix.report(res, out / "map.html", **data), list(SECTIONS), 5),
        "nuts": (bayesmix.report(idata, out / "nuts.html", **data), nuts, 7),
        "maps": (bayesmix.report(image, out / "maps.html", frames=spec.frames, ref_a=spec.ref_a,
                                 ref_b=spec.ref_b), ["Maps", *SECTIONS], 6),
    }  # fmt: skip


PAGE_FACTS = """JSON.stringify({
  url: location.href,
  images: Array.from(document.images, i => {
    const r = i.getBoundingClientRect();
    return {complete: i.complete, w: i.naturalWidth, h: i.naturalHeight,
            x: r.left + scrollX, y: r.top + scrollY, rw: r.width, rh: r.height};
  }),
  headings: Array.from(document.querySelectorAll("h2"), h => h.textContent),
  text: document.body.innerText,
  width: document.documentElement.scrollWidth,
  height: document.documentElement.scrollHeight,
})"""


def _problems(events: list[dict], session: str) -> list[str]:
    """Console errors, uncaught exceptions, failed loads, and any request leaving the file."""
    out = []
    for e in events:
        if e.get("sessionId") != session:
            continue
        p = e.get("params", {})
        match e["method"]:
            case "Runtime.exceptionThrown":
                d = p["exceptionDetails"]
                out.append(f"JS exception: {d.get('exception', {}).get('description', d['text'])}")
            case "Runtime.consoleAPICalled" if p["type"] in ("error", "assert"):
                args = " ".join(str(a.get("value", a.get("description"))) for a in p["args"])
                out.append(f"console.{p['type']}: {args}")
            case "Log.entryAdded" if p["entry"]["level"] == "error":
                entry = p["entry"]
                out.append(f"{entry['source']} error: {entry['text']} {entry.get('url', '')}")
            case "Network.loadingFailed":
                out.append(f"load failed: {p['errorText']} (request {p['requestId']})")
            case "Network.requestWillBeSent" if not p["request"]["url"].startswith(
                ("file:", "data:")
            ):
                out.append(f"external request (report not self-contained): {p['request']['url']}")
    return out


@pytest.mark.parametrize("kind", ["map", "nuts", "maps"])
def test_report_renders_in_chromium(browser, reports, kind):
    path, headings, n_images = reports[kind]
    target = browser.send("Target.createTarget", url="about:blank")["targetId"]
    session = browser.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
    try:
        for domain in ("Runtime", "Log", "Network", "Page"):
            browser.send(f"{domain}.enable", session)
        browser.send("Emulation.setDeviceMetricsOverride", session, width=WIDTH, height=HEIGHT,
                     deviceScaleFactor=1, mobile=False)  # fmt: skip
        since = len(browser.events)  # not a load event of about:blank
        nav = browser.send("Page.navigate", session, url=path.as_uri())
        assert "errorText" not in nav, nav
        browser.wait_for("Page.loadEventFired", session, since)
        facts = json.loads(
            browser.send("Runtime.evaluate", session, expression=PAGE_FACTS, returnByValue=True)[
                "result"
            ]["value"]
        )
        shot = browser.send("Page.captureScreenshot", session, format="png",
                            captureBeyondViewport=True,
                            clip={"x": 0, "y": 0, "width": WIDTH, "height": facts["height"],
                                  "scale": 1})  # fmt: skip
        problems = _problems(browser.events, session)
    finally:
        browser.send("Target.closeTarget", targetId=target)

    assert problems == [], "\n".join(problems)
    assert facts["url"] == path.as_uri()
    assert facts["headings"] == headings
    assert "not applicable" not in facts["text"].lower()
    assert facts["width"] <= WIDTH, f"page is {facts['width']} px wide: horizontal scrolling"
    images = facts["images"]
    assert len(images) == n_images
    for i, img in enumerate(images):
        assert img["complete"] and img["w"] > 200 and img["h"] > 200, f"image {i} broken: {img}"
        assert 200 < img["rw"] <= WIDTH and img["rh"] > 100, f"image {i} laid out badly: {img}"

    page = imread(io.BytesIO(base64.b64decode(shot["data"])), format="png")[..., :3]
    assert page.shape[:2] == (facts["height"], WIDTH)
    assert page.std() > 0.05, f"screenshot nearly blank: std {page.std():.4f}"
    rgb = (page * 255).round().astype(np.uint32)
    colours = np.unique(rgb[..., 0] << 16 | rgb[..., 1] << 8 | rgb[..., 2]).size
    assert colours > 100, f"screenshot has only {colours} distinct colours"
    for i, img in enumerate(images):  # each plot was painted where the layout put it
        y0, x0 = round(img["y"]), round(img["x"])
        crop = page[y0 : y0 + round(img["rh"]), x0 : x0 + round(img["rw"])]
        assert crop.size and crop.std() > 0.03, f"image {i} painted blank at {img}"
