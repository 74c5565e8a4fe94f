"""ddipp: IPython magics that run notebook cells on a PyTorch DDP process group."""

from __future__ import annotations

import atexit

from .errors import DdippError
from .session import DipSession

__all__ = ["DdippError", "DipSession", "load_ipython_extension", "unload_ipython_extension"]
__version__ = "0.1.0"

_SESSION_ATTR = "_ddipp_session"


def load_ipython_extension(ipython) -> None:
    """`%load_ext ddipp`: register the magics; the group is stopped when the kernel exits."""
    from .magics import DipMagics

    session = getattr(ipython, _SESSION_ATTR, None)
    if session is None:
        session = DipSession()
        setattr(ipython, _SESSION_ATTR, session)
        atexit.register(session.shutdown)
    ipython.register_magics(DipMagics(ipython, session))


def unload_ipython_extension(ipython) -> None:
    """`%unload_ext ddipp`: stop the group and everything it started."""
    session = getattr(ipython, _SESSION_ATTR, None)
    if session is not None:
        session.shutdown()
        atexit.unregister(session.shutdown)
        delattr(ipython, _SESSION_ATTR)
