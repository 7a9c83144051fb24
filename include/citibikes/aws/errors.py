"""The one error type of the AWS commands, told in one line naming the object and the fix."""

from __future__ import annotations

ACCESS_DENIED = frozenset({"AccessDenied", "AccessDeniedException", "AuthorizationError", "Forbidden", "403",
                           "UnauthorizedOperation"})


class AwsError(RuntimeError):
    """An AWS call failed or cannot be made; the message names the object, the cause and the fix.

    ``code`` is AWS's error code when AWS answered (``AccessDenied``, ``BucketAlreadyExists``...), so
    a caller can tell a refusal (``denied``) from other failures."""

    def __init__(self, message: str, *, code: str = "") -> None:
        super().__init__(message)
        self.code = code

    @property
    def denied(self) -> bool:
        """AWS refused these credentials the permission (the request itself was fine)."""
        return self.code in ACCESS_DENIED
