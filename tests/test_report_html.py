"""The HTML report in a real browser: headless Chromium renders the six tables and Figure 4.

Uses the store the report tests train (tests/test_report.py's `report_store`, shared within a session).
Skipped, with the reason, where Chromium is not installed (`apt-get install -y chromium`).
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import time

import pytest

from tests.test_report import report_store

pytestmark = pytest.mark.slow

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="Chromium is not installed: as root, `apt-get update && apt-get install -y chromium` (CI installs it)",
)

# Written into the page under test only: once everything has loaded, record what the browser rendered.
PROBE = """<script>
window.addEventListener("load", () => {
  const img = document.querySelector("img#figure4");
  const out = document.createElement("pre");
  out.id = "probe";
  out.textContent = `tables=${document.querySelectorAll("table").length} ` +
    `rows=${document.querySelectorAll("tbody tr").length} ` +
    `img=${img ? img.naturalWidth + "x" + img.naturalHeight : "none"} complete=${img ? img.complete : false}`;
  document.body.appendChild(out);
});
</script>"""


@pytest.fixture(scope="module")
def report_html(tmp_path_factory):
    from orchestrator.report import write_reports

    _, uri, plan = report_store(tmp_path_factory)
    out = tmp_path_factory.mktemp("html")
    paths = write_reports(plan, uri, out, formats=("html",))
    return paths["html"], plan


def chromium(*args: str, profile, timeout: float = 120) -> subprocess.CompletedProcess:
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


@needs_chromium
def test_chromium_renders_six_tables_and_the_figure(report_html, tmp_path):
    html, plan = report_html
    page = tmp_path / "probe.html"
    page.write_text(html.read_text().replace("</body>", PROBE + "</body>"))
    t0 = time.perf_counter()
    out = chromium("--dump-dom", "--virtual-time-budget=5000", page.as_uri(), profile=tmp_path / "profile")
    assert out.returncode == 0, out.stderr[-2000:]
    dom = out.stdout
    m = re.search(r'<pre id="probe">tables=(\d+) rows=(\d+) img=(\d+)x(\d+) complete=(\w+)</pre>', dom)
    assert m, dom[-3000:]
    tables, rows, width, height, complete = int(m[1]), int(m[2]), int(m[3]), int(m[4]), m[5]
    assert tables == 6
    assert rows == sum(len(t.rows) for t in plan.tables if t.table != "fig4")  # every row of Tables 2-7
    assert width > 300 and height > 200 and complete == "true"
    for n in range(2, 8):
        assert f'id="table-{n}"' in dom
    assert "running (epoch 1/2)" in dom and "Analog numbers." in dom
    print(f"dump-dom in {time.perf_counter() - t0:.1f} s: {tables} tables, {rows} rows, figure {width}x{height}")


@needs_chromium
def test_chromium_screenshot(report_html, tmp_path):
    html, _ = report_html
    shot = tmp_path / "report.png"
    out = chromium(
        "--screenshot=" + str(shot),
        "--window-size=1400,2000",
        "--hide-scrollbars",
        html.as_uri(),
        profile=tmp_path / "profile",
    )
    assert out.returncode == 0, out.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1400, 2000)
    # not a blank page: the PNG of a rendered report is far larger than a uniform one
    assert len(data) > 100_000, len(data)
    print(f"screenshot: {shot} ({len(data) // 1024} KiB)")
