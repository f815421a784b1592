"""scripts/gpu_check.sh, checked on CPU without running anything heavy (``--dry-run``): every step's
command line is accepted (each bench parses its arguments and exits, the CLI and pytest accept
theirs) and the JSON of times is written with every step."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def _run(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600, check=False)


def test_dry_run_accepts_every_command_and_writes_the_json(tmp_path):
    steps = _run("--list", tmp_path=tmp_path).stdout.split()
    assert {"real_model_tier", "bench_patching", "bench_heads", "bench_atp", "bench_ltv", "report"} <= set(steps)
    out = tmp_path / "gc.json"
    proc = _run("--dry-run", "--device", "cuda", "--out", str(out), tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["dry_run"] is True and data["device"] == "cuda"
    assert list(data["steps"]) == steps
    for name, step in data["steps"].items():
        assert step["rc"] == 0, f"{name}: {Path(step['log']).read_text()[-2000:]}"
        assert step["seconds"] >= 0 and step["timeout_s"] > 0
    # the device reaches every step that loads a model
    assert "ICL_CIRCUITS_TEST_DEVICE=cuda" in data["steps"]["real_model_tier"]["command"]
    assert all("--device cuda" in s["command"] for n, s in data["steps"].items() if n.startswith("bench_"))
    # each bench printed the arguments it parsed: the flags of the command line, not the defaults
    parsed = json.loads(Path(data["steps"]["bench_heads"]["log"]).read_text().strip().splitlines()[-1])
    assert parsed["model"] == "smollm2-135m" and parsed["device"] == "cuda"


def test_refuses_a_cuda_run_without_cuda_and_unknown_arguments(tmp_path):
    import torch

    if not torch.cuda.is_available():
        proc = _run("--out", str(tmp_path / "x.json"), tmp_path=tmp_path)
        assert proc.returncode == 2 and "no CUDA device" in proc.stderr
    proc = _run("--bogus", tmp_path=tmp_path)
    assert proc.returncode == 2 and "unknown argument --bogus" in proc.stderr
