"""The store under the local executor: what a cell holds, reruns that compute only what is missing,
damaged cells, failures, load and query."""

import json
import math

import pandas as pd
import pytest
import torch

import icl_circuits as ic
from icl_circuits.grid import CELL_COLUMNS, GridStoreError, Store, TableResult, load, plan, query, run_grid
from icl_circuits.methods.accuracy import accuracy_by_demos
from tests.grid.conftest import small_grid


def run(grid, store, toy, **kw):
    return run_grid(grid, store, models={"toy-icl": toy}, progress=False, **kw)


@pytest.fixture()
def done(tmp_path, toy):
    """A store holding every cell of ``small_grid()`` (8 cells)."""
    s = run(small_grid(), tmp_path / "s", toy)
    assert (s.computed, s.present, s.failed) == (8, 0, 0)
    return tmp_path / "s"


def test_a_cell_holds_what_the_method_computes_directly(done, toy):
    g = small_grid()
    job = next(j for j in plan(g) if j.cell.analysis == "accuracy" and j.cell.task == "country-capital" and j.cell.seed == 1)
    direct = accuracy_by_demos(toy, ic.build_prompts(toy, "country-capital", 8, 4, seed=1))
    stored = Store(done).result(job.key)
    torch.testing.assert_close(stored.value, direct.value, rtol=0, atol=0)  # same computation, same shapes: bit-equal
    rows = Store(done).rows(job.key)
    assert list(rows.columns[: len(CELL_COLUMNS)]) == CELL_COLUMNS
    assert rows["value"].tolist() == direct.value.tolist() and (rows["key"] == job.key).all()
    assert rows["template"].iloc[0] == direct.template[0]  # the model's default template, as the result records it
    meta = Store(done).meta(job.key)
    assert meta["cell"] == job.cell.record() and meta["identity"]["weights"] == job.identity["weights"]


def test_a_rerun_computes_nothing_and_one_more_seed_computes_only_its_cells(done, toy):
    again = run(small_grid(), done, toy)
    assert (again.computed, again.present) == (0, 8) and again.line().startswith("nothing to do: all 8 cells")
    more = run(small_grid(seeds=[0, 1, 2]), done, toy)
    assert (more.computed, more.present, more.total) == (4, 8, 12)
    st = Store(done).status()
    assert (len(st.done), len(st.failed), len(st.missing), len(st.corrupt)) == (12, 0, 0, 0)


def test_load_and_query_read_every_cell_once(done):
    df = load(done)
    assert df["key"].nunique() == 8 and set(df["analysis"]) == {"accuracy", "task_vector"}
    counts = query(done, "select analysis, count(distinct key) as cells from cells group by 1 order by 1")
    assert counts.to_dict("records") == [{"analysis": "accuracy", "cells": 4}, {"analysis": "task_vector", "cells": 4}]
    tv = query(done, "select * from cells where analysis = 'task_vector'")
    pd.testing.assert_frame_equal(tv.sort_values(["key", "layer"]).reset_index(drop=True)[["key", "layer", "value"]],
                                  load(done, analysis="task_vector").sort_values(["key", "layer"]).reset_index(drop=True)[
                                      ["key", "layer", "value"]], check_dtype=False)
    with pytest.raises(ValueError, match="query failed"):
        query(done, "select nope from cells")
    with pytest.raises(ValueError, match="sql must be"):
        query(done, " ")


@pytest.mark.parametrize("damage", ["truncate_rows", "alter_tensors", "drop_cell_json", "garble_result_json"])
def test_a_damaged_cell_is_refused_on_load_and_recomputed_by_the_next_run(done, toy, damage):
    st = Store(done)
    key = st.done_keys()[3]
    before = st.rows(key)
    d = st.cell_dir(key)
    if damage == "truncate_rows":
        (d / "rows.parquet").write_bytes((d / "rows.parquet").read_bytes()[:100])
    elif damage == "alter_tensors":
        b = bytearray((d / "result.safetensors").read_bytes())
        b[-1] ^= 0xFF
        (d / "result.safetensors").write_bytes(bytes(b))
    elif damage == "drop_cell_json":
        (d / "cell.json").unlink()
    else:
        (d / "result.json").write_text('{"class": "Accura')
    with pytest.raises(GridStoreError, match=key):
        load(done)
    with pytest.raises(GridStoreError, match=key):
        query(done, "select count(*) from cells")
    with pytest.raises(GridStoreError, match="rerun the grid"):
        st.result(key)
    with pytest.warns(UserWarning, match="damaged"):
        assert load(done, on_corrupt="skip")["key"].nunique() == 7
    others = [k for k in st.done_keys() if k != key]
    assert load(done, keys=others)["key"].nunique() == 7  # cells not asked for are not read
    assert query(done, "select count(distinct key) n from cells", keys=others)["n"].item() == 7
    assert st.status().corrupt == [key]
    again = run(small_grid(), done, toy)
    assert (again.computed, again.present, again.recomputed_corrupt) == (1, 7, 1)
    pd.testing.assert_frame_equal(st.rows(key), before)  # the same numbers as the first time


def test_a_cell_that_raises_is_recorded_and_the_rest_go_on(tmp_path, toy, test_analyses):
    g = small_grid(analyses=["fragile"], params={})
    s = run(g, tmp_path / "s", toy)
    assert (s.computed, s.failed) == (2, 2) and not s.ok
    st = Store(tmp_path / "s")
    status = st.status()
    assert sorted(status.failed) == sorted(s.failed_keys) and len(status.done) == 2
    rec = st.failure(status.failed[0])
    assert rec["error"] == "RuntimeError: fragile fails on antonym by design"
    assert "Traceback" in rec["traceback"] and "fragile" in rec["traceback"] and rec["cell"]["task"] == "antonym"
    assert not list((tmp_path / "s" / "cells").glob(".tmp-*"))
    # without --retry-failed a rerun leaves them; with it (here the analysis no longer fails) they are computed
    assert run(g, tmp_path / "s", toy).computed == 0
    fixed = small_grid(analyses=["fragile"], params={})
    ic.grid.register_analysis("fragile", lambda model, batches, **kw: test_analyses.fragile(model, batches, fail_task="x"),
                              replace=True)
    try:
        s2 = run(fixed, tmp_path / "s", toy, retry_failed=True)
    finally:
        ic.grid.register_analysis("fragile", test_analyses.fragile, replace=True)
    assert (s2.computed, s2.failed) == (2, 0) and st.failed_keys() == []


def test_a_second_commit_of_a_cell_is_discarded_and_leftovers_are_cleaned(done, toy):
    st = Store(done)
    job = plan(small_grid())[0]
    tmp = st.begin(job.key)
    assert st.commit(tmp, job.key, job.cell, job.identity, st.result(job.key), {}) is False
    assert not tmp.exists() and st.is_done(job.key)
    st.begin("leftover")
    assert st.clean_temporary() == 1 and not list(st.cells_dir.glob(".tmp-*"))


def test_table_results_round_trip_with_nan_as_null(tmp_path):
    t = TableResult(rows=[{"layer": 0, "x": 0.5}, {"layer": 1, "x": float("nan")}], meta={"n": torch.tensor(3)},
                    model="m")
    back = TableResult.load(t.save(tmp_path / "t"))
    assert back.rows == [{"layer": 0, "x": 0.5}, {"layer": 1, "x": None}] and back.meta == {"n": 3}
    assert math.isnan(back.to_dataframe()["x"].astype(float).iloc[1])
    with pytest.raises(TypeError, match=r"rows\[0\]"):
        TableResult(rows=[{"x": object()}], model="m")


def test_stores_that_are_not_stores_are_refused(tmp_path):
    with pytest.raises(GridStoreError, match="not a grid store"):
        load(tmp_path / "nothing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(GridStoreError, match="is a file"):
        Store(tmp_path / "file").open()
    Store(tmp_path / "empty").open()
    with pytest.raises(GridStoreError, match="no finished cells"):
        query(tmp_path / "empty", "select 1")
    assert json.loads(json.dumps(list(load(tmp_path / "empty").columns))) == CELL_COLUMNS


def test_a_second_run_on_a_store_in_use_is_refused(done, toy):
    with Store(done).driver_lock():
        with pytest.raises(GridStoreError, match="another grid run is using the store"):
            run(small_grid(), done, toy)
    assert run(small_grid(), done, toy).present == 8  # released: the next run goes ahead


def test_ray_scheduling_keeps_actors_on_the_model_they_hold():
    import collections

    from icl_circuits.grid.executors import _next_job

    def q(n, tag):
        return collections.deque(f"{tag}{i}" for i in range(n))

    pending = {"A": q(8, "a"), "B": q(8, "b")}
    assert _next_job(pending, {}, "A") == "a0"  # its own model first
    assert _next_job(pending, {"A": 1}, None) == "b0"  # a model nobody holds before helping with A
    pending = {"A": q(1, "a"), "B": q(0, "b")}
    assert _next_job(pending, {"A": 1}, "B") is None  # A's last cell: its holder takes it, no second load
    pending = {"A": q(6, "a")}
    assert _next_job(pending, {"A": 1}, None) == "a0"  # many left: worth a load
