"""The one error type of the lake: bad configuration or a storage failure, told in one line.

Every message names the cause and the fix (``bucket 'x' does not exist; create it ...``), so the
pipeline can log it and Airflow can show it without a stack trace of the storage client.
"""

from __future__ import annotations


class LakeError(RuntimeError):
    """The lake cannot be opened, written or read; the message says why and what to do."""
