"""Download the wheels `make gpu-check` installs on a GPU machine that has no network.

    python -m bench.gpu_wheels [--python 3.12] [--dest .whl]

The machine is taken to have Python, torch, accelerate and numpy (and what they require), and
the scientific packages that `PREINSTALLED` names. Everything else that ddipp, its GPU tests
and the fastai lesson import is downloaded here, at the versions installed in this
environment (the ones its tests passed with), as binary wheels for CPython `--python` on
Linux x86_64, into `DEST/py<version>/`.

The carried set must stay under 64 MiB: groups (`GROUPS`) are added in order while they fit,
and `CARRIED.txt` beside the wheels says what was left out. Wheels bigger than
`REPACK_OVER_BYTES` are recompressed with LZMA (pip reads such wheels: they are zip files all
the same) without the library's own test suite, their RECORD updated to match. `torchvision`
is pinned to this environment's torch: `bench.gpu_check` installs it only where the machine's
torch matches.
"""

from __future__ import annotations

import argparse
import csv
import io
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# What ddipp's GPU tier imports, in the order it is carried while the set stays under the
# limit: ddipp and pytest (every GPU test), fastai 2 (its fits and lesson), torchvision (vision).
GROUPS = {"core": ("ddipp", "pytest"), "fastai": ("fastai",), "vision": ("torchvision",)}
# On the GPU machine already, with everything they require: torch, accelerate and numpy on any
# GPU machine this is for; the rest is the scientific stack of the CUDA image the check is
# prepared for (its torchvision matches its torch, which a carried one would not).
# `bench.gpu_check` says in its report which of them is missing where it runs.
PREINSTALLED = (
    "torch",
    "accelerate",
    "numpy",
    "torchvision",
    "scipy",
    "pandas",
    "matplotlib",
    "scikit-learn",
    "pillow",
    "pytest",
    "requests",
    "pyyaml",
)
# Required on paper, never imported by what runs there (each checked by `make gpu-rehearsal`).
LEFT_OUT = {
    "spacy": "fastai.text only; the lesson uses tabular and vision",
    "debugpy": "ipykernel runs without it (no debugger in the ranks)",
    "uvloop": "python-fasthtml's web server; fastprogress imports only its HTML helpers",
    "uvicorn": "python-fasthtml's web server",
    "httptools": "python-fasthtml's web server",
    "watchfiles": "python-fasthtml's web server",
    "websockets": "python-fasthtml's web server",
}
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
REPACK_OVER_BYTES = 2 * 2**20
LIMIT_BYTES = 64 * 2**20
TOO_BIG = "with it the wheels would take {size:.1f} MiB, over the {limit:.0f} MiB that travel"
# Written beside the wheels: what was carried and left out, for the GPU check's report.
CARRIED = "CARRIED.txt"


def requirements_of(name: str, environment: dict[str, str]) -> list[str]:
    """Distributions `name` requires (no extras) under the marker `environment`."""
    from packaging.requirements import Requirement

    found = []
    for line in metadata.distribution(name).requires or []:
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate(environment):
            found.append(canonical(requirement.name))
    return found


def canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def closure(roots: tuple[str, ...], environment: dict[str, str], stop: set[str]) -> set[str]:
    """`roots` and everything they require, transitively, not walking into `stop`."""
    seen: set[str] = set()
    todo = [canonical(root) for root in roots]
    while todo:
        name = todo.pop()
        if name in seen or name in stop:
            continue
        seen.add(name)
        todo.extend(requirements_of(name, environment))
    return seen


def groups(python: str) -> dict[str, dict[str, str]]:
    """Per group of `GROUPS`, distribution -> version to carry for CPython `python` on Linux x86_64."""
    from packaging.markers import default_environment

    environment = default_environment() | {
        "python_version": ".".join(python.split(".")[:2]),
        "python_full_version": python if python.count(".") == 2 else f"{python}.0",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": "x86_64",
    }
    taken = closure(PREINSTALLED, environment, set()) | set(LEFT_OUT)
    found = {}
    for index, (group, roots) in enumerate(GROUPS.items()):
        later = {
            canonical(root) for roots_after in list(GROUPS.values())[index + 1 :] for root in roots_after
        }
        names = closure(roots, environment, taken | later) - taken
        taken |= names
        # ddipp itself travels as the tree; only what it requires is carried.
        found[group] = {name: metadata.version(name) for name in sorted(names - {"ddipp"})}
    return found


def download(python: str, pins: dict[str, str], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    platforms = [flag for platform in PLATFORMS for flag in ("--platform", platform)]
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"]
    command += ["--python-version", python, "--implementation", "cp", *platforms, "-d", str(folder)]
    subprocess.run([*command, *(f"{name}=={version}" for name, version in pins.items())], check=True)


def repack(wheel: Path) -> None:
    """Recompress `wheel` with LZMA, leaving out its test suite; RECORD lists what is left."""
    with zipfile.ZipFile(wheel) as source:
        kept = [info for info in source.infolist() if not is_test_file(info.filename)]
        contents = {info.filename: source.read(info) for info in kept}
    record = next(name for name in contents if name.endswith(".dist-info/RECORD"))
    rows = [row for row in csv.reader(io.StringIO(contents[record].decode())) if row and row[0] in contents]
    lines = io.StringIO()
    csv.writer(lines, lineterminator="\n").writerows(rows)
    contents[record] = lines.getvalue().encode()
    with zipfile.ZipFile(wheel, "w", compression=zipfile.ZIP_LZMA) as target:
        for name, data in contents.items():
            target.writestr(name, data)


def is_test_file(name: str) -> bool:
    """A file of the library's own test suite (`pkg/tests/...`), never imported by users."""
    parts = name.split("/")
    return any(part in ("tests", "testing") for part in parts[1:-1]) and not parts[0].endswith(".dist-info")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--python", default="3.12", help="the GPU machine's Python: 3.12, or 3.11.7 to be exact"
    )
    parser.add_argument("--dest", type=Path, default=ROOT / ".whl", help="where the wheels go")
    args = parser.parse_args(argv)
    folder = args.dest / ("py" + ".".join(args.python.split(".")[:2]))
    notes = [f"not carried: {name} ({reason})" for name, reason in LEFT_OUT.items()]
    for index, (group, pins) in enumerate(groups(args.python).items()):
        if not pins:
            continue
        before = set(folder.glob("*.whl"))
        download(args.python, pins, folder)
        added = set(folder.glob("*.whl")) - before
        for wheel in added:
            if wheel.stat().st_size > REPACK_OVER_BYTES:
                repack(wheel)
        size = sum(wheel.stat().st_size for wheel in folder.glob("*.whl"))
        if size > LIMIT_BYTES:
            for wheel in added:
                wheel.unlink()
            notes.append(
                f"group {group} not carried: {TOO_BIG.format(size=size / 2**20, limit=LIMIT_BYTES / 2**20)}"
            )
            if group == "core":
                print(notes[-1], file=sys.stderr)
                return 1
            # Each group needs the ones before it (vision's tests are fastai's).
            notes.extend(
                f"group {later} not carried: it needs group {group}" for later in list(GROUPS)[index + 1 :]
            )
            break
        notes.append(f"group {group} carried: {len(pins)} distributions, {size / 2**20:.1f} MiB in all")
    (folder / CARRIED).write_text("\n".join(notes) + "\n")
    print(f"{folder}:", *notes, sep="\n  ")
    return 0


if __name__ == "__main__":
    sys.exit(main())
