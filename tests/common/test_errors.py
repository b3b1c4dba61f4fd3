"""Domain errors map to gRPC status codes through one table; anything unknown is INTERNAL."""

from __future__ import annotations

import grpc
import pytest

from services.common import errors
from services.common.grpc.status import code_for, status_for


def all_subclasses(klass: type) -> list[type]:
    found = []
    for sub in klass.__subclasses__():
        found += [sub, *all_subclasses(sub)]
    return found


def test_every_domain_error_has_a_status_and_a_distinct_reason() -> None:
    subclasses = [k for k in all_subclasses(errors.MorError) if k.__module__ == errors.__name__]
    assert len(subclasses) >= 9

    unmapped = [k.__name__ for k in subclasses if code_for(k) is None]
    reasons = [k.reason for k in subclasses]

    assert unmapped == []
    assert len(set(reasons)) == len(reasons)
    assert all(r.isupper() for r in reasons)


def test_every_domain_error_is_exported() -> None:
    exported = {k.__name__ for k in all_subclasses(errors.MorError) if k.__module__ == errors.__name__}

    assert exported <= set(errors.__all__)


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (errors.InvalidInput("too many responses: 17 > 16"), grpc.StatusCode.INVALID_ARGUMENT),
        (errors.Overloaded("queue full"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (errors.Unauthenticated("missing token"), grpc.StatusCode.UNAUTHENTICATED),
        (errors.PermissionDenied("caller not allowed"), grpc.StatusCode.PERMISSION_DENIED),
        (errors.NotReady("model loading"), grpc.StatusCode.UNAVAILABLE),
        (errors.NotFound("run r1"), grpc.StatusCode.NOT_FOUND),
        (errors.AlreadyExists("run r1"), grpc.StatusCode.ALREADY_EXISTS),
        (errors.VersionMismatch("expected policy 3, serving 4"), grpc.StatusCode.FAILED_PRECONDITION),
        (errors.StalePolicy("version 2 < 4"), grpc.StatusCode.FAILED_PRECONDITION),
        (errors.ChecksumMismatch("sha256 differs"), grpc.StatusCode.DATA_LOSS),
    ],
)
def test_status_for_domain_errors(exc: errors.MorError, code: grpc.StatusCode) -> None:
    assert status_for(exc) == (code, str(exc))


def test_subclass_inherits_parent_code_but_keeps_own_reason() -> None:
    class ImageTooLarge(errors.InvalidInput):
        reason = "IMAGE_TOO_LARGE"

    code, message = status_for(ImageTooLarge("image is 9 MB, limit 8 MB"))

    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert message == "image is 9 MB, limit 8 MB"
    assert ImageTooLarge().reason == "IMAGE_TOO_LARGE"


def test_per_instance_reason_overrides_class_reason() -> None:
    exc = errors.InvalidInput("bad mime type image/gif", reason="MIME_TYPE_NOT_ALLOWED")

    assert exc.reason == "MIME_TYPE_NOT_ALLOWED"
    assert errors.InvalidInput("x").reason == "INVALID_INPUT"


def test_empty_message_falls_back_to_reason() -> None:
    assert status_for(errors.NotReady()) == (grpc.StatusCode.UNAVAILABLE, "NOT_READY")


@pytest.mark.parametrize(
    "exc",
    [
        ValueError("secret path /data/client_a/prefs.jsonl"),
        KeyError("api_token"),
        RuntimeError("boom"),
        errors.MorError("base class is not a status"),
    ],
)
def test_unknown_exceptions_are_internal_with_generic_message(exc: Exception) -> None:
    code, message = status_for(exc)

    assert code is grpc.StatusCode.INTERNAL
    assert message == errors.GENERIC_INTERNAL_MESSAGE
    assert str(exc) not in message


def test_every_status_name_is_a_grpc_status_and_the_sampler_metric_label_follows_it() -> None:
    assert all(name in grpc.StatusCode.__members__ for name in errors.STATUS_NAMES.values())
    assert errors.status_name(errors.StalePolicy("v2 < v4")) == "FAILED_PRECONDITION"
    assert errors.status_name(RuntimeError("boom")) == errors.status_name(errors.MorError("x")) == "INTERNAL"


def test_the_error_table_needs_no_grpc() -> None:
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(errors))
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not any(m == "grpc" or m.startswith("grpc.") for m in imported)
