"""Ray and submitit executors against the local one: the same numbers, each model loaded once per worker,
a worker killed mid-cell, and the progress they report. Ray runs a local 2-CPU cluster on loopback,
started once for this module."""

import importlib.util

import pandas as pd
import pytest

from icl_circuits.grid import Store, load, run_grid
from tests.grid.conftest import small_grid

pytestmark = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                                reason="Ray is not installed: pip install 'icl-circuits[ray]'")

KEYS = ["key", "layer", "metric"]


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def local_store(tmp_path_factory, toy):
    path = tmp_path_factory.mktemp("local") / "s"
    g = small_grid(models=["toy-icl", {"name": "toy-icl", "processing": True}])
    s = run_grid(g, path, progress=False)
    assert (s.computed, s.failed, s.model_loads) == (16, 0, 2)
    return path


def _numbers(store) -> pd.DataFrame:
    df = load(store)
    cols = [c for c in KEYS if c in df.columns]
    return df.sort_values(cols, na_position="first").reset_index(drop=True)[cols + ["value"]]


def _same_numbers(a, b) -> None:
    # Bit-equality is not asked across processes: a worker's BLAS pool and thread count may differ from the
    # driver's, and float32 sums reorder with them; 1e-6 absolute is far below any reported digit.
    pd.testing.assert_frame_equal(_numbers(a), _numbers(b), check_exact=False, atol=1e-6, rtol=0)


def test_ray_gives_the_local_numbers_loading_each_model_once_per_worker(ray_cluster, local_store, tmp_path):
    g = small_grid(models=["toy-icl", {"name": "toy-icl", "processing": True}])
    s = run_grid(g, tmp_path / "s", "ray", workers=2, progress=False)
    assert (s.computed, s.failed, s.total) == (16, 0, 16)
    st = Store(tmp_path / "s")
    metas = [st.meta(k) for k in st.done_keys()]
    per_worker = {}
    for m in metas:
        per_worker.setdefault(m["worker"], []).append((m["cell"]["model"]["processing"], m["model_loaded"]))
    assert len(per_worker) == 2  # both actors worked
    for cells in per_worker.values():  # each actor loaded each model it ran exactly once
        for model in {p for p, _ in cells}:
            assert sum(loaded for p, loaded in cells if p == model) == 1
    # at most one load per actor per model (which actor helps with the other model's last cells depends on timing)
    assert 2 <= s.model_loads == sum(m["model_loaded"] for m in metas) <= 4
    assert {m["executor"] for m in metas} == {"ray"}
    _same_numbers(tmp_path / "s", local_store)
    assert run_grid(g, tmp_path / "s", "ray", progress=False).computed == 0


def test_a_worker_killed_mid_cell_is_restarted_and_the_grid_completes(ray_cluster, tmp_path, test_analyses):
    marker = tmp_path / "killed"
    g = small_grid(analyses=["die_once"], params={"die_once": {"marker": str(marker)}}, seeds=[0, 1, 2])
    s = run_grid(g, tmp_path / "s", "ray", workers=2, progress=False)
    assert marker.exists()  # a worker did die, mid-cell (its temporary cell folder existed)
    assert (s.computed, s.failed, s.total) == (6, 0, 6)
    st = Store(tmp_path / "s")
    assert len(st.done_keys()) == 6 and len(st.status().done) == 6 and not st.status().missing
    df = load(tmp_path / "s")
    assert df.groupby("key").size().nunique() == 1 and df["key"].nunique() == 6  # every cell once, none duplicated
    assert not list((tmp_path / "s" / "cells").glob(".tmp-*"))  # the dead worker's folder is gone


def test_a_cell_that_always_kills_its_worker_fails_alone(ray_cluster, tmp_path, test_analyses):
    g = small_grid(analyses=["die_on"], params={"die_on": {"task": "antonym"}}, seeds=[0, 1, 2])
    s = run_grid(g, tmp_path / "s", "ray", workers=2, progress=False, max_retries=0)
    st = Store(tmp_path / "s")
    assert (s.computed, s.failed) == (3, 3) and len(st.done_keys()) == 3  # a fresh actor replaced each dead one
    assert {st.failure(k)["cell"]["task"] for k in st.failed_keys()} == {"antonym"}
    assert all("worker died" in st.failure(k)["error"] for k in st.failed_keys())
    assert not list((tmp_path / "s" / "cells").glob(".tmp-*"))


def test_submitit_local_processes_give_the_local_numbers(local_store, tmp_path):
    pytest.importorskip("submitit")
    g = small_grid(models=["toy-icl", {"name": "toy-icl", "processing": True}])
    s = run_grid(g, tmp_path / "s", "submitit", cluster="local", progress=False, say=lambda _: None)
    assert (s.computed, s.failed) == (16, 0) and s.model_loads == 2  # one job per model, one load each
    assert {Store(tmp_path / "s").meta(k)["executor"] for k in Store(tmp_path / "s").done_keys()} == {"submitit"}
    _same_numbers(tmp_path / "s", local_store)
