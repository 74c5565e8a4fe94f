"""pytest options of ddipp: `--run-notebooks`, `--run-slow` and `--run-browser` opt in to real processes."""

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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    tiers = {"notebook": "--run-notebooks", "slow": "--run-slow", "browser": "--run-browser"}
    for item in items:
        for marker, option in tiers.items():
            if marker in item.keywords and not config.getoption(option):
                item.add_marker(pytest.mark.skip(reason=f"needs {option}"))


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
