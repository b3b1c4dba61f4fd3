"""Regenerate the checked-in Python stubs from protos/mor/v1 (or check that they are fresh).

    python -m services.common.wire.generate           # rewrite stale stubs, delete orphans
    python -m services.common.wire.generate --check   # exit 1 and list stale stubs, write nothing

protoc writes `from mor.v1 import common_pb2`, which only works with protos/ on sys.path. We
flatten mor/v1 into this package and rewrite those imports (and the module names protoc bakes
into message classes, which pickle relies on) to `services.common.wire`. The output depends only
on the .proto files and the grpcio-tools version, so CI can compare bytes.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from collections.abc import Sequence
from importlib import metadata, resources
from pathlib import Path

WIRE_PACKAGE = "services.common.wire"
WIRE_DIR = Path(__file__).resolve().parent
REPO_ROOT = WIRE_DIR.parents[2]
PROTO_ROOT = REPO_ROOT / "protos"
PROTO_PACKAGE_DIR = "mor/v1"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")

_IMPORT_RE = re.compile(r"^from mor\.v1 import (\w+) as ", re.MULTILINE)
_MODULE_NAME_RE = re.compile(r"'mor\.v1\.(\w+_pb2)'")


def proto_files(proto_root: Path = PROTO_ROOT) -> list[str]:
    """Proto paths relative to `proto_root`, sorted so protoc sees the same order everywhere."""
    return sorted(
        p.relative_to(proto_root).as_posix() for p in (proto_root / PROTO_PACKAGE_DIR).glob("*.proto")
    )


def run_protoc(args: Sequence[str], proto_root: Path = PROTO_ROOT) -> None:
    """Run grpc_tools' bundled protoc with our include path and the well-known types."""
    from grpc_tools import protoc

    well_known = resources.files("grpc_tools") / "_proto"
    argv = ["grpc_tools.protoc", f"-I{proto_root}", f"-I{well_known}", *args]
    if protoc.main(argv) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")


def _rewrite(text: str) -> str:
    text = _IMPORT_RE.sub(rf"from {WIRE_PACKAGE} import \1 as ", text)
    text = _MODULE_NAME_RE.sub(rf"'{WIRE_PACKAGE}.\1'", text)
    if re.search(r"^\s*(from|import) mor\b", text, re.MULTILINE):
        # A protoc upgrade changed its import style; failing beats shipping unimportable stubs.
        raise RuntimeError("generated code still imports the `mor` package; update _rewrite()")
    return text


def render(proto_root: Path = PROTO_ROOT) -> dict[str, bytes]:
    """Generate all stubs in memory: file name (flat, inside the wire package) -> content."""
    files = proto_files(proto_root)
    if not files:
        raise RuntimeError(f"no .proto files under {proto_root / PROTO_PACKAGE_DIR}")
    with tempfile.TemporaryDirectory() as tmp:
        run_protoc(
            [f"--python_out={tmp}", f"--pyi_out={tmp}", f"--grpc_python_out={tmp}", *files], proto_root
        )
        produced = sorted((Path(tmp) / PROTO_PACKAGE_DIR).iterdir())
        return {p.name: _rewrite(p.read_text(encoding="utf-8")).encode("utf-8") for p in produced}


def checked_in(target: Path) -> dict[str, bytes]:
    """The generated-looking files currently in `target`."""
    return {
        p.name: p.read_bytes()
        for p in sorted(target.iterdir())
        if p.is_file() and p.name.endswith(GENERATED_SUFFIXES)
    }


def diff(fresh: dict[str, bytes], current: dict[str, bytes]) -> list[str]:
    """Names that are missing, different, or orphaned (no longer generated), sorted."""
    names = set(fresh) | set(current)
    return sorted(n for n in names if fresh.get(n) != current.get(n))


def write(fresh: dict[str, bytes], target: Path) -> list[str]:
    """Bring `target` in line with `fresh`; returns the names that changed."""
    target.mkdir(parents=True, exist_ok=True)
    changed = diff(fresh, checked_in(target))
    for name in changed:
        path = target / name
        if name in fresh:
            path.write_bytes(fresh[name])
        else:
            path.unlink()
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.common.wire.generate", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--check", action="store_true", help="list stale stubs and exit 1 instead of writing")
    parser.add_argument("--out", type=Path, default=WIRE_DIR, help="stub directory (default: this package)")
    parser.add_argument(
        "--proto-root", type=Path, default=PROTO_ROOT, help="directory holding mor/v1/*.proto"
    )
    args = parser.parse_args(argv)

    fresh = render(args.proto_root)
    if args.check:
        stale = diff(fresh, checked_in(args.out)) if args.out.is_dir() else sorted(fresh)
        for name in stale:
            print(f"stale: {args.out / name}")
        if stale:
            # Output differs between grpcio-tools releases, so name the one used here.
            tools = metadata.version("grpcio-tools")
            print(
                f"run `python -m services.common.wire.generate` (grpcio-tools {tools}) and commit the result",
                file=sys.stderr,
            )
        return 1 if stale else 0
    for name in write(fresh, args.out):
        print(f"wrote: {args.out / name}" if name in fresh else f"removed: {args.out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
