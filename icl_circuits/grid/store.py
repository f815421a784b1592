"""A grid's store: one folder per finished cell, written atomically and checked on every read.

    STORE/cells/<key>/result.json, result.safetensors   the cell's Result (Result.save: digests inside)
    STORE/cells/<key>/rows.parquet                      its tidy rows: Result.to_dataframe() + the cell's keys
    STORE/cells/<key>/cell.json                         the cell, its model identity, timings, the digest of rows.parquet
    STORE/failed/<key>.json                             a cell that raised: its error and traceback
    STORE/specs/<name>-<hash>.json                      every grid run on the store, with its cells' keys

A cell is written into ``cells/.tmp-<key>-<random>/`` (made when the cell starts) and renamed to
``cells/<key>/`` only when all four files are there and flushed: a folder named by a key is complete,
or it was damaged afterwards. A damaged cell (a file missing, truncated or altered) fails
:meth:`Store.verify` and is never read: :func:`load` and :func:`query` refuse it and ``grid run``
recomputes it. Temporary folders left by a killed worker are removed by the next run.

:func:`load` returns every cell's rows as one pandas DataFrame; :func:`query` runs SQL on them with
DuckDB (no server: the Parquet files are the database, exposed as the view ``cells``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import importlib
import io
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Iterable, Iterator

import pandas as pd

from icl_circuits.core.results import ResultLoadError, read_data, read_spec, write_atomically
from icl_circuits.grid.spec import Cell, Grid

__all__ = ["Store", "GridStoreError", "CellStatus", "load", "query", "CELL_COLUMNS"]

#: The columns every row of the table carries (the cell's keys), before the Result's own columns.
CELL_COLUMNS = ["key", "model", "task", "analysis", "seed", "n_demos", "template", "n_prompts", "params"]
CELL_FORMAT = 1


class GridStoreError(ValueError):
    """A store that cannot be read as asked: missing, or holding damaged cells; the message names them."""


@dataclasses.dataclass(frozen=True)
class CellStatus:
    """The cells of a store's grids by state: ``done`` (verified), ``failed`` (a failure record),
    ``missing`` (neither), ``corrupt`` (a cell folder that fails verification); keys in each."""

    done: list[str]
    failed: list[str]
    missing: list[str]
    corrupt: list[str]

    @property
    def total(self) -> int:
        return len(self.done) + len(self.failed) + len(self.missing) + len(self.corrupt)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _table(df: pd.DataFrame) -> bytes:
    """``df`` as Parquet bytes; object columns that Arrow cannot type (mixed values, lists of
    mixed values) are stored as their JSON text."""
    buf = io.BytesIO()
    try:
        df.to_parquet(buf, index=False)
    except Exception:  # pyarrow.ArrowInvalid / ArrowTypeError on mixed object columns
        df = df.copy()
        for c in df.columns:
            if df[c].dtype == object:
                df[c] = [v if v is None or isinstance(v, str) else json.dumps(v, default=str) for v in df[c]]
        buf = io.BytesIO()
        df.to_parquet(buf, index=False)
    return buf.getvalue()


def rows_of(result: Any, key: str, cell: Cell) -> pd.DataFrame:
    """The cell's tidy rows: ``result.to_dataframe()`` with :data:`CELL_COLUMNS` first (``template``: the
    cell's, or for the model's default the one the Result records). A column of the result that has a
    cell column's name and other values is kept as ``result_<name>``."""
    df = result.to_dataframe().reset_index(drop=True)
    template = cell.template
    if template is None:  # the model's default: the one the Result records (provenance, or its own column)
        template = (getattr(result, "provenance", None) or {}).get("template")
        if template is None and "template" in df.columns and df["template"].nunique() == 1:
            template = str(df["template"].iloc[0])
    values = {"key": key, "model": cell.model.label, "task": cell.task, "analysis": cell.analysis, "seed": cell.seed,
              "n_demos": cell.n_demos, "template": template, "n_prompts": cell.n_prompts,
              "params": json.dumps(cell.params, sort_keys=True)}
    for c, v in values.items():
        if c in df.columns:
            if (df[c].astype(str) == str(v)).all():
                df = df.drop(columns=c)
            else:
                df = df.rename(columns={c: f"result_{c}"})
    for i, (c, v) in enumerate(values.items()):
        df.insert(i, c, [v] * len(df))
    return df


class Store:
    """The folder of a grid's results (module docstring). Creating a Store touches nothing;
    :meth:`open` makes the folders."""

    def __init__(self, root: str | os.PathLike) -> None:
        if not isinstance(root, (str, os.PathLike)) or not os.fspath(root):
            raise TypeError(f"store must be a folder path, got {root!r}")
        self.root = Path(root).expanduser()
        self.cells_dir, self.failed_dir, self.specs_dir = self.root / "cells", self.root / "failed", self.root / "specs"

    def open(self) -> "Store":
        """Make the store's folders (a file where the store should be is an error)."""
        if self.root.exists() and not self.root.is_dir():
            raise GridStoreError(f"store {self.root} is a file, not a folder")
        for d in (self.cells_dir, self.failed_dir, self.specs_dir):
            d.mkdir(parents=True, exist_ok=True)
        return self

    def exists(self) -> bool:
        return self.cells_dir.is_dir()

    def require(self) -> "Store":
        """This store, or GridStoreError when the folder holds no store."""
        if not self.exists():
            raise GridStoreError(f"{self.root} is not a grid store (no cells/ folder); run a grid into it first")
        return self

    # ------------------------------------------------------------------ specs
    def write_spec(self, grid: Grid, keys: list[str]) -> Path:
        """Record ``grid`` and its cells' keys under ``specs/`` (the same grid twice: one file)."""
        rec = {"grid": grid.record(), "keys": keys}
        text = json.dumps(rec, sort_keys=True)
        path = self.specs_dir / f"{grid.name}-{hashlib.sha256(text.encode()).hexdigest()[:12]}.json"
        if not path.exists():
            write_atomically([(path, json.dumps({**rec, "written": _now()}, indent=1).encode())])
        return path

    def spec_keys(self) -> list[str]:
        """The keys of every grid run on this store, in order, each once."""
        keys: dict[str, None] = {}
        for p in sorted(self.specs_dir.glob("*.json")):
            try:
                keys.update(dict.fromkeys(json.loads(p.read_text())["keys"]))
            except (OSError, ValueError, KeyError, TypeError):
                raise GridStoreError(f"{p} is not a readable grid record (damaged?); delete it and rerun the grid") from None
        return list(keys)

    # ------------------------------------------------------------------ cells
    def cell_dir(self, key: str) -> Path:
        return self.cells_dir / key

    def done_keys(self) -> list[str]:
        """Keys of every cell folder (finished, not yet verified), sorted."""
        return sorted(p.name for p in self.cells_dir.iterdir() if p.is_dir() and not p.name.startswith(".")) \
            if self.cells_dir.is_dir() else []

    def verify(self, key: str) -> str | None:
        """None when cell ``key`` is complete and every digest matches, else what is wrong."""
        d = self.cell_dir(key)
        if not d.is_dir():
            return "missing"
        try:
            meta = read_spec(d / "cell.json", what="a grid cell record", max_version=CELL_FORMAT)
            if meta.get("key") != key:
                return f"cell.json names key {meta.get('key')!r}"
            read_data(d / "rows.parquet", meta.get("rows_sha256"), d / "cell.json")
            spec = read_spec(d / "result.json", what="the cell's Result")
            read_data(d / "result.safetensors", spec.get("tensors_sha256"), d / "result.json")
        except ResultLoadError as err:
            return str(err)
        return None

    def is_done(self, key: str) -> bool:
        return self.verify(key) is None

    def meta(self, key: str) -> dict[str, Any]:
        """The cell's ``cell.json``."""
        return read_spec(self.cell_dir(key) / "cell.json", what="a grid cell record", max_version=CELL_FORMAT)

    def result(self, key: str) -> Any:
        """The Result of cell ``key``, loaded with its class (GridStoreError when it fails verification)."""
        problem = self.verify(key)
        if problem is not None:
            raise GridStoreError(f"cell {key} in {self.root} cannot be read ({problem}); rerun the grid to recompute it")
        meta = self.meta(key)
        cls = getattr(importlib.import_module(meta["result_module"]), meta["result_class"])
        return cls.load(self.cell_dir(key) / "result")

    def rows(self, key: str) -> pd.DataFrame:
        """The cell's rows (verified first)."""
        problem = self.verify(key)
        if problem is not None:
            raise GridStoreError(f"cell {key} in {self.root} cannot be read ({problem}); rerun the grid to recompute it")
        return pd.read_parquet(self.cell_dir(key) / "rows.parquet")

    def begin(self, key: str) -> Path:
        """A new temporary folder for cell ``key`` (``cells/.tmp-<key>-<random>``)."""
        tmp = self.cells_dir / f".tmp-{key}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        return tmp

    def commit(self, tmp: Path, key: str, cell: Cell, identity: dict[str, Any], result: Any,
               info: dict[str, Any]) -> bool:
        """Write the cell's files into ``tmp`` (from :meth:`begin`) and rename it to ``cells/<key>``.
        Returns False (and removes ``tmp``) when a verified copy is already there (another worker
        finished it); a damaged copy is replaced."""
        result.save(tmp / "result")
        rows = _table(rows_of(result, key, cell))
        (tmp / "rows.parquet").write_bytes(rows)
        meta = {"format_version": CELL_FORMAT, "key": key, "cell": cell.record(), "identity": identity,
                "result_class": type(result).__name__, "result_module": type(result).__module__,
                "rows_sha256": hashlib.sha256(rows).hexdigest(), "finished": _now(), **info}
        write_atomically([(tmp / "cell.json", json.dumps(meta, indent=1, default=str).encode())])
        _fsync_dir(tmp)
        final = self.cell_dir(key)
        if final.exists():
            if self.is_done(key):
                shutil.rmtree(tmp, ignore_errors=True)
                return False
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync_dir(self.cells_dir)
        (self.failed_dir / f"{key}.json").unlink(missing_ok=True)
        return True

    def discard(self, key: str) -> None:
        """Remove cell ``key``'s folder (a damaged cell, before it is recomputed)."""
        shutil.rmtree(self.cell_dir(key), ignore_errors=True)

    def clean_temporary(self) -> int:
        """Remove temporary cell folders (left by killed or interrupted workers); returns how many.
        Run only while no worker writes to this store."""
        n = 0
        for p in self.cells_dir.glob(".tmp-*") if self.cells_dir.is_dir() else ():
            shutil.rmtree(p, ignore_errors=True)
            n += 1
        return n

    @contextlib.contextmanager
    def driver_lock(self) -> Iterator[None]:
        """Hold ``STORE/driver.lock`` for one grid run: a second run on the same store at the same time
        raises GridStoreError (it would remove the first one's temporary folders). POSIX only; elsewhere
        nothing is locked."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            yield
            return
        self.open()
        fh = open(self.root / "driver.lock", "a+")
        try:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.seek(0)
                raise GridStoreError(f"another grid run is using the store {self.root} ({fh.read().strip() or 'pid unknown'}); "
                                     "wait for it to finish (one run per store at a time)") from None
            fh.seek(0)
            fh.truncate()
            fh.write(f"pid {os.getpid()} since {_now()}")
            fh.flush()
            yield
        finally:
            fh.close()  # releases the lock

    # ------------------------------------------------------------------ failures
    def record_failure(self, key: str, cell: Cell, error: BaseException | str, traceback_text: str,
                       info: dict[str, Any]) -> None:
        """Record that cell ``key`` raised (``failed/<key>.json``, atomically)."""
        prev = self.failure(key)
        rec = {"key": key, "cell": cell.record(), "error": f"{type(error).__name__}: {error}"
               if isinstance(error, BaseException) else str(error), "traceback": traceback_text,
               "attempts": (prev or {}).get("attempts", 0) + 1, "when": _now(), **info}
        write_atomically([(self.failed_dir / f"{key}.json", json.dumps(rec, indent=1, default=str).encode())])

    def failure(self, key: str) -> dict[str, Any] | None:
        """The failure record of cell ``key``, or None."""
        p = self.failed_dir / f"{key}.json"
        try:
            return json.loads(p.read_text())
        except (OSError, ValueError):
            return None

    def failed_keys(self) -> list[str]:
        return sorted(p.stem for p in self.failed_dir.glob("*.json")) if self.failed_dir.is_dir() else []

    # ------------------------------------------------------------------ summaries
    def status(self, keys: list[str] | None = None) -> CellStatus:
        """The state of ``keys`` (default: every cell of every grid run on this store)."""
        self.require()
        keys = self.spec_keys() if keys is None else keys
        failed, present = set(self.failed_keys()), set(self.done_keys())
        out: dict[str, list[str]] = {"done": [], "failed": [], "missing": [], "corrupt": []}
        for k in keys:
            state = ("done" if self.verify(k) is None else "corrupt") if k in present else \
                "failed" if k in failed else "missing"
            out[state].append(k)
        return CellStatus(**out)

    def verified(self, on_corrupt: str = "raise", keys: Iterable[str] | None = None) -> Iterator[str]:
        """Keys of the verified cells (of ``keys`` only, when given: others are not read). A damaged
        cell raises GridStoreError naming it (``on_corrupt="skip"``: left out with a warning)."""
        if on_corrupt not in ("raise", "skip"):
            raise ValueError(f"on_corrupt must be 'raise' or 'skip', got {on_corrupt!r}")
        present = self.require().done_keys()
        if keys is not None:
            wanted = set(keys)
            present = [k for k in present if k in wanted]
        bad = []
        for k in present:
            problem = self.verify(k)
            if problem is None:
                yield k
            else:
                bad.append(f"{k} ({problem})")
        if bad and on_corrupt == "raise":
            raise GridStoreError(f"{len(bad)} damaged cell(s) in {self.root}, not read: {'; '.join(bad[:5])}"
                                 f"{' ...' if len(bad) > 5 else ''}. Rerun the grid to recompute them, or pass "
                                 "on_corrupt='skip' to read the others")
        if bad:
            import warnings

            warnings.warn(f"{len(bad)} damaged cell(s) in {self.root} left out: {'; '.join(bad[:5])}", stacklevel=3)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory handles
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load(store: str | os.PathLike, *, analysis: str | None = None, keys: Iterable[str] | None = None,
         on_corrupt: str = "raise") -> pd.DataFrame:
    """Every finished cell's rows of ``store`` as one DataFrame (:data:`CELL_COLUMNS` first, then the
    Results' own columns; a column a cell's Result lacks is NaN there). ``analysis`` keeps one
    analysis's cells; ``keys`` only those cells (e.g. one grid's: ``[j.key for j in plan(grid)]``).
    Damaged cells raise GridStoreError (``on_corrupt="skip"`` leaves them out)."""
    st = Store(store)
    frames = []
    for k in st.verified(on_corrupt, keys):
        df = pd.read_parquet(st.cell_dir(k) / "rows.parquet")
        if analysis is None or (len(df) and df["analysis"].iloc[0] == analysis):
            frames.append(df)
    if not frames:
        return pd.DataFrame(columns=CELL_COLUMNS)
    return pd.concat(frames, ignore_index=True, sort=False)


def query(store: str | os.PathLike, sql: str, *, keys: Iterable[str] | None = None,
          on_corrupt: str = "raise") -> pd.DataFrame:
    """Run ``sql`` with DuckDB over the store's rows, exposed as the view ``cells`` (one row per Result
    row; :data:`CELL_COLUMNS` plus the Results' columns, unioned by name; ``keys``: only those cells).
    Only verified cells are read; damaged ones raise GridStoreError (``on_corrupt="skip"`` leaves
    them out)."""
    import duckdb

    if not isinstance(sql, str) or not sql.strip():
        raise ValueError(f"sql must be a non-empty SQL string, got {sql!r}")
    st = Store(store)
    files = [str(st.cell_dir(k) / "rows.parquet") for k in st.verified(on_corrupt, keys)]
    if not files:
        raise GridStoreError(f"{st.root} has no finished cells to query")
    con = duckdb.connect()
    try:
        con.read_parquet(files, union_by_name=True).create_view("cells")
        try:
            return con.execute(sql).df()
        except duckdb.Error as err:
            raise ValueError(f"query failed: {err}") from None
    finally:
        con.close()
