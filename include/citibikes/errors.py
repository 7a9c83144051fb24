"""Exceptions as the one line a user reads (logs, run records, error messages)."""

from __future__ import annotations


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type when the message is empty."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def one_line(exc: BaseException) -> str:
    """:func:`first_line`, prefixed with the exception's type unless the message already names its
    cause (a ``FeedError``, or a text with a colon)."""
    from citibikes.gbfs.errors import FeedError

    text = first_line(exc)
    return text if isinstance(exc, FeedError) or ":" in text else f"{type(exc).__name__}: {text}"
