"""The one error type for a feed that cannot be used at all.

Raised for feed-level failures (unreachable, HTML instead of JSON, truncated JSON, no stations
array, unknown version, too large). Record-level problems never raise: they are quarantined.
The message is one line that names the cause and what to do about it.
"""

from __future__ import annotations


class FeedError(Exception):
    """A whole feed is unusable; nothing from it may be emitted."""

    def __init__(self, message: str, *, reason: str, system_id: str | None = None,
                 feed: str | None = None, url: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        """Machine-readable cause, e.g. ``not_json``, ``truncated_json``, ``http_error``."""
        self.system_id = system_id
        self.feed = feed
        self.url = url

    def __str__(self) -> str:
        where = " ".join(part for part in (self.system_id, self.feed) if part)
        return f"{where}: {self.args[0]}" if where else str(self.args[0])
