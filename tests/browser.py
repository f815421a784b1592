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
  const box = e => { const r = e.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; };
  const hit = (a, b) => a[0] < b[2] - 1 && b[0] < a[2] - 1 && a[1] < b[3] - 1 && b[1] < a[3] - 1;
  const overlaps = [], scrolls = [], clipped = [];
  plots.forEach((p, i) => {
    const notes = [...p.querySelectorAll('g.annotation')].filter(a => a.textContent.trim())
      .map(a => ({text: a.textContent.trim(), box: box(a.querySelector('.annotation-text-g') || a)}));
    for (let j = 0; j < notes.length; j++) for (let k = j + 1; k < notes.length; k++)
      if (hit(notes[j].box, notes[k].box)) overlaps.push([i, notes[j].text, notes[k].text]);
    const svg = p.querySelector('svg.main-svg');
    const title = p.querySelector('.g-gtitle text');
    if (svg && title && title.textContent.trim()) {
      const t = box(title), f = box(svg);
      if (t[0] < f[0] - 1 || t[2] > f[2] + 1) clipped.push([i, title.textContent.trim().slice(0, 80)]);
    }
    const bar = p.querySelector('.legend .scrollbar');
    if (bar && bar.getBoundingClientRect().height > 0) scrolls.push(i);
  });
  const out = {errors: window.__errors, plots: plots.length,
               rendered: plots.filter(p => p.querySelector('svg.main-svg')).length,
               overlapping_annotations: overlaps, legend_scrolls: scrolls, clipped_titles: clipped};
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
    """What the page at ``path`` does in headless Chromium: ``errors`` (JS errors and console
    errors), ``plots`` and ``rendered`` (plotly figures, and those that drew), ``overlapping_annotations``
    (``[figure index, text a, text b]`` for every two annotation texts whose rendered bounding boxes
    overlap) and ``legend_scrolls`` (indices of figures whose legend needs a scroll bar)."""
    exe = chromium()
    if exe is None:
        raise RuntimeError("Chromium is not installed")
    text = Path(path).read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory() as d:
        page = Path(d) / "page.html"
        page.write_text(text.replace("<head>", "<head>" + COLLECTOR, 1), encoding="utf-8")
        for js in Path(path).parent.glob("*.js"):  # scripts the page loads by relative path (plotly.min.js)
            shutil.copy(js, Path(d) / js.name)
        cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               "--no-first-run", "--disable-background-networking", "--disable-component-update",
               "--disable-sync", "--disable-quic", f"--user-data-dir={d}/profile",
               "--virtual-time-budget=30000", "--dump-dom", page.as_uri()]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    m = re.search(r'<pre id="__result">(.*?)</pre>', res.stdout, re.S)
    if not m:
        raise RuntimeError(f"no result from Chromium (exit {res.returncode}): {res.stderr[-2000:]}")
    return json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&"))
