"""Fixtures shared by the tests that start real ranks."""

from __future__ import annotations

import pytest
from IPython.core.interactiveshell import InteractiveShell

from ddipp.magics import DipMagics
from ddipp.session import DipSession
from tests.processes import descendants_alive


@pytest.fixture
def notebook():
    """An IPython shell with ddipp's magics on a fresh session; nothing may outlive it."""
    shell = InteractiveShell.instance()
    session = DipSession()
    shell.register_magics(DipMagics(shell, session))
    yield shell, session
    session.shutdown()
    assert descendants_alive() == []
