"""The report in a real browser: headless Chromium loads the page and every embedded image."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from neurodl.report.html import write_report

# Counts, once the page has loaded, the images the browser could decode, and writes the count into the DOM.
PROBE = """<script>
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var loaded = images.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  var probe = document.createElement("p");
  probe.id = "image-probe";
  probe.textContent = "IMAGES " + loaded + " OF " + images.length;
  document.body.appendChild(probe);
});
</script>
"""


def chromium() -> str:
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.skip("headless Chromium is not installed (apt-get install chromium)")
    return binary


def headless(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            f"--user-data-dir={profile}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_every_image_loads_in_chromium(ae_run, tmp_path):
    binary = chromium()
    report = write_report(ae_run)
    probed = tmp_path / "probed.html"
    probed.write_text(
        report.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8"
    )

    dom = headless(binary, tmp_path / "profile", "--virtual-time-budget=5000", "--dump-dom", probed.as_uri())
    found = re.search(r"IMAGES (\d+) OF (\d+)", dom.stdout)
    assert found, f"no probe in the dumped DOM; stderr: {dom.stderr[-2000:]}"
    loaded, total = int(found.group(1)), int(found.group(2))
    assert total == report.read_text(encoding="utf-8").count("<img") >= 3
    assert loaded == total

    screenshot = tmp_path / "report.png"
    headless(
        binary,
        tmp_path / "profile",
        "--hide-scrollbars",
        "--window-size=1200,2400",
        f"--screenshot={screenshot}",
        report.resolve().as_uri(),
    )
    assert screenshot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
