"""Open an HTML file in headless Chromium and report JS errors and rendered plotly figures."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

COLLECTOR = """<script>
window.__errors = [];
window.addEventListener('error', e => window.__errors.push('error: ' + e.message));
window.addEventListener('unhandledrejection', e => window.__errors.push('rejection: ' + e.reason));
const __ce = console.error; console.error = (...a) => { window.__errors.push(a.join(' ')); __ce(...a); };
window.addEventListener('load', () => setTimeout(() => {
  const plots = [...document.querySelectorAll('.js-plotly-plot')];
  const out = {errors: window.__errors, plots: plots.length,
               rendered: plots.filter(p => p.querySelector('svg.main-svg')).length};
  const pre = document.createElement('pre'); pre.id = '__result'; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
}, 1000));
</script>"""


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


def check_html(path: str | Path, timeout: int = 120) -> dict:
    """{'errors': [...], 'plots': n, 'rendered': n} for the page at ``path``."""
    exe = chromium()
    if exe is None:
        raise RuntimeError("Chromium is not installed")
    text = Path(path).read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory() as d:
        page = Path(d) / "page.html"
        page.write_text(text.replace("<head>", "<head>" + COLLECTOR, 1), encoding="utf-8")
        cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               "--no-first-run", "--disable-background-networking", "--disable-component-update",
               "--disable-sync", "--disable-quic", f"--user-data-dir={d}/profile",
               "--virtual-time-budget=30000", "--dump-dom", page.as_uri()]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    m = re.search(r'<pre id="__result">(.*?)</pre>', res.stdout, re.S)
    if not m:
        raise RuntimeError(f"no result from Chromium (exit {res.returncode}): {res.stderr[-2000:]}")
    return json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&"))
