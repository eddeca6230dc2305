"""koe's error tree. Every failure a user can see is one of these; foreign exceptions (PyAV, CTranslate2,
botocore, pydantic) are mapped to them at the edge where they are raised.

    KoeError
    ├── InputError ..................... 400  the request's audio or body is unusable
    │   ├── EmptyInputError
    │   ├── UndecodableAudioError
    │   ├── NoAudioStreamError
    │   └── InputNotFoundError ......... 404  an input location that does not exist
    ├── InputTooLargeError ............. 413  more bytes than the limit
    ├── AudioTooLongError .............. 413  more audio seconds than the limit
    ├── OptionsError ................... 422  a bad option value or unknown option name
    ├── UnsupportedMediaTypeError ...... 415
    ├── NotAcceptableError ............. 406
    ├── AuthError ...................... 401
    ├── HeadersTooLargeError ........... 431  the request's headers are too large
    ├── LocationError .................. 403  a file:// or s3:// location outside the allowed roots
    ├── ForbiddenRequestError .......... 403  a Host the server does not answer to, or another site's page
    ├── BusyError ...................... 503  too much audio in memory already; retry after a while
    ├── ModelError
    │   ├── UnknownModelError .......... 404
    │   └── ModelUnavailableError ...... 503  known, but cannot be loaded here (no network, bad files)
    ├── NotReadyError .................. 503  the model is still loading
    ├── EngineError .................... 500  inference itself failed
    ├── StorageError ................... 502  the object store failed
    │   └── StorageFullError ........... 507  no space left for the data folder (disk full)
    ├── JobError
    │   ├── JobNotFoundError ........... 404
    │   ├── JobConflictError ........... 409  same id, different request / job not in a state for that
    │   ├── JobNotFinishedError ........ 409
    │   ├── JobExpiredError ............ 410  waited in the queue past its TTL
    │   ├── JobTimeoutError ............ 504  ran past its invocation timeout
    │   └── JobAbandonedError .......... 500  its worker's lease lapsed too many times
    ├── AwsError ....................... 502  an AWS call failed (deploy, invoke)
    │   └── AwsNotFoundError ........... 404  the AWS resource does not exist
    └── DeployError .................... 500  a deploy step failed (docker, endpoint Failed, wait timed out)

`http_status()` is the single table from error to HTTP status code; `error_body()` is the JSON every door
answers with.
"""

from __future__ import annotations

from typing import Any


class KoeError(Exception):
    """Base of every error koe reports to a user. `type` is a stable machine-readable name."""

    type = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InputError(KoeError):
    type = "invalid_input"


class EmptyInputError(InputError):
    type = "empty_input"


class UndecodableAudioError(InputError):
    type = "undecodable_audio"


class NoAudioStreamError(InputError):
    type = "no_audio_stream"


class InputNotFoundError(InputError):
    type = "input_not_found"


class InputTooLargeError(KoeError):
    type = "input_too_large"


class AudioTooLongError(KoeError):
    type = "audio_too_long"


class OptionsError(KoeError):
    type = "invalid_option"


class UnsupportedMediaTypeError(KoeError):
    type = "unsupported_media_type"


class NotAcceptableError(KoeError):
    type = "not_acceptable"


class AuthError(KoeError):
    type = "unauthorized"


class HeadersTooLargeError(KoeError):
    type = "headers_too_large"


class LocationError(KoeError):
    type = "location_not_allowed"


class ForbiddenRequestError(KoeError):
    type = "forbidden"


class BusyError(KoeError):
    type = "server_busy"

    def __init__(self, message: str, retry_after_s: int = 5) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ModelError(KoeError):
    type = "model_error"


class UnknownModelError(ModelError):
    type = "unknown_model"


class ModelUnavailableError(ModelError):
    type = "model_unavailable"


class NotReadyError(KoeError):
    type = "not_ready"


class EngineError(KoeError):
    type = "engine_error"


class StorageError(KoeError):
    type = "storage_error"


class StorageFullError(StorageError):
    type = "insufficient_storage"


class JobError(KoeError):
    type = "job_error"


class JobNotFoundError(JobError):
    type = "job_not_found"


class JobConflictError(JobError):
    type = "job_conflict"


class JobNotFinishedError(JobError):
    type = "job_not_finished"


class JobExpiredError(JobError):
    type = "request_expired"


class JobTimeoutError(JobError):
    type = "invocation_timeout"


class JobAbandonedError(JobError):
    type = "job_abandoned"


class AwsError(KoeError):
    type = "aws_error"


class AwsNotFoundError(AwsError):
    type = "aws_not_found"


class DeployError(KoeError):
    type = "deploy_error"


# The one table from error class to HTTP status. The most specific class in an error's MRO wins.
HTTP_STATUS: dict[type[KoeError], int] = {
    KoeError: 500,
    InputError: 400,
    InputNotFoundError: 404,
    InputTooLargeError: 413,
    AudioTooLongError: 413,
    OptionsError: 422,
    UnsupportedMediaTypeError: 415,
    NotAcceptableError: 406,
    AuthError: 401,
    HeadersTooLargeError: 431,
    LocationError: 403,
    ForbiddenRequestError: 403,
    BusyError: 503,
    UnknownModelError: 404,
    ModelUnavailableError: 503,
    NotReadyError: 503,
    EngineError: 500,
    StorageError: 502,
    StorageFullError: 507,
    JobNotFoundError: 404,
    JobConflictError: 409,
    JobNotFinishedError: 409,
    JobExpiredError: 410,
    JobTimeoutError: 504,
    JobAbandonedError: 500,
    AwsError: 502,
    AwsNotFoundError: 404,
    DeployError: 500,
}


def http_status(error: KoeError) -> int:
    """The HTTP status code for `error`, from `HTTP_STATUS`."""
    for cls in type(error).__mro__:
        if cls in HTTP_STATUS:
            return HTTP_STATUS[cls]  # type: ignore[index]
    return 500


def error_headers(error: KoeError) -> dict[str, str]:
    """Headers that go with `error`'s answer: `Retry-After` when the server is busy."""
    return {"Retry-After": str(error.retry_after_s)} if isinstance(error, BusyError) else {}


def error_body(error: KoeError) -> dict[str, Any]:
    """The JSON body every door answers an error with (and async jobs write to their failure location)."""
    return {"error": {"type": error.type, "message": error.message}}


def internal_error(exc: BaseException) -> KoeError:
    """What a door answers for an unexpected exception: its class name only (500). The traceback and the
    message, which may hold paths or data, go to the log."""
    return KoeError(f"internal error ({type(exc).__name__}); see the server log")


def too_large_for_sync(exc: InputTooLargeError, door: str, limit: int, instead: str) -> str:
    """The message for an input over a synchronous door's limit (KOE_MAX_SYNC_BYTES): the limit, and where
    larger inputs go (`instead`)."""
    return f"{exc.message.rstrip('.')}. {door} takes up to {limit} bytes (KOE_MAX_SYNC_BYTES); {instead}"
