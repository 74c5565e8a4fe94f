"""Which fastai major version a test needs: `make test` runs each in its own environment."""

from __future__ import annotations

import pytest

from ddipp.apps import installed_version

ENVIRONMENT_OF = {1: ".venv-fastai1", 2: ".venv"}


def fastai_mismatch(major: int) -> str | None:
    """Why a test that needs fastai `major`.x cannot run here; None if it can."""
    found = installed_version("fastai")
    if found is not None and int(found.split(".")[0]) == major:
        return None
    return f"needs fastai {major}.x (found {found}): it runs in {ENVIRONMENT_OF[major]}"


def requires_fastai(major: int) -> list[pytest.MarkDecorator]:
    """Marks of a test that needs fastai `major`.x: selected by `-m fastai`, skipped elsewhere."""
    reason = fastai_mismatch(major)
    return [pytest.mark.fastai, pytest.mark.skipif(reason is not None, reason=reason or "")]
