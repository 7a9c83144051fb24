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

    def __reduce__(self) -> tuple[object, ...]:
        """Pickled whole (a backfill's worker processes raise it in this one)."""
        return _rebuild, (self.args[0], self.reason, self.system_id, self.feed, self.url)


def _rebuild(message: str, reason: str, system_id: str | None, feed: str | None, url: str | None) -> FeedError:
    return FeedError(message, reason=reason, system_id=system_id, feed=feed, url=url)
