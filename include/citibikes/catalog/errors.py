"""The catalog's errors, each one line naming the object and the fix.

Two kinds, because a scheduler treats them differently: :class:`CatalogError` may pass on its own
(the lake or the catalog file is unreachable, another crawl holds the catalog), so a retry can help;
:class:`CatalogInputError` is bad input in the lake (a foreign file, a Parquet file whose schema
does not fit its table), which no retry fixes: a person moves or rewrites the file.
"""

from __future__ import annotations


class CatalogError(RuntimeError):
    """The catalog cannot be read or written now; retrying may help."""


class CatalogInputError(CatalogError):
    """The lake holds something the catalog cannot register; fix the lake, retrying does not help."""
