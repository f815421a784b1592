"""The documentation site builds (mkdocs --strict: no broken links or missing pages)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("mkdocs") is None and not (Path(sys.executable).parent / "mkdocs").exists(),
                    reason="mkdocs is not installed (pip install -e .[dev])")
def test_docs_build_strict(tmp_path):
    exe = shutil.which("mkdocs") or str(Path(sys.executable).parent / "mkdocs")
    res = subprocess.run([exe, "build", "--strict", "-d", str(tmp_path / "site")], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert (tmp_path / "site" / "index.html").exists()
    api = (tmp_path / "site" / "api" / "methods" / "index.html").read_text()
    assert "def accuracy_by_demos" in api or "accuracy_by_demos" in api  # rendered from the docstrings


def test_api_pages_list_every_module():
    """docs/api/*.md are what scripts/make_api_docs.py writes now (a new or moved module is listed)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import make_api_docs
    finally:
        sys.path.pop(0)
    for layer in make_api_docs.LAYERS:
        path = ROOT / "docs" / "api" / f"{layer}.md"
        assert path.read_text() == make_api_docs.page(layer), f"{path} is stale: run python scripts/make_api_docs.py"
