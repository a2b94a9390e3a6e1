"""SimpleVector: an embedded vector engine built for day 2."""
from simplevector.engine.errors import *  # noqa: F401,F403
from simplevector.engine.errors import __all__ as _errors_all

__version__ = "0.1.0"
__all__ = list(_errors_all)
