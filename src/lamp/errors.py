"""The one base class of the errors a user can cause (bad input, bad settings).

Every module raises its own subclass, with a message that names the file or the field,
what was expected and what came; the CLI prints that message without a traceback.
"""

from __future__ import annotations

__all__ = ["LampError"]


class LampError(ValueError):
    """An input or setting a user got wrong; the message says what and where."""
