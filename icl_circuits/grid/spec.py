"""A grid: models x tasks x analyses x seeds x demo counts x templates, and the cells it expands to.

``Grid(models=[...], tasks=[...], analyses=[...], seeds=[...], params={...})`` is the study; every
combination of its axes is one :class:`Cell`, one unit of work that a worker runs on a loaded model
(build the cell's prompts, call the registered analysis, save its Result). A cell is named by its
**key**, a hash of everything its numbers depend on:

    key = sha256(json({analysis, params, model identity, task, n_demos, template, seed,
                       n_prompts, prepend_bos, single_token, package version}))[:20]

where the model identity (``grid.models.model_identity``) is the model's name, the sha256 of its
weights, the weight processing, the dtype and the backend. Two grids that share a cell share its key,
so a store computes it once.

Grids are written in Python or in a YAML / TOML file with the same fields (:meth:`Grid.from_file`)::

    models: [toy-icl]                  # a name, or {name: ..., processing: false, dtype: float32, backend: hooked}
    tasks: [antonym, country-capital]
    analyses: [accuracy, task_vector]
    seeds: [0, 1]
    n_demos: [8]
    templates: [null]                  # null: the model's default template
    n_prompts: 32
    params: {task_vector: {layers: [0, 1, 2]}}
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

__all__ = ["Grid", "ModelSpec", "Cell", "GridSpecError"]

_LOAD_FIELDS = ("processing", "dtype", "backend")
_FIELDS = ("models", "tasks", "analyses", "seeds", "n_demos", "templates", "n_prompts", "params",
           "prepend_bos", "single_token", "name")


class GridSpecError(ValueError):
    """A grid spec that cannot be run; the message names the field and what was expected."""


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A model of a grid: the ``load_model`` name and the load options that change its numbers
    (``processing``: None is load_model's default; ``dtype``: None is float32; ``backend``: None is
    the installed TransformerLens's)."""

    name: str
    processing: bool | None = None
    dtype: str | None = None
    backend: str | None = None

    @classmethod
    def of(cls, value: Any, where: str = "models") -> "ModelSpec":
        """A ModelSpec from a name or a mapping ``{name, processing, dtype, backend}``."""
        if isinstance(value, ModelSpec):
            return value
        if isinstance(value, str) and value.strip():
            return cls(value.strip())
        if isinstance(value, Mapping):
            extra = set(value) - {"name", *_LOAD_FIELDS}
            if extra or not isinstance(value.get("name"), str) or not value["name"].strip():
                raise GridSpecError(f"{where}: a model is a name or a mapping with 'name' and optionally "
                                    f"{', '.join(_LOAD_FIELDS)}; got {dict(value)!r}")
            if value.get("processing") is not None and not isinstance(value["processing"], bool):
                raise GridSpecError(f"{where}: processing must be true, false or null, got {value['processing']!r}")
            for f in ("dtype", "backend"):
                if value.get(f) is not None and not isinstance(value[f], str):
                    raise GridSpecError(f"{where}: {f} must be a string or null, got {value[f]!r}")
            return cls(value["name"].strip(), value.get("processing"), value.get("dtype"), value.get("backend"))
        raise GridSpecError(f"{where}: a model is a non-empty name or a mapping with 'name', got {value!r}")

    def load_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``load_model(self.name, **kwargs)``."""
        return {k: getattr(self, k) for k in _LOAD_FIELDS if getattr(self, k) is not None}

    @property
    def label(self) -> str:
        """The name, with the non-default load options: ``toy-icl[processing=True]``."""
        opts = ",".join(f"{k}={v}" for k, v in self.load_kwargs().items())
        return f"{self.name}[{opts}]" if opts else self.name


@dataclasses.dataclass(frozen=True)
class Cell:
    """One unit of work: one analysis of one model on one task at one seed, demo count and template.
    ``params`` are the analysis's keyword arguments (JSON values)."""

    model: ModelSpec
    task: str
    analysis: str
    seed: int
    n_demos: int
    template: str | None
    n_prompts: int
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    prepend_bos: bool | None = None
    single_token: bool = False

    def record(self) -> dict[str, Any]:
        """The cell as JSON values (what ``cell.json`` stores and :meth:`from_record` reads)."""
        d = dataclasses.asdict(self)
        d["model"] = dataclasses.asdict(self.model)
        return d

    @classmethod
    def from_record(cls, d: Mapping[str, Any]) -> "Cell":
        return cls(**{**d, "model": ModelSpec.of(d["model"])})

    def key(self, identity: Mapping[str, Any], version: str) -> str:
        """The content address of this cell given its model's identity (``model_identity``) and the
        package version: the first 20 hex digits of the sha256 of their canonical JSON."""
        payload = {**{k: v for k, v in self.record().items() if k != "model"},
                   "model": dict(identity), "version": version}
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=_canonical)
        return hashlib.sha256(text.encode()).hexdigest()[:20]

    @property
    def label(self) -> str:
        """A short human name: ``toy-icl antonym accuracy k=8 seed=0``."""
        tmpl = "" if self.template is None else f" template={self.template!r}"
        return f"{self.model.label} {self.task} {self.analysis} k={self.n_demos} seed={self.seed}{tmpl}"


def _canonical(v: Any) -> Any:
    if isinstance(v, tuple):
        return list(v)
    raise TypeError(f"a grid parameter must be a JSON value (number, string, bool, null, list, mapping), "
                    f"got {type(v).__name__}")


def _names(value: Any, field: str) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, Sequence) or isinstance(items, (bytes, Mapping)) or not items:
        raise GridSpecError(f"{field} must be a non-empty list of names, got {value!r}")
    out = []
    for v in items:
        if not isinstance(v, str) or not v.strip():
            raise GridSpecError(f"{field} must hold non-empty strings, got {v!r}")
        out.append(v.strip())
    if len(set(out)) != len(out):
        raise GridSpecError(f"{field} lists a name twice: {out!r}")
    return out


def _ints(value: Any, field: str, *, minimum: int) -> list[int]:
    items = [value] if isinstance(value, int) else value
    if not isinstance(items, Sequence) or isinstance(items, (str, bytes)) or not items:
        raise GridSpecError(f"{field} must be a non-empty list of integers >= {minimum}, got {value!r}")
    for v in items:
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
            raise GridSpecError(f"{field} must hold integers >= {minimum}, got {v!r}")
    if len(set(items)) != len(items):
        raise GridSpecError(f"{field} lists a value twice: {list(items)!r}")
    return list(items)


@dataclasses.dataclass(frozen=True)
class Grid:
    """A study: every combination of ``models`` x ``tasks`` x ``analyses`` x ``seeds`` x ``n_demos`` x
    ``templates`` is a :class:`Cell`, with ``n_prompts`` prompts each and ``params[analysis]`` as that
    analysis's keyword arguments. ``analyses`` are names of the registry (``grid.registry``);
    ``templates`` entries are template strings (``"{x} -> {y}"``) or None (the model's default)."""

    models: Sequence[Any]
    tasks: Sequence[str]
    analyses: Sequence[str]
    seeds: Sequence[int] = (0,)
    n_demos: Sequence[int] = (8,)
    templates: Sequence[str | None] = (None,)
    n_prompts: int = 32
    params: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    prepend_bos: bool | None = None
    single_token: bool = False
    name: str = "grid"

    def __post_init__(self) -> None:
        set_ = lambda f, v: object.__setattr__(self, f, v)  # noqa: E731  (frozen: normalise once, here)
        models = [self.models] if isinstance(self.models, (str, Mapping, ModelSpec)) else self.models
        if not isinstance(models, Sequence) or not models:
            raise GridSpecError(f"models must be a non-empty list of model names or mappings, got {self.models!r}")
        specs = tuple(ModelSpec.of(m, f"models[{i}]") for i, m in enumerate(models))
        if len(set(specs)) != len(specs):
            raise GridSpecError(f"models lists a model twice: {[m.label for m in specs]!r}")
        set_("models", specs)
        set_("tasks", tuple(_names(self.tasks, "tasks")))
        set_("analyses", tuple(_names(self.analyses, "analyses")))
        set_("seeds", tuple(_ints(self.seeds, "seeds", minimum=0)))
        set_("n_demos", tuple(_ints(self.n_demos, "n_demos", minimum=0)))
        templates = [self.templates] if self.templates is None or isinstance(self.templates, str) else self.templates
        if not isinstance(templates, Sequence) or not templates or any(
                t is not None and (not isinstance(t, str) or "{x}" not in t or "{y}" not in t) for t in templates):
            raise GridSpecError(f"templates must be a non-empty list of template strings with {{x}} and {{y}} "
                                f"(or null for the model's default), got {self.templates!r}")
        set_("templates", tuple(templates))
        if isinstance(self.n_prompts, bool) or not isinstance(self.n_prompts, int) or self.n_prompts < 1:
            raise GridSpecError(f"n_prompts must be a positive integer, got {self.n_prompts!r}")
        if self.prepend_bos is not None and not isinstance(self.prepend_bos, bool):
            raise GridSpecError(f"prepend_bos must be true, false or null, got {self.prepend_bos!r}")
        if not isinstance(self.single_token, bool):
            raise GridSpecError(f"single_token must be true or false, got {self.single_token!r}")
        if not isinstance(self.params, Mapping) or any(not isinstance(v, Mapping) for v in self.params.values()):
            raise GridSpecError("params must map an analysis name to a mapping of its keyword arguments, "
                                f"got {self.params!r}")
        unknown = set(self.params) - set(self.analyses)
        if unknown:
            raise GridSpecError(f"params names analyses that are not in the grid: {sorted(unknown)!r} "
                                f"(analyses: {list(self.analyses)!r})")
        set_("params", {k: json.loads(json.dumps(dict(v), default=_canonical)) for k, v in self.params.items()})
        if not isinstance(self.name, str) or not self.name.strip():
            raise GridSpecError(f"name must be a non-empty string, got {self.name!r}")

    def cells(self) -> Iterator[Cell]:
        """Every cell, models outermost (so a worker's cells of one model come together), then tasks,
        analyses, seeds, demo counts, templates."""
        for m in self.models:
            for task in self.tasks:
                for analysis in self.analyses:
                    for seed in self.seeds:
                        for k in self.n_demos:
                            for tmpl in self.templates:
                                yield Cell(m, task, analysis, seed, k, tmpl, self.n_prompts,
                                           dict(self.params.get(analysis, {})), self.prepend_bos, self.single_token)

    def __len__(self) -> int:
        return (len(self.models) * len(self.tasks) * len(self.analyses) * len(self.seeds) * len(self.n_demos)
                * len(self.templates))

    def record(self) -> dict[str, Any]:
        """The grid as JSON values (what :meth:`from_dict` reads)."""
        d = {f: getattr(self, f) for f in _FIELDS}
        d["models"] = [dataclasses.asdict(m) for m in self.models]
        return json.loads(json.dumps(d, default=_canonical))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "grid spec") -> "Grid":
        """A grid from a mapping with the fields of :class:`Grid` (unknown fields are an error)."""
        if not isinstance(d, Mapping):
            raise GridSpecError(f"{where} must be a mapping of the grid's fields, got {type(d).__name__}")
        unknown = set(d) - set(_FIELDS)
        if unknown:
            raise GridSpecError(f"{where}: unknown field(s) {sorted(unknown)!r}; a grid has {', '.join(_FIELDS)}")
        missing = [f for f in ("models", "tasks", "analyses") if f not in d]
        if missing:
            raise GridSpecError(f"{where}: missing field(s) {missing!r}")
        try:
            return cls(**d)
        except GridSpecError as err:
            raise GridSpecError(f"{where}: {err}") from None

    @classmethod
    def from_file(cls, path: str | Path) -> "Grid":
        """A grid from a ``.yaml`` / ``.yml`` or ``.toml`` file with the fields of :class:`Grid`."""
        p = Path(path)
        if p.suffix.lower() not in (".yaml", ".yml", ".toml"):
            raise GridSpecError(f"spec {p} must be a .yaml, .yml or .toml file")
        if not p.is_file():
            raise GridSpecError(f"spec {p}: no such file")
        text = p.read_text(encoding="utf-8")
        try:
            if p.suffix.lower() == ".toml":
                import tomllib  # Python >= 3.11

                data = tomllib.loads(text)
            else:
                import yaml

                data = yaml.safe_load(text)
        except Exception as err:  # yaml.YAMLError / tomllib.TOMLDecodeError: report them as a spec error
            raise GridSpecError(f"spec {p} is not valid {p.suffix.lstrip('.').upper()}: {err}") from None
        return cls.from_dict(data if data is not None else {}, where=f"spec {p}")
