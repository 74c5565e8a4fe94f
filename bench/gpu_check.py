"""`make gpu-check`: ddipp's GPU tier on this machine, with a short report.

    python -m bench.gpu_check [--report PATH] [--budget SECONDS]

Runs with nothing but the standard library until the tests start, so that it works on a GPU
machine that has only Python, torch, accelerate and numpy, and no network: if `.whl/py<X.Y>`
(made by `make gpu-wheels`) is there, its wheels are installed offline into
`build/gpu-site-py<X.Y>` (`pip install --no-index --no-deps --target`), torchvision only where
it matches this torch. Without it the environment must already have ddipp's dependencies (a
normal `.venv`). Then `pytest --run-gpu -m gpu` runs (every GPU test, the fastai fits and the
fastai lesson on GPU ranks), and the report goes to `$OUT/gpu-report.txt` if `OUT` is set,
else `./gpu-report.txt`, with pytest's full output beside it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
import zipfile
from importlib import metadata
from pathlib import Path

from bench.gpu_wheels import CARRIED, PREINSTALLED

ROOT = Path(__file__).resolve().parent.parent
VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"
WHEELS = ROOT / ".whl" / f"py{VERSION}"
SITE = ROOT / "build" / f"gpu-site-py{VERSION}"
# The whole check must end within 8 minutes on one GPU; the install takes well under one.
TESTS_BUDGET_S = 420
MACHINE = (
    "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'GPUs', "
    "torch.cuda.device_count()); [print(' ', i, torch.cuda.get_device_name(i)) "
    "for i in range(torch.cuda.device_count())]; "
    "print('NCCL', '.'.join(map(str, torch.cuda.nccl.version())) if torch.cuda.is_available() else '-')"
)
IMPORTS = "import ddipp, ipyparallel, nbclient, pytest; print('ddipp from', ddipp.__file__)"


def report_path() -> Path:
    return Path(os.environ["OUT"]) / "gpu-report.txt" if os.environ.get("OUT") else Path("gpu-report.txt")


def run(command: list[str], env: dict[str, str], timeout: float | None = None) -> tuple[int, str]:
    """Exit status and combined output of `command` (124 if it ran past `timeout`)."""
    try:
        done = subprocess.run(
            command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as expired:
        output = expired.stdout or ""
        return 124, output if isinstance(output, str) else output.decode(errors="replace")
    return done.returncode, done.stdout + done.stderr


def torchvision_fits(wheel: Path, env: dict[str, str]) -> str:
    """Why the carried torchvision cannot go with this torch, or "" if it can."""
    with zipfile.ZipFile(wheel) as archive:
        meta = next(name for name in archive.namelist() if name.endswith(".dist-info/METADATA"))
        needs = [
            line
            for line in archive.read(meta).decode().splitlines()
            if line.startswith("Requires-Dist: torch")
        ]
    status, found = run([sys.executable, "-c", "import torch; print(torch.__version__)"], env)
    wanted = needs[0].split("=", 1)[-1].strip(" ()=") if needs else ""
    if status != 0 or wanted.rsplit(".", 1)[0] != found.strip().split("+")[0].rsplit(".", 1)[0]:
        return f"{wheel.name} is built for torch {wanted or '?'}, this machine has torch {found.strip()}"
    return ""


def _installed(distribution: str) -> bool:
    try:
        metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return False
    return True


def install(env: dict[str, str], notes: list[str]) -> None:
    """Install the carried wheels into `SITE` and put it on the path of everything started."""
    if not WHEELS.is_dir():
        notes.append(f"no {WHEELS.relative_to(ROOT)}: using this environment's packages as they are")
        return
    if (WHEELS / CARRIED).exists():
        notes.extend((WHEELS / CARRIED).read_text().splitlines())
    missing = [name for name in PREINSTALLED if not _installed(name)]
    if missing:  # not carried: the tests that import them fail or skip, and say so
        notes.append(f"expected on this machine but missing (not carried): {', '.join(missing)}")
    wheels = sorted(WHEELS.glob("*.whl"))
    for wheel in [w for w in wheels if w.name.startswith("torchvision-")]:
        mismatch = torchvision_fits(wheel, env)
        if mismatch:
            wheels.remove(wheel)
            notes.append(f"torchvision not installed: {mismatch}; the vision tests skip")
    shutil.rmtree(SITE, ignore_errors=True)
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-compile"]
    status, output = run([*command, "--target", str(SITE), *map(str, wheels)], env)
    if status != 0:
        raise SystemExit(f"installing the carried wheels failed:\n{output}")
    notes.append(
        f"installed {len(wheels)} wheels from {WHEELS.relative_to(ROOT)} into {SITE.relative_to(ROOT)}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", type=Path, default=report_path(), help="where the report goes")
    parser.add_argument("--budget", type=float, default=TESTS_BUDGET_S, help="seconds the tests may take")
    args = parser.parse_args(argv)
    began = time.monotonic()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SITE), str(ROOT), env.get("PYTHONPATH")]))
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    notes: list[str] = [f"Python {sys.version.split()[0]} ({sys.executable})"]
    install(env, notes)
    installed_s = time.monotonic() - began
    _, machine = run([sys.executable, "-c", MACHINE], env)
    status, imports = run([sys.executable, "-c", IMPORTS], env)
    if status != 0:
        notes.append(f"ddipp does not import here:\n{imports}")
        tests_status, tests = status, ""
    else:
        pytest = [sys.executable, "-m", "pytest", "--run-gpu", "-m", "gpu", "-p", "no:cacheprovider"]
        tests_status, tests = run(
            [*pytest, "-q", "-rs", "--durations=5", "tests/test_gpu.py"], env, args.budget
        )
    summary = [
        line for line in tests.splitlines() if line.startswith(("SKIPPED", "FAILED", "ERROR", "PASSED"))
    ]
    summary += tests.strip().splitlines()[-1:] if tests.strip() else []
    verdict = {0: "passed", 124: f"ran past its {args.budget:g} s budget"}.get(tests_status, "FAILED")
    if tests_status == 0 and " passed" not in (summary[-1] if summary else ""):
        verdict = "nothing ran: every test skipped (see why below)"
    report = [
        f"ddipp GPU check: {verdict} (pytest exit status {tests_status})",
        f"took {time.monotonic() - began:.0f} s, of which {installed_s:.0f} s installing",
        "",
        "machine:",
        *(f"  {line}" for line in machine.strip().splitlines()),
        "",
        "setup:",
        *(f"  {line}" for line in notes),
        "",
        "tests (full output in gpu-pytest.log beside this report):",
        *(f"  {line}" for line in summary),
        "",
    ]
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text("\n".join(report))
    args.report.with_name("gpu-pytest.log").write_text(tests)
    print("\n".join(report))
    return 0 if tests_status == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
