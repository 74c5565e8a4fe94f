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
    from .magics import AutodipTransformer, DipMagics

    if getattr(ipython, _SESSION_ATTR, None) is not None:
        return
    session = DipSession()
    transformer = AutodipTransformer(session)
    setattr(ipython, _SESSION_ATTR, (session, transformer))
    atexit.register(session.shutdown)
    ipython.register_magics(DipMagics(ipython, session, transformer))
    ipython.input_transformers_cleanup.append(transformer)


def unload_ipython_extension(ipython) -> None:
    """`%unload_ext ddipp`: stop the group and everything it started; autodip ends."""
    loaded = getattr(ipython, _SESSION_ATTR, None)
    if loaded is None:
        return
    session, transformer = loaded
    session.shutdown()
    session.autodip.end_with_group()
    atexit.unregister(session.shutdown)
    if transformer in ipython.input_transformers_cleanup:
        ipython.input_transformers_cleanup.remove(transformer)
    # IPython has no call to unregister magics: drop ours so none reaches a stopped session.
    for kind, names in (("line", ("makedip", "dip", "autodip", "dipstatus")), ("cell", ("dip",))):
        for name in names:
            ipython.magics_manager.magics[kind].pop(name, None)
    delattr(ipython, _SESSION_ATTR)
