"""Print a pip constraints file pinning every direct dependency of icl-circuits to its lower bound.

    python scripts/lowest_constraints.py [--extras dev,real] > constraints-lowest.txt
    pip install -c constraints-lowest.txt -e ".[dev,real]"
    python scripts/lowest_constraints.py --check     # each installed version is its lower bound

Reads ``[project] dependencies`` and the named ``[project.optional-dependencies]`` from
pyproject.toml and writes ``name==X`` for each requirement whose specifier says ``>=X``, so that an
install with ``-c`` gets exactly the lowest versions pyproject.toml claims to support (``make
test-lowest``, run by ``.ci/run``). A requirement without a ``>=`` bound is an error: every direct
dependency must state the oldest version it is tested with. Upper bounds (``<5``) are left to the
specifier itself; ``make test-tl4`` installs the newest release they admit.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path

from importlib.metadata import PackageNotFoundError, version

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def lower_bounds(pyproject: Path, extras: list[str]) -> dict[str, str]:
    """``{distribution name: lowest version}`` over the project's dependencies and the given extras.

    Raises ``ValueError`` naming the requirement when one has no ``>=`` lower bound, or when an
    extra is not declared."""
    project = tomllib.loads(pyproject.read_text("utf-8"))["project"]
    optional = project.get("optional-dependencies", {})
    unknown = [e for e in extras if e not in optional]
    if unknown:
        raise ValueError(f"extras {unknown} are not in {pyproject} (declared: {sorted(optional)})")
    lines = list(project["dependencies"]) + [r for e in extras for r in optional[e]]
    out: dict[str, str] = {}
    for line in lines:
        req = Requirement(line)
        lows = [s.version for s in req.specifier if s.operator == ">="]
        if len(lows) != 1:
            raise ValueError(f"{pyproject}: requirement {line!r} needs exactly one '>=' lower bound")
        out[req.name] = lows[0]
    return out


def mismatches(bounds: dict[str, str]) -> list[str]:
    """One line per dependency whose installed version is not its lower bound (or is missing)."""
    out = []
    for name, low in bounds.items():
        try:
            have = version(name)
        except PackageNotFoundError:
            out.append(f"{name}: not installed (lower bound {low})")
            continue
        if Version(have).release != Version(low).release + (0,) * (len(Version(have).release) - len(Version(low).release)):
            out.append(f"{name}: {have} installed, lower bound {low}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--extras", default="dev,real", help="comma-separated extras to include (default dev,real)")
    parser.add_argument("--pyproject", type=Path, default=ROOT / "pyproject.toml")
    parser.add_argument("--check", action="store_true",
                        help="instead of printing, exit 1 unless every installed version equals its lower bound")
    args = parser.parse_args()
    try:
        bounds = lower_bounds(args.pyproject, [e for e in args.extras.split(",") if e])
    except (ValueError, OSError) as err:
        sys.exit(f"lowest_constraints: {err}")
    if args.check:
        bad = mismatches(bounds)
        if bad:
            sys.exit("lowest_constraints --check: not the lowest versions:\n  " + "\n  ".join(bad))
        print(f"lowest_constraints --check: {len(bounds)} direct dependencies at their lower bounds")
        return
    for name, version in bounds.items():
        print(f"{name}=={version}")


if __name__ == "__main__":
    main()
