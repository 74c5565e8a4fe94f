"""pytest options of ddipp: the --run-* flags opt in to the tiers that start real processes."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("ddipp", "ddipp's test tiers")
    group.addoption(
        "--run-notebooks",
        action="store_true",
        default=False,
        help="also execute every notebook in tests/notebooks/ through nbclient on a real kernel",
    )
    group.addoption(
        "--run-slow",
        action="store_true",
        default=False,
        help="also run tests that start real CPU ranks in this process",
    )
    group.addoption(
        "--run-gpu",
        action="store_true",
        default=False,
        help="also run the tests that start GPU ranks (they skip where no CUDA GPU is visible)",
    )
    group.addoption(
        "--run-browser",
        action="store_true",
        default=False,
        help="also run notebooks through JupyterLab in headless chromium (tests/test_browser.py)",
    )
    group.addoption(
        "--screenshots",
        default=None,
        metavar="DIR",
        help="keep the browser tests' screenshots in DIR (make docs-images: docs/images)",
    )
    group.addoption(
        "--run-multihost",
        action="store_true",
        default=False,
        help="also run the tests that attach to engines on simulated hosts (namespaces; needs root)",
    )


# Per marker: the option that opts in to its tier, and what a skipped test says.
TIERS = {
    "notebook": ("--run-notebooks", "needs --run-notebooks"),
    "slow": ("--run-slow", "needs --run-slow"),
    "browser": ("--run-browser", "needs --run-browser"),
    "gpu": ("--run-gpu", "needs --run-gpu and CUDA GPUs: `make gpu-check` runs this tier (docs/gpu.md)"),
    "multihost": (
        "--run-multihost",
        "needs --run-multihost, as root or in a user namespace (simulated hosts are namespaces)",
    ),
}
NO_GPU = (
    "needs a CUDA GPU, and torch.cuda.device_count() is 0 here: "
    "run `make gpu-check` on a machine with one (docs/gpu.md)"
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        for marker, (option, reason) in TIERS.items():
            if marker in item.keywords and not config.getoption(option):
                item.add_marker(pytest.mark.skip(reason=reason))
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if gpu_items and config.getoption("--run-gpu"):
        import torch

        if torch.cuda.device_count() == 0:
            for item in gpu_items:
                item.add_marker(pytest.mark.skip(reason=NO_GPU))


@pytest.fixture(autouse=True, scope="session")
def private_ipython_dir(tmp_path_factory: pytest.TempPathFactory):
    """Connection files of the clusters that tests start go to a folder of this run alone."""
    import os

    previous = os.environ.get("IPYTHONDIR")
    os.environ["IPYTHONDIR"] = str(tmp_path_factory.mktemp("ipython"))
    yield
    if previous is None:
        os.environ.pop("IPYTHONDIR", None)
    else:
        os.environ["IPYTHONDIR"] = previous
