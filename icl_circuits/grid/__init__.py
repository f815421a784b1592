"""Experiment grids: models x tasks x analyses x seeds, run by one runner on a real engine, stored as
content-addressed cells, read back as one table.

    import icl_circuits as ic
    grid = ic.grid.Grid(models=["toy-icl"], tasks=["antonym", "country-capital"],
                        analyses=["accuracy", "task_vector"], seeds=[0, 1], n_demos=[8], n_prompts=32)
    ic.grid.run(grid, "runs/quick", executor="ray")        # or "local", "submitit"
    df = ic.grid.load("runs/quick")                       # one pandas DataFrame of every cell's rows
    ic.grid.query("runs/quick", "SELECT analysis, count(*) FROM cells GROUP BY 1")   # DuckDB SQL

Modules: ``spec`` (Grid, Cell, keys), ``identity`` (what a key knows about a model), ``registry``
(the analyses a grid runs; ``register_analysis`` adds yours), ``store`` (cells on disk, ``load``,
``query``), ``worker`` (one process's cell runner), ``executors`` (local, Ray, submitit), ``run``
(the driver). docs/scaling.md goes from one process to a cluster.
"""

from icl_circuits.grid.registry import Analysis, get_analysis, import_analyses, list_analyses, register_analysis
from icl_circuits.grid.run import RunSummary, grid_status, plan, run_grid
from icl_circuits.grid.spec import Cell, Grid, GridSpecError, ModelSpec
from icl_circuits.grid.table import TableResult
from icl_circuits.grid.store import CELL_COLUMNS, CellStatus, GridStoreError, Store, load, query

run = run_grid
status = grid_status

__all__ = [
    "Grid", "Cell", "ModelSpec", "GridSpecError", "Analysis", "register_analysis", "get_analysis", "list_analyses",
    "import_analyses",
    "run", "run_grid", "status", "grid_status", "plan", "RunSummary", "Store", "GridStoreError", "CellStatus",
    "load", "query", "CELL_COLUMNS", "TableResult",
]
