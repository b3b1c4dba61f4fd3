"""Every input check, first on its own (messages name the field and the limit), then end to end:
each one reaches the caller as INVALID_ARGUMENT with the same message and reason."""
from __future__ import annotations

import grpc
import pytest

from services.common.config import LimitsSection
from services.common.errors import InvalidInput
from services.common.grpc import error_reason
from services.reward_node.client import ScoreGroup
from services.reward_node.validation import GroupInput, check_group_count, validate_group

from .conftest import node_settings, png_bytes

LIMITS = LimitsSection(max_prompt_chars=50, max_response_chars=20, max_responses=3, max_image_bytes=2000,
                       image_mime_types=("image/png",), max_batch_groups=2)
PNG = png_bytes()

# (case, group, reason, words the message must contain)
CASES = [
    ("empty prompt", GroupInput("  ", ["a"]), "EMPTY_PROMPT", ["prompt", "empty"]),
    ("long prompt", GroupInput("p" * 51, ["a"]), "PROMPT_TOO_LONG", ["prompt", "51", "50", "limits.max_prompt_chars"]),
    ("no responses", GroupInput("q", []), "NO_RESPONSES", ["responses", "at least one"]),
    ("too many responses", GroupInput("q", ["a"] * 4), "TOO_MANY_RESPONSES", ["responses", "4", "limits.max_responses"]),
    ("empty response", GroupInput("q", ["a", ""]), "EMPTY_RESPONSE", ["responses[1]", "empty"]),
    ("long response", GroupInput("q", ["a", "b", "r" * 21]), "RESPONSE_TOO_LONG", ["responses[2]", "21", "limits.max_response_chars"]),
    ("empty image", GroupInput("q", ["a"], b"", "image/png"), "EMPTY_IMAGE", ["image.data", "empty"]),
    ("large image", GroupInput("q", ["a"], b"\x89PNG" + b"0" * 2000, "image/png"), "IMAGE_TOO_LARGE", ["image.data", "2004", "limits.max_image_bytes"]),
    ("wrong mime", GroupInput("q", ["a"], PNG, "image/gif"), "BAD_MIME_TYPE", ["image.mime_type", "image/gif", "image/png"]),
    ("undecodable", GroupInput("q", ["a"], b"not an image at all", "image/png"), "UNDECODABLE_IMAGE", ["image.data", "cannot be decoded"]),
    ("truncated", GroupInput("q", ["a"], PNG[: len(PNG) // 2], "image/png"), "UNDECODABLE_IMAGE", ["image.data"]),
    ("mime mismatch", GroupInput("q", ["a"], png_bytes(fmt="JPEG"), "image/png"), "MIME_MISMATCH", ["image.data", "image/jpeg", "image/png"]),
]


@pytest.mark.parametrize(("case", "group", "reason", "words"), CASES, ids=[c[0] for c in CASES])
def test_each_check_raises_invalid_input_naming_the_field(case, group, reason, words) -> None:
    with pytest.raises(InvalidInput) as err:
        validate_group(group, LIMITS)

    assert err.value.reason == reason
    assert all(w in str(err.value) for w in words), str(err.value)


def test_a_valid_group_passes_with_its_image_decoded() -> None:
    ok = validate_group(GroupInput("q", ["a", "b"], PNG, "image/png"), LIMITS)

    assert ok.image is not None and ok.image.mode == "RGB" and ok.responses == ["a", "b"]
    assert validate_group(GroupInput("q", ["a"]), LIMITS).image is None  # text-only prompt


def test_group_count_limits() -> None:
    with pytest.raises(InvalidInput, match="groups: at least one"):
        check_group_count(0, LIMITS)
    with pytest.raises(InvalidInput, match=r"groups: 3 groups, limit is 2 \(limits.max_batch_groups\)"):
        check_group_count(3, LIMITS)


@pytest.mark.parametrize(("case", "group", "reason", "words"), CASES, ids=[c[0] for c in CASES])
def test_score_answers_invalid_argument_end_to_end(case, group, reason, words, node, arun) -> None:
    settings = node_settings(limits=LIMITS.model_dump())

    async def scenario() -> grpc.aio.AioRpcError:
        async with node(settings) as running, running.client() as client:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await client.score(group.prompt, list(group.responses), group.image_data, group.mime_type or "image/png")
            return err.value

    err = arun(scenario())

    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_reason(err) == reason
    assert all(w in err.details() for w in words), err.details()


def test_score_batch_errors_name_the_group(node, arun) -> None:
    settings = node_settings(limits=LIMITS.model_dump())

    async def scenario() -> list[tuple[grpc.StatusCode, str]]:
        out = []
        async with node(settings) as running, running.client() as client:
            for groups in ([ScoreGroup("q", ["a"]), ScoreGroup("q", ["a", ""])],
                           [ScoreGroup("q", ["a"])] * 3,
                           []):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await client.score_batch(groups)
                out.append((err.value.code(), err.value.details()))
        return out

    (c1, m1), (c2, m2), (c3, m3) = arun(scenario())

    assert c1 == c2 == c3 == grpc.StatusCode.INVALID_ARGUMENT
    assert m1.startswith("groups[1].responses[1]: must not be empty")
    assert "limits.max_batch_groups" in m2
    assert "at least one group" in m3


def test_message_size_limit_is_enforced_by_the_server(node, arun) -> None:
    settings = node_settings(server={"max_message_mb": 1}, limits={"max_prompt_chars": 4 * 1024 * 1024})

    async def scenario() -> grpc.StatusCode:
        async with node(settings) as running, running.client() as client:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await client.score("x" * (2 * 1024 * 1024), ["a"])
            return err.value.code()

    assert arun(scenario()) == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_a_batch_larger_than_the_queue_is_invalid_not_overloaded(node, arun) -> None:
    settings = node_settings(batching={"max_queue": 6}, limits={"max_responses": 4})

    async def scenario() -> grpc.aio.AioRpcError:
        async with node(settings) as running, running.client() as client:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await client.score_batch([ScoreGroup("q", ["a", "b", "c", "d"])] * 2)
            return err.value

    err = arun(scenario())

    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and error_reason(err) == "CALL_TOO_LARGE"
    assert "batching.max_queue=6" in err.details()
