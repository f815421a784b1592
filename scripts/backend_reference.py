"""Write the hooked backend's numbers that ``tests/core/test_backends.py`` compares a TransformerBridge
against (run under TransformerLens 3.x; one file per model in tests/core/data/).

    python scripts/backend_reference.py [--models toy-icl smollm2-135m] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["toy-icl", "smollm2-135m"])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from safetensors.torch import save_file

    from icl_circuits import load_model
    from icl_circuits.core.runner.backend import available_backends
    from tests.core.backend_suite import run_suite

    if available_backends() != ("hooked",):
        raise SystemExit("run this under TransformerLens 3.x: the reference is the hooked backend's numbers")
    for name in args.models:
        t = time.perf_counter()
        out = run_suite(load_model(name, device="cpu"))
        path = ROOT / "tests" / "core" / "data" / f"backend_reference_{name}.safetensors"
        save_file(out, str(path))
        print(f"{name}: {len(out)} tensors -> {path.relative_to(ROOT)} ({time.perf_counter() - t:.1f} s)", flush=True)


if __name__ == "__main__":
    main()
