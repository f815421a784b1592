"""``icl-circuits grid``: run, rerun, status, failures and Ctrl-C, in a subprocess as a user runs it."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from icl_circuits.cli.main import cli
from icl_circuits.grid import Store, load
from tests.grid.conftest import ANALYSES

ROOT = Path(__file__).resolve().parents[2]
QUICK = ROOT / "examples" / "grids" / "quick.yaml"


def spec(tmp_path, analyses, n_prompts=8, seeds=(0, 1), tasks=("antonym", "country-capital"), params="{}"):
    p = tmp_path / "g.yaml"
    p.write_text(f"name: t\nmodels: [toy-icl]\ntasks: [{', '.join(tasks)}]\nanalyses: [{', '.join(analyses)}]\n"
                 f"seeds: [{', '.join(map(str, seeds))}]\nn_demos: [4]\nn_prompts: {n_prompts}\nparams: {params}\n")
    return p


def test_run_then_rerun_then_status(tmp_path):
    r = CliRunner()
    out = r.invoke(cli, ["grid", "run", str(QUICK), "--store", str(tmp_path / "s"), "--no-progress", "--json"])
    assert out.exit_code == 0, out.output
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert (summary["computed"], summary["total"], summary["failed"]) == (8, 8, 0)
    again = r.invoke(cli, ["grid", "run", str(QUICK), "--store", str(tmp_path / "s"), "--no-progress"])
    assert again.exit_code == 0 and "nothing to do: all 8 cells are in the store" in again.output
    st = r.invoke(cli, ["grid", "status", str(tmp_path / "s")])
    assert st.exit_code == 0 and st.output.startswith("8 done, 0 failed, 0 missing, 0 damaged (8 cells)")
    names = r.invoke(cli, ["grid", "analyses"]).output
    assert all(a in names for a in ("accuracy", "task_vector", "interchange", "saliency", "head_ablation", "logit_lens"))


def test_a_failing_cell_gives_a_nonzero_exit_and_is_listed(tmp_path):
    r = CliRunner()
    g = spec(tmp_path, ["fragile"])
    out = r.invoke(cli, ["grid", "run", str(g), "--store", str(tmp_path / "s"), "--import", str(ANALYSES), "--no-progress"])
    assert out.exit_code == 1 and "2 computed, 0 already in the store, 2 failed" in out.output
    st = r.invoke(cli, ["grid", "status", str(tmp_path / "s"), "--json"])
    rec = json.loads(st.output.strip().splitlines()[-1])
    assert (rec["done"], rec["failed"], rec["missing"]) == (2, 2, 0)
    assert set(rec["failed_cells"].values()) == {"RuntimeError: fragile fails on antonym by design"}


@pytest.mark.parametrize("args, words", [
    (["grid", "run", "nope.yaml", "--store", "S"], "no such file"),
    (["grid", "status", "nowhere"], "not a grid store"),
    (["grid", "run", str(QUICK), "--store", "S", "--import", "no_such_module_x"], "cannot import 'no_such_module_x'"),
    (["grid", "run", str(QUICK), "--store", "S", "--slurm", "novalue"], "KEY=VALUE"),
])
def test_bad_arguments_get_a_clear_message(tmp_path, args, words):
    args = [str(tmp_path / a) if a in ("nope.yaml", "S", "nowhere") else a for a in args]
    out = CliRunner().invoke(cli, args)
    assert out.exit_code != 0 and words in out.output and "Traceback" not in out.output


def test_ctrl_c_keeps_finished_cells_and_the_rerun_computes_exactly_the_rest(tmp_path):
    g = spec(tmp_path, ["slow_accuracy"], seeds=tuple(range(10)), params="{slow_accuracy: {sleep: 0.4}}")  # 20 cells
    store = tmp_path / "s"
    cmd = [sys.executable, "-m", "icl_circuits.cli.main", "grid", "run", str(g), "--store", str(store),
           "--import", str(ANALYSES), "--no-progress", "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    cells = store / "cells"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if cells.is_dir() and len([p for p in cells.iterdir() if not p.name.startswith(".")]) >= 5:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted" in err
    st = Store(store)
    finished = st.done_keys()
    assert 5 <= len(finished) < 20 and not list(cells.glob(".tmp-*"))  # no half-written cell
    for k in finished:  # every stored result loads
        assert st.result(k).value.numel() > 0
    rerun = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads(rerun.stdout.strip().splitlines()[-1])
    assert (summary["computed"], summary["present"]) == (20 - len(finished), len(finished))
    assert load(store)["key"].nunique() == 20


def test_verbose_prints_one_line_per_finished_cell(tmp_path):
    out = CliRunner().invoke(cli, ["grid", "run", str(QUICK), "--store", str(tmp_path / "s"), "--no-progress", "-v"])
    assert out.exit_code == 0, out.output
    lines = [ln for ln in out.output.splitlines() if ln.startswith("done ")]
    assert len(lines) == 8 and all("toy-icl" in ln and " s on " in ln for ln in lines)
    assert len({ln.split("[")[1].split("]")[0] for ln in lines}) == 8  # each cell's key once
