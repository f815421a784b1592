"""The base of every analysis result: a dataclass of tensors and metadata that saves without pickle.

``save(path)`` writes ``path.safetensors`` (every tensor field) and ``path.json`` (every other
field, which must be JSON-serializable: numbers, strings, lists, dicts, None). ``load(path)``
reads both back into the same class.

Saving is atomic per file and checked as a pair: both files are written to temporary files in the
same directory first and then renamed over the old ones (``os.replace``), the tensors first; the
JSON records the SHA-256 of the tensor file. An interrupted save therefore leaves the previous
result (interrupted before the renames) or a pair whose digests differ, which ``load`` refuses
(interrupted between them): never a half-written result that loads.

Loading something that is not a readable result raises :class:`ResultLoadError` (a ``ValueError``),
whose message names the file and what is wrong: missing (then :class:`ResultNotFoundError`, also a
``FileNotFoundError``), not JSON or truncated, a result of another class, a tensor file that is not
the one the JSON was saved with, fields that do not fit the class, or a file format newer than this
version of icl-circuits reads. Catch ``ResultLoadError`` for all of them.

Every result is stamped once, by :func:`stamp` (``Cls(..., **stamp(model, batch))``): ``model`` (the
model's name), ``model_info`` (how it was loaded) and ``provenance`` (what it was computed on).
Files saved before the stamp was one field (``model_name``, or no name at all) load with ``model``
filled in (:func:`upgrade_fields`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import os
from pathlib import Path
import warnings
from typing import Any, TypedDict, TypeVar

import pandas as pd
import torch
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes
from icl_circuits.core.model_info import model_info as _model_info
from icl_circuits.core.types import HookedModel

R = TypeVar("R", bound="Result")

#: The version of the files ``Result.save`` writes (files without one are version 1). A reader refuses
#: a file whose version is higher, saying that a newer icl-circuits wrote it.
FORMAT_VERSION = 1


class ResultLoadError(ValueError):
    """A path that does not hold a readable result; the message names the file and what is wrong."""


class ResultNotFoundError(ResultLoadError, FileNotFoundError):
    """A result file that does not exist (a ``ResultLoadError`` and a ``FileNotFoundError``)."""


class Stamp(TypedDict):
    """What every result records about where it came from (the keyword-only fields of :class:`Result`)."""

    model: str
    model_info: dict[str, Any]
    provenance: dict[str, Any]


def stamp(model: HookedModel, batch: Any = None, **extra: Any) -> Stamp:
    """The stamp of a result computed on ``model`` from ``batch`` (a ``PromptBatch``, or None):
    ``model`` = ``cfg.model_name`` (else the model's class name), ``model_info`` =
    ``core.model_info.model_info(model)`` and
    ``provenance`` = :func:`provenance` ``(model, batch, **extra)``. Every analysis builds its
    result as ``Cls(..., **stamp(model, batch))``."""
    name = str(getattr(getattr(model, "cfg", None), "model_name", None) or type(model).__name__)
    return Stamp(model=name, model_info=_model_info(model),
                 provenance=provenance(model, batch, **extra))


def stamp_of(result: "Result") -> Stamp:
    """The stamp ``result`` carries, for a result derived from it without the model
    (``Derived(..., **stamp_of(result))``); the dicts are copies."""
    return Stamp(model=result.model, model_info=dict(result.model_info), provenance=dict(result.provenance))


def provenance(model: HookedModel, batch: Any = None, **extra: Any) -> dict[str, Any]:
    """The provenance every result records, written once here from the model and the batch:
    ``model`` (``cfg.model_name``), and from a ``PromptBatch``: ``task``, ``n_demos``,
    ``template`` (its example string), ``variant``, ``seed``, ``n_prompts`` and ``single_token``
    (whether the prompts were drawn from the one-token examples only); ``extra`` is added last.
    Results get it through :func:`stamp`."""
    out: dict[str, Any] = {"model": getattr(getattr(model, "cfg", None), "model_name", None)}
    if batch is not None:
        tmpl = getattr(batch, "template", None)
        out.update(task=batch.task, n_demos=batch.n_demos, template=getattr(tmpl, "example", tmpl),
                   variant=batch.variant, seed=batch.seed, n_prompts=len(batch),
                   single_token=bool(getattr(batch, "single_token", False)))
    out.update(extra)
    return out


def _stem(path: str | Path) -> Path:
    p = Path(path)
    return p.with_suffix("") if p.suffix in (".json", ".safetensors") else p


@dataclasses.dataclass(frozen=True)
class Result:
    """Base of frozen dataclasses holding tensors plus plain metadata.

    Every result carries three keyword-only fields, filled together by :func:`stamp`: ``model``
    (required), the name of the model it was computed on; ``model_info``, ``model_info(model)``
    (name, source, BOS rule, weight processing, dtype, TransformerLens version), so a saved result
    says how its model was loaded; and ``provenance``, ``provenance(model, batch)``, what it was
    computed on (model, task, n_demos, template, variant, seed, n_prompts). The dicts are empty
    when unknown.
    """

    model: str = dataclasses.field(kw_only=True)
    model_info: dict = dataclasses.field(default_factory=dict, kw_only=True)
    provenance: dict = dataclasses.field(default_factory=dict, kw_only=True)

    @property
    def model_name(self) -> str:
        """Deprecated: the old name of ``model`` (a ``DeprecationWarning``)."""
        warnings.warn(f"{type(self).__name__}.model_name is deprecated: use .model", DeprecationWarning, stacklevel=2)
        return self.model

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickle (e.g. a script's ``torch.save``d state): an older layout is upgraded as by
        ``load`` (:func:`upgrade_fields`), and fields added since take their defaults."""
        state = upgrade_fields(state)
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            if f.name not in state and f.default is not dataclasses.MISSING:
                state[f.name] = f.default
            elif f.name not in state and f.default_factory is not dataclasses.MISSING:
                state[f.name] = f.default_factory()
        self.__dict__.update(state)

    def _split(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors, meta = {}, {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                tensors[f.name] = v.detach().cpu().contiguous()
            else:
                meta[f.name] = v
        return tensors, meta

    def save(self, path: str | Path) -> Path:
        """Write ``<path>.safetensors`` and ``<path>.json`` atomically (see the module docstring);
        returns the stem path."""
        stem = _stem(path)
        stem.parent.mkdir(parents=True, exist_ok=True)
        tensors, meta = self._split()
        data = save_bytes(tensors)
        spec = {"class": type(self).__name__, "format_version": FORMAT_VERSION, "written_by": _package_version(),
                "fields": meta, "tensors_sha256": hashlib.sha256(data).hexdigest()}
        text = json.dumps(spec, indent=1, default=_jsonable)
        write_atomically([(stem.with_suffix(".safetensors"), data), (stem.with_suffix(".json"), text.encode())])
        return stem

    @classmethod
    def load(cls: type[R], path: str | Path) -> R:
        """Read a result written by ``save`` (``path`` with or without ``.json`` / ``.safetensors``).

        Raises ``ResultLoadError`` naming the file when it is missing, truncated, another class's
        result, not the tensor file its JSON was saved with, or written by a newer version."""
        stem = _stem(path)
        spec_path, data_path = stem.with_suffix(".json"), stem.with_suffix(".safetensors")
        spec = read_spec(spec_path, what=f"a {cls.__name__} saved with .save()")
        if spec.get("class") != cls.__name__:
            raise ResultLoadError(f"{spec_path} holds a {spec.get('class')!r} result, not a {cls.__name__}; "
                                  f"load it with {spec.get('class')}.load")
        fields = spec.get("fields")
        if not isinstance(fields, dict):
            raise ResultLoadError(f"{spec_path} has no 'fields' object: not a result file, or damaged")
        data = read_data(data_path, spec.get("tensors_sha256"), spec_path)
        try:
            tensors = load_bytes(data)
        except Exception as err:  # safetensors raises its own SafetensorError on a malformed file
            raise ResultLoadError(f"{data_path} is not a readable safetensors file ({err})") from None
        try:
            return cls(**upgrade_fields(fields), **tensors)  # type: ignore[call-arg]
        except TypeError as err:
            raise ResultLoadError(f"{spec_path}: its fields do not fit {cls.__name__} ({err}); "
                                  "was it saved by another version of the class?") from None

    def to_dataframe(self) -> pd.DataFrame:  # pragma: no cover - every result overrides it
        raise NotImplementedError


def upgrade_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """The saved ``fields`` of a result in today's layout (a new dict). Older layouts: the model's
    name saved as ``model_name`` (every result but five before issue 25; interchange and probing
    results before issue 16) becomes ``model``; a file with neither takes the name from its
    ``provenance["model"]``, else its ``model_info["name"]``, else ``""`` (unknown)."""
    out = dict(fields)
    old = out.pop("model_name", None)
    if not out.get("model"):
        prov, info = out.get("provenance") or {}, out.get("model_info") or {}
        name = old or prov.get("model") or info.get("name")
        out["model"] = "" if name is None else str(name)
    return out


def write_atomically(files: list[tuple[Path, bytes]]) -> None:
    """Write each ``(path, content)``: all to temporary files next to their targets (flushed to
    disk), then renamed over the targets in the order given (``os.replace``, atomic per file).
    Temporary files are removed if anything fails; targets are only touched by the renames."""
    tmps: list[Path] = []
    try:
        for path, content in files:
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            tmps.append(tmp)
            with open(tmp, "wb") as fh:
                fh.write(content)
                fh.flush()
                os.fsync(fh.fileno())
        for (path, _), tmp in zip(files, tmps):
            os.replace(tmp, path)
    finally:
        for tmp in tmps:
            if tmp.exists():
                tmp.unlink()


def check_digest(data: bytes, expected: str | None, data_path: Path, spec_path: Path) -> None:
    """Refuse (``ResultLoadError``) ``data`` whose SHA-256 is not the one recorded in ``spec_path``
    (None: an older file without a digest, accepted)."""
    if expected is not None and hashlib.sha256(data).hexdigest() != expected:
        raise ResultLoadError(f"{data_path} is not the file {spec_path} was saved with (SHA-256 differs): "
                              "truncated, altered, or an interrupted or mixed save; save the result again")


def read_spec(spec_path: Path, *, what: str, max_version: int = FORMAT_VERSION) -> dict[str, Any]:
    """The JSON object in ``spec_path``, or ``ResultLoadError`` naming it: missing
    (``ResultNotFoundError``), unreadable, truncated or not JSON, not an object, or a
    ``format_version`` above ``max_version`` (written by a newer icl-circuits; none means 1).
    ``what`` says what the file should hold, for the messages."""
    if not spec_path.is_file():
        hint = "it is a directory" if spec_path.is_dir() else "no such file"
        raise ResultNotFoundError(f"{spec_path}: {hint}; expected {what}")
    try:
        spec = json.loads(spec_path.read_bytes().decode("utf-8"))
    except OSError as err:
        raise ResultLoadError(f"{spec_path} cannot be read: {err.strerror or err}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        where = f" (line {err.lineno}, column {err.colno}: {err.msg})" if isinstance(err, json.JSONDecodeError) else ""
        raise ResultLoadError(f"{spec_path} is truncated or not JSON{where}; expected {what}") from None
    if not isinstance(spec, dict):
        raise ResultLoadError(f"{spec_path} holds a JSON {type(spec).__name__}, not an object; expected {what}")
    version = spec.get("format_version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ResultLoadError(f"{spec_path} has format_version {version!r}, expected a positive integer")
    if version > max_version:
        raise ResultLoadError(f"{spec_path} was written by a newer icl-circuits ({spec.get('written_by', 'unknown')}, "
                              f"file format {version}); this one ({_package_version()}) reads formats up to "
                              f"{max_version}: upgrade icl-circuits to load it")
    return spec


def read_data(data_path: Path, expected_sha256: str | None, spec_path: Path) -> bytes:
    """The bytes of ``data_path``, checked against the digest ``spec_path`` recorded (``check_digest``);
    ``ResultNotFoundError`` when it is missing, ``ResultLoadError`` when unreadable."""
    if not data_path.is_file():
        raise ResultNotFoundError(f"{data_path}: no such file; {spec_path} was saved with it (copy both files)")
    try:
        data = data_path.read_bytes()
    except OSError as err:
        raise ResultLoadError(f"{data_path} cannot be read: {err.strerror or err}") from None
    check_digest(data, expected_sha256, data_path, spec_path)
    return data


def _package_version() -> str:
    try:
        return "icl-circuits " + importlib.metadata.version("icl-circuits")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that is not installed
        return "icl-circuits (version unknown)"


def _jsonable(v: Any) -> Any:
    if isinstance(v, tuple):
        return list(v)
    if hasattr(v, "item"):
        return v.item()
    if dataclasses.is_dataclass(v):
        return dataclasses.asdict(v)
    raise TypeError(f"cannot save a {type(v).__name__} in a result's JSON metadata")


def markdown_table(df: pd.DataFrame, digits: int = 3) -> str:
    """``df`` as a Markdown table (floats to ``digits`` places, or in scientific notation where that would
    print a nonzero value as zero), without pandas' optional tabulate."""

    def cell(v) -> str:
        if not isinstance(v, float):
            return str(v)
        return f"{v:.{max(digits - 1, 1)}e}" if 0 < abs(v) < 0.5 * 10**-digits else f"{v:.{digits}f}"

    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)
