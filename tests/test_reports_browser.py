"""The HTML reports in a real headless browser (Chromium from Debian's packages).

For the cohort report and a patient report: the page loads with no console message
(the reports carry no script, so any console line is an error: a blocked resource, a
parse error), every ``<img>`` has decoded (``complete`` and ``naturalWidth > 0``,
checked by a probe script added to a *copy* of the page), and a full-page screenshot is
taken and is not blank. Skipped only when no Chromium binary is installed (CI installs
it with ``apt-get install chromium``, see ``.ci/run``).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from test_reports import build_work, images_of, make_reports

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)

pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no Chromium binary found (install Debian's package: apt-get install chromium)",
)

# Sets data-images="<number of images>:<number decoded>" on <body> once the page loaded.
PROBE = (
    "<script>window.addEventListener('load', function () {"
    "var imgs = Array.prototype.slice.call(document.images);"
    "var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; });"
    "document.body.setAttribute('data-images', imgs.length + ':' + ok.length);});</script>"
)


def chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--no-first-run", "--hide-scrollbars", f"--user-data-dir={tmp / 'profile'}",
        "--enable-logging=stderr", "--v=0", *args,
    ]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)


def console_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    cohort, work = build_work(root, n_patients=5, endpoints=("pfs",))
    res = make_reports(cohort, work)
    patient = next(iter(res.patients.values()))
    return {"cohort": res.cohort, "patient": patient}, root


@pytest.mark.slow
@pytest.mark.parametrize("which", ["cohort", "patient"])
def test_report_in_headless_chromium(pages, which, tmp_path):
    from PIL import Image

    paths, root = pages
    page = paths[which]
    text = page.read_text(encoding="utf-8")
    n_images = len(images_of(text))
    assert n_images >= (3 if which == "patient" else 4)

    # 1. every image decodes: the probe runs in a copy of the page
    probe = tmp_path / f"probe_{which}.html"
    probe.write_text(text.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    run = chromium(tmp_path, "--virtual-time-budget=15000", "--dump-dom", probe.as_uri())
    assert run.returncode == 0, run.stderr[-2000:]
    found = re.search(r'data-images="(\d+):(\d+)"', run.stdout)
    assert found, "the probe did not run: " + run.stdout[:500]
    assert (int(found.group(1)), int(found.group(2))) == (n_images, n_images)

    # 2. the report itself (no script): no console message, a screenshot that shows something
    shot = root / f"screenshot_{which}.png"
    run = chromium(tmp_path, "--window-size=1280,2400", f"--screenshot={shot}", page.as_uri())
    assert run.returncode == 0, run.stderr[-2000:]
    assert console_lines(run.stderr) == []
    assert shot.is_file()
    img = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert img.shape == (2400, 1280)
    assert img.std() > 10.0  # text, tables and figures, not a blank page
    assert (img < 128).mean() > 0.005  # some dark pixels: text or figure ink
