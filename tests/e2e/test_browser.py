"""Neuroglancer in a real browser: ``petarecon view`` opened in headless Chromium.

A small run's layers (image, affinities, segmentation) are written with the pipeline's storage
functions, served by ``petarecon view`` in a subprocess, and opened in Debian's Chromium through
Playwright (``executable_path``; no browser is ever downloaded). "It rendered" needs three
signals, because each alone misses a failure mode (see DESIGN.md):

1. no HTTP >= 400 on ``/data/`` requests, and no failed data request;
2. Neuroglancer's own state: every layer source loaded without error, ``display.isReady()``
   stable, and 0 failed visible chunks in ``chunkQueueManager.getStatistics()``;
3. pixel statistics of the data panel with only that layer visible: enough non-background
   pixels, variance, and (for segmentation) many colours.

A second test breaks layers on purpose (missing chunks, a corrupt chunk, a missing info) and
asserts that the check reports each of them, so the check can fail.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from pipeline import storage
from pipeline.geometry import Bbox
from pipeline.viewer import LayerRef, ViewerServer, local_url

playwright_sync = pytest.importorskip("playwright.sync_api")
Image = pytest.importorskip("PIL.Image")

CHROMIUM = "/usr/lib/chromium/chromium"
ARGS = [
    "--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
    "--disable-background-networking", "--disable-component-update", "--no-first-run",
    "--disable-sync", "--disable-quic",
]
SHAPE = (64, 64, 16)
RESOLUTION = (8, 8, 40)
pytestmark = pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK),
                                reason="Debian chromium is not installed")

#: Runs in the page: Neuroglancer's view of its layers and chunks. Chunk statistics are a
#: Float64Array per source indexed ((3 * state + tier) * 3 + stat); state FAILED = 6,
#: DOWNLOADING = 3, tier VISIBLE = 0, stat numChunks = 0.
STATE_JS = """async () => {
  const v = window.viewer;
  if (v === undefined) return null;
  const layers = [];
  for (const ml of v.layerManager.managedLayers) {
    const sources = (ml.layer && ml.layer.dataSources) || [];
    const states = sources.map(s => {
      const ls = s.loadState;
      if (ls === undefined) return 'loading';
      if (ls.error !== undefined) return 'error: ' + String(ls.error.message || ls.error);
      return 'loaded';
    });
    layers.push({name: ml.name, visible: ml.visible, sources: states});
  }
  const stats = await v.chunkQueueManager.getStatistics();
  let failed = 0, downloading = 0, visible = 0;
  for (const s of stats.values()) {
    failed += s[(3 * 6 + 0) * 3 + 0];
    downloading += s[(3 * 3 + 0) * 3 + 0] + s[(3 * 4 + 0) * 3 + 0];
    for (let st = 0; st < 8; ++st) visible += s[(3 * st + 0) * 3 + 0];
  }
  return {ready: v.display.isReady(), layers, failed, downloading, visible};
}"""


@dataclass
class Rendered:
    """What one page load showed: the three signals, plus the screenshots taken."""

    bad_responses: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    state: dict | None = None
    shots: dict[str, np.ndarray] = field(default_factory=dict)

    def problems(self) -> list[str]:
        """Every reason this view does not count as rendered (empty when it does)."""
        out = [f"HTTP error on data: {r}" for r in self.bad_responses]
        out += [f"failed request: {r}" for r in self.failed_requests]
        if self.state is None:
            return [*out, "Neuroglancer did not start"]
        for layer in self.state["layers"]:
            out += [f"layer {layer['name']}: source {s}" for s in layer["sources"]
                    if s != "loaded"]
            if not layer["sources"]:
                out.append(f"layer {layer['name']}: no data source")
        if self.state["failed"]:
            out.append(f"{int(self.state['failed'])} failed visible chunks")
        if not self.state["ready"]:
            out.append("display not ready")
        return out


def pixel_problems(name: str, shot: np.ndarray, colours: int = 1) -> list[str]:
    """Why the data panel ``shot`` (H, W, 3 uint8) does not show layer ``name``'s data.

    Only the central half of the panel is judged: the view is zoomed so that the volume
    covers it, so blank, flat (a single value: missing chunks render black) or, with
    ``colours`` > 1, nearly monochrome pixels there mean the layer did not render.
    """
    h, w, _ = shot.shape
    centre = shot[h // 4: 3 * h // 4, w // 4: 3 * w // 4].reshape(-1, 3).astype(np.int64)
    most = np.unique(centre, axis=0, return_counts=True)[1].max() / len(centre)
    if most > 0.8:
        return [f"{name}: blank panel ({most:.0%} of the centre is one colour)"]
    if centre.std() < 5:
        return [f"{name}: flat panel (std {centre.std():.1f})"]
    found = len(np.unique(centre // 16, axis=0))
    if found < colours:
        return [f"{name}: {found} colours, expected at least {colours}"]
    return []


# -- fixtures ----------------------------------------------------------------------------------


def _write(path: str, kind: storage.LayerKind, data: np.ndarray) -> None:
    box = Bbox.from_shape(SHAPE)
    storage.create_layer(path, kind, box, RESOLUTION, (32, 32, 8))
    storage.write(path, box, data)
    storage.set_status(path, "complete")


@pytest.fixture(scope="module")
def run_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder with image (raw, gzip), affinity (fpzip) and segmentation layers."""
    root = tmp_path_factory.mktemp("browser")
    rng = np.random.default_rng(1)
    x, y, _ = np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij")
    cells = (x // 16) * 4 + (y // 16) + 1
    membrane = (x % 16 == 0) | (y % 16 == 0)
    image = np.where(membrane, 30, 180 + rng.integers(-40, 40, SHAPE)).astype(np.uint8)
    aff = np.stack([np.where(membrane, 0.1, 0.9)] * 3, axis=-1).astype(np.float32)
    aff += rng.random(aff.shape, dtype=np.float32) * 0.05
    for name, kind, data in [("image", "image", image), ("affinity", "affinity", aff),
                             ("segmentation", "segmentation", cells.astype(np.uint64))]:
        _write(f"file://{root}/run/{name}", kind, data)
    return root


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with playwright_sync.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            yield b
        finally:
            b.close()


def _view_url(root: Path) -> Iterator[str]:
    """Start ``petarecon view root --port 0`` and yield the URL it prints; stop it after."""
    exe = shutil.which("petarecon", path=str(Path(sys.executable).parent))
    cmd = [exe] if exe else [sys.executable, "-c", "from pipeline.cli import app; app()"]
    proc = subprocess.Popen([*cmd, "view", str(root), "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            m = re.search(r"(http://\S+/v/\S+)", line)
            if m:
                yield m.group(1)
                return
            if not line and proc.poll() is not None:
                break
        pytest.fail(f"petarecon view printed no URL (exit {proc.poll()})")
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _xy_only(url: str) -> str:
    """The same state in a single xy panel (so the data panel is the whole viewport)."""
    import neuroglancer

    state = neuroglancer.parse_url(url)
    state.layout = "xy"
    state.dimensions = neuroglancer.CoordinateSpace(names=["x", "y", "z"], units="nm",
                                                    scales=list(RESOLUTION))
    state.position = [SHAPE[0] / 2, SHAPE[1] / 2, SHAPE[2] / 2]
    state.cross_section_scale = 0.15
    return neuroglancer.to_url(state, prefix=url.split("#", 1)[0])


def render(browser: object, url: str, shoot: list[str] = (), timeout: float = 30) -> Rendered:
    """Open ``url``, wait until Neuroglancer is stably ready and idle, and collect signals.

    For each layer named in ``shoot``, the other layers are hidden and the data panel is
    screenshotted into ``Rendered.shots[name]``.
    """
    out = Rendered()
    page = browser.new_page(viewport={"width": 640, "height": 480})

    def on_response(resp) -> None:
        if "/data/" in resp.url and resp.status >= 400:
            out.bad_responses.append(f"{resp.status} {resp.url}")

    def on_failed(req) -> None:
        if "/data/" in req.url and "ERR_ABORTED" not in (req.failure or ""):
            out.failed_requests.append(f"{req.failure} {req.url}")

    page.on("response", on_response)
    page.on("requestfailed", on_failed)
    try:
        page.goto(url)
        page.wait_for_function("() => window.viewer !== undefined", timeout=timeout * 1000)
        deadline, stable = time.monotonic() + timeout, 0
        while time.monotonic() < deadline and stable < 3:
            out.state = page.evaluate(STATE_JS)
            busy = any(s == "loading" for layer in out.state["layers"]
                       for s in layer["sources"])
            idle = out.state["ready"] and not out.state["downloading"] and not busy
            stable = stable + 1 if idle or out.state["failed"] else 0
            time.sleep(0.3)
        out.state = page.evaluate(STATE_JS)
        for name in shoot:
            page.evaluate("""(name) => { for (const ml of viewer.layerManager.managedLayers)
                               ml.setVisible(ml.name === name); }""", name)
            page.wait_for_function("() => viewer.display.isReady()", timeout=timeout * 1000)
            time.sleep(0.5)
            panel = page.locator(".neuroglancer-rendered-data-panel").first
            png = panel.screenshot()
            out.shots[name] = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    finally:
        page.close()
    return out


# -- tests -------------------------------------------------------------------------------------


def test_run_layers_render_in_chromium(run_root: Path, browser: object, tmp_path: Path) -> None:
    for url in _view_url(run_root):
        view = render(browser, _xy_only(url),
                      shoot=["run/image", "run/segmentation", "run/affinity"])
    assert view.problems() == []
    names = {layer["name"] for layer in view.state["layers"]}
    assert names == {"run/image", "run/affinity", "run/segmentation"}
    assert view.state["visible"] > 0
    for name, shot in view.shots.items():
        Image.fromarray(shot).save(tmp_path / f"{name.replace('/', '_')}.png")
    assert pixel_problems("image", view.shots["run/image"]) == []
    assert pixel_problems("segmentation", view.shots["run/segmentation"], colours=4) == []
    assert pixel_problems("affinity", view.shots["run/affinity"]) == []
    # PNGs are deterministic for fixed flags: a second load shows the same image panel.
    for url in _view_url(run_root):
        again = render(browser, _xy_only(url), shoot=["run/image"])
    assert np.array_equal(again.shots["run/image"], view.shots["run/image"])


def test_broken_layers_are_detected(run_root: Path, browser: object, tmp_path: Path) -> None:
    root = tmp_path / "broken"
    shutil.copytree(run_root / "run", root / "run")
    layer = root / "run"
    for chunk in (layer / "image" / "8_8_40").iterdir():  # every image chunk gone: 404s
        chunk.unlink()
    aff_chunks = sorted((layer / "affinity" / "8_8_40").iterdir())
    for chunk in aff_chunks:  # fpzip chunks that no longer decode: 500s
        chunk.write_bytes(b"not fpzip")
    (layer / "segmentation" / "info").unlink()  # no info: the source fails to load
    refs = [LayerRef(n, f"file://{layer / n}", k) for n, k in
            [("image", "image"), ("affinity", "affinity"), ("segmentation", "segmentation")]]
    with ViewerServer(root) as srv:
        url = local_url(refs, root, srv.port)
        view = render(browser, _xy_only(url), shoot=["image"])
    problems = "\n".join(view.problems())
    assert re.search(r"HTTP error on data: 404 \S+/run/image/8_8_40/", problems), problems
    assert re.search(r"HTTP error on data: 500 \S+/run/affinity/8_8_40/", problems), problems
    assert "layer segmentation: source error" in problems, problems
    assert "failed visible chunks" in problems, problems
    assert pixel_problems("image", view.shots["image"]) != []
