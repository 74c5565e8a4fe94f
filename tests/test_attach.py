"""Attaching to running engines, where no engine needs to run: bad connection files."""

from __future__ import annotations

import pytest

from ddipp.errors import LaunchFailed
from ddipp.fsm import State
from ddipp.session import DipSession
from ddipp.spec import plan_group


@pytest.mark.parametrize("content", [None, "not json", '{"key": "no controller here"}'])
def test_attaching_to_a_file_that_is_not_a_connection_file_fails_and_stays_idle(tmp_path, content):
    path = tmp_path / "connection.json"
    if content is not None:
        path.write_text(content)
    spec, _ = plan_group(attach=str(path), app="none")
    session = DipSession(say=lambda text: None)
    with pytest.raises(LaunchFailed, match="not an ipyparallel cluster file or client connection file"):
        session.start(spec)
    assert session.state is State.IDLE
    assert session.cluster is None
