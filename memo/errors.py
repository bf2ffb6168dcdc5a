"""One error tree for the library. The gateway maps it to HTTP statuses in one place."""

from __future__ import annotations


class MemoError(Exception):
    """Base of every error the service reports to a user."""

    status_code = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(MemoError):
    status_code = 404


class InvalidInput(MemoError):
    status_code = 422


class UnsupportedMediaType(MemoError):
    status_code = 415


class PayloadTooLarge(MemoError):
    status_code = 413


class Conflict(MemoError):
    status_code = 409


class JobCancelled(MemoError):
    """A job's cancel was asked for: raised at its next unit boundary, it ends the job ``cancelled``."""

    status_code = 409


class DeadlineExceeded(MemoError):
    """A query did not finish within its deadline (``MEMO_QUERY_TIMEOUT_S``)."""

    status_code = 504


class Unauthorized(MemoError):
    status_code = 401


class Forbidden(MemoError):
    """A valid API key whose role does not allow the action."""

    status_code = 403


class NotReady(MemoError):
    """The resource exists but cannot serve yet (e.g. a collection with no trained memory)."""

    status_code = 409


class GateFailed(MemoError):
    """A trained memory version did not pass the evaluation gate."""

    status_code = 409


class TrainingDiverged(MemoError):
    """A training's loss became NaN or infinite: its weights are discarded, nothing is saved."""

    status_code = 500


class BackendError(MemoError):
    """An LLM backend failed or answered with something unusable."""

    status_code = 502


class ModelMissing(MemoError):
    """A model directory is absent; the message says how to prepare it."""

    status_code = 503
