"""``icl-circuits explore``: starts a server on 127.0.0.1 that answers with the app, and refuses a model it
cannot load before serving anything."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

pytest.importorskip("dash", reason="the explorer needs Dash: pip install -e '.[explore]'")
requests = pytest.importorskip("requests")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_explore_serves_the_app_on_loopback():
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "icl_circuits.cli.main", "explore", "--model", "toy-icl",
                             "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline, page = time.time() + 90, None
        while time.time() < deadline and proc.poll() is None:
            try:
                page = requests.get(f"http://127.0.0.1:{port}/", timeout=5)
                break
            except requests.ConnectionError:
                time.sleep(0.5)
        assert page is not None and page.status_code == 200, proc.stderr.read() if proc.poll() is not None else ""
        assert "ICL explorer: toy-icl" in page.text
        layout = requests.get(f"http://127.0.0.1:{port}/_dash-layout", timeout=10).json()
        assert "token-strip" in str(layout) and "heads-grid" in str(layout)
        # the server listens on the loopback interface only: its socket is bound to 127.0.0.1
        out = subprocess.run(["ss", "-ltn"], capture_output=True, text=True).stdout if _has("ss") else ""
        if out:
            lines = [ln for ln in out.splitlines() if f":{port} " in ln]
            assert lines and all("127.0.0.1:" in ln for ln in lines), lines
    finally:
        proc.terminate()
        try:
            _, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
    assert f"http://127.0.0.1:{port}/" in err  # the URL is printed


def _has(cmd: str) -> bool:
    import shutil

    return shutil.which(cmd) is not None


def test_explore_refuses_an_unknown_model_before_serving():
    res = subprocess.run([sys.executable, "-m", "icl_circuits.cli.main", "explore", "--model", "no-such-model",
                          "--port", str(_free_port())], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "--model" in res.stderr and "Traceback" not in res.stderr
