"""Generate the Python stubs in cellplane/v1/ from protos/ (grpcio-tools).

    python scripts/gen_protos.py           # regenerate in place
    python scripts/gen_protos.py --check   # exit 1 if the committed stubs are stale

The output depends on the grpcio-tools version, which pyproject.toml pins.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
PACKAGE = Path("cellplane") / "v1"
INIT = '"""Generated protobuf and gRPC stubs for cellplane.v1 (do not edit)."""\n'


def generate(out_root: Path) -> Path:
    """Write the stubs under ``out_root/cellplane/v1`` and return that directory."""
    import grpc_tools
    from grpc_tools import protoc

    include = Path(grpc_tools.__file__).parent / "_proto"
    sources = sorted(str(p.relative_to(PROTOS)) for p in (PROTOS / PACKAGE).glob("*.proto"))
    args = [
        "grpc_tools.protoc",
        f"-I{PROTOS}",
        f"-I{include}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *sources,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    target = out_root / PACKAGE
    (target / "__init__.py").write_text(INIT)
    return target


def stale_files() -> list[str]:
    """Names of stub files that differ from a fresh generation (empty: up to date)."""
    committed = ROOT / PACKAGE
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        names = {p.name for p in fresh.iterdir()} | {
            p.name for p in committed.glob("*") if p.suffix in {".py", ".pyi"}
        }
        return sorted(
            name
            for name in names
            if not (committed / name).exists()
            or not (fresh / name).exists()
            or not filecmp.cmp(committed / name, fresh / name, shallow=False)
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the stubs are stale")
    opts = parser.parse_args()
    if opts.check:
        stale = stale_files()
        if stale:
            print("stale stubs (run python scripts/gen_protos.py):", ", ".join(stale))
            return 1
        print("stubs are up to date")
        return 0
    target = ROOT / PACKAGE
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        for old in target.glob("*.py*"):
            old.unlink()
        target.mkdir(parents=True, exist_ok=True)
        for new in fresh.iterdir():
            shutil.copy2(new, target / new.name)
    print(f"generated {target.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
