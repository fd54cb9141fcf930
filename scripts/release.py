"""Build a release: the Python package (sdist and wheel) and the HACS zip of the integration.

    python scripts/release.py check [--tag vX.Y.Z]
    python scripts/release.py build [--tag vX.Y.Z] [--out dist] [--no-isolation]

The version is written once, in `edge_inspector/__init__.py`; pyproject reads it from there.
`check` makes sure the integration's manifest says the same (its `version` and the exact pin of
its `edge-inspector` requirement) and, with `--tag`, that the tag is that version. `build` checks,
then writes `edge_inspector-X.Y.Z.tar.gz`, `edge_inspector-X.Y.Z-py3-none-any.whl` and
`edge_inspector.zip` (the files of `custom_components/edge_inspector` at the zip's root, as HACS
unpacks a `zip_release`) into the output folder. The release workflow and the HACS install test
both run this script, so what is tested is what is published.
"""

from __future__ import annotations

import argparse
import ast
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INTEGRATION = ROOT / "custom_components" / "edge_inspector"
ZIP_NAME = "edge_inspector.zip"  # hacs.json's `filename`


class ReleaseError(Exception):
    """The release cannot be built as asked."""


def package_version() -> str:
    """`__version__` from the package's `__init__.py`, read without importing it."""
    tree = ast.parse((ROOT / "edge_inspector" / "__init__.py").read_text())
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and [getattr(t, "id", None) for t in node.targets] == ["__version__"]
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            return node.value.value
    raise ReleaseError("edge_inspector/__init__.py has no literal __version__")


def check(tag: str | None) -> str:
    """The version, once everything that names it agrees; ReleaseError otherwise."""
    version = package_version()
    manifest = json.loads((INTEGRATION / "manifest.json").read_text())
    problems = []
    if manifest.get("version") != version:
        problems.append(f"manifest.json version is {manifest.get('version')!r}")
    pins = [r for r in manifest.get("requirements", []) if r.startswith("edge-inspector")]
    if pins != [f"edge-inspector=={version}"]:
        problems.append(f"manifest.json requires {pins!r}, not ['edge-inspector=={version}']")
    if tag is not None and tag.removeprefix("v") != version:
        problems.append(f"the tag {tag!r} is not v{version}")
    if problems:
        raise ReleaseError(f"version {version}: " + "; ".join(problems))
    return version


def hacs_zip(out: Path) -> Path:
    """The integration's files at the zip's root (no caches)."""
    path = out / ZIP_NAME
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in sorted(INTEGRATION.rglob("*")):
            if file.is_file() and "__pycache__" not in file.parts and file.suffix != ".pyc":
                archive.write(file, file.relative_to(INTEGRATION).as_posix())
    return path


def build(tag: str | None, out: Path, isolation: bool) -> list[Path]:
    version = check(tag)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("edge_inspector*"):
        old.unlink()
    command = [sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", str(out)]
    if not isolation:
        command.append("--no-isolation")
    # setuptools works in the source tree: a `build/` left from before would put files deleted
    # since into the wheel, and its metadata would make this checkout look like an installed
    # `edge-inspector` to anything run from here. Neither stays.
    leftovers = (ROOT / "build", ROOT / "edge_inspector.egg-info")
    for path in leftovers:
        shutil.rmtree(path, ignore_errors=True)
    try:
        subprocess.run([*command, str(ROOT)], check=True, stdout=subprocess.DEVNULL)
    finally:
        for path in leftovers:
            shutil.rmtree(path, ignore_errors=True)
    built = sorted(out.glob(f"edge_inspector-{version}*"))
    if len(built) != 2:
        raise ReleaseError(f"expected an sdist and a wheel of {version}, got {built}")
    return [*built, hacs_zip(out)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("check", "build"):
        command = sub.add_parser(name)
        command.add_argument("--tag", help="the release tag, e.g. v0.2.0")
    sub.choices["build"].add_argument("--out", type=Path, default=ROOT / "dist")
    sub.choices["build"].add_argument(
        "--no-isolation",
        action="store_true",
        help="build with this environment's setuptools (no download of build requirements)",
    )
    args = parser.parse_args(argv)
    try:
        if args.command == "check":
            print(check(args.tag))
        else:
            for path in build(args.tag, args.out, isolation=not args.no_isolation):
                print(path)
    except ReleaseError as exc:
        print(f"release: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
