"""The wire contract: stubs are fresh, every element is documented, buf style holds, messages round-trip."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.protobuf.descriptor_pb2 import (
    DescriptorProto,
    EnumDescriptorProto,
    FileDescriptorProto,
    FileDescriptorSet,
)

from services.common.wire import (
    common_pb2,
    generate,
    orchestrator_pb2,
    orchestrator_pb2_grpc,
    policy_sampler_pb2,
    policy_sampler_pb2_grpc,
    reward_node_pb2,
    reward_node_pb2_grpc,
)

# descriptor.proto field numbers: a SourceCodeInfo path is a chain of (field number, index).
FILE_MESSAGE, FILE_ENUM, FILE_SERVICE = 4, 5, 6
MSG_FIELD, MSG_NESTED, MSG_ENUM, MSG_ONEOF = 2, 3, 4, 8
ENUM_VALUE = 2
SERVICE_METHOD = 2

PASCAL = re.compile(r"^[A-Z][A-Za-z0-9]*$")
LOWER_SNAKE = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")
UPPER_SNAKE = re.compile(r"^[A-Z][A-Z0-9]*(_[A-Z0-9]+)*$")


def compile_descriptors(proto_root: Path, out: Path) -> FileDescriptorSet:
    files = [p.relative_to(proto_root).as_posix() for p in sorted(proto_root.rglob("*.proto"))]
    generate.run_protoc(["--include_source_info", f"--descriptor_set_out={out}", *files], proto_root)
    return FileDescriptorSet.FromString(out.read_bytes())


@pytest.fixture(scope="module")
def descriptor_set(tmp_path_factory: pytest.TempPathFactory) -> FileDescriptorSet:
    return compile_descriptors(generate.PROTO_ROOT, tmp_path_factory.mktemp("desc") / "mor.binpb")


BAD_PROTO = """
syntax = "proto3";
package bad.v1;
// Documented.
message good_name {
  // Documented.
  string BadField = 1;
  string undocumented = 2;
}
// Documented.
enum Color {
  // Documented.
  RED = 0;
  // Documented.
  COLOR_BLUE = 1;
}
// Documented.
service Svc {
  // Documented.
  rpc Do(good_name) returns (good_name);
}
"""


@pytest.fixture(scope="module")
def bad_descriptor_set(tmp_path_factory: pytest.TempPathFactory) -> FileDescriptorSet:
    root = tmp_path_factory.mktemp("bad")
    (root / "bad.proto").write_text(BAD_PROTO)
    return compile_descriptors(root, root / "bad.binpb")


# ---- walking descriptors -------------------------------------------------------------------------


def _is_map_entry(msg: DescriptorProto) -> bool:
    return msg.options.map_entry


def _walk_message(
    msg: DescriptorProto, path: tuple[int, ...], scope: str
) -> Iterator[tuple[tuple[int, ...], str, str]]:
    name = f"{scope}.{msg.name}"
    yield path, "message", name
    for i, field in enumerate(msg.field):
        yield (*path, MSG_FIELD, i), "field", f"{name}.{field.name}"
    for i, oneof in enumerate(msg.oneof_decl):
        # proto3 `optional` makes a synthetic oneof that has no source of its own.
        members = [f for f in msg.field if f.HasField("oneof_index") and f.oneof_index == i]
        if not all(f.proto3_optional for f in members):
            yield (*path, MSG_ONEOF, i), "oneof", f"{name}.{oneof.name}"
    for i, enum in enumerate(msg.enum_type):
        yield from _walk_enum(enum, (*path, MSG_ENUM, i), name)
    for i, nested in enumerate(msg.nested_type):
        if not _is_map_entry(nested):  # synthesised for map<> fields
            yield from _walk_message(nested, (*path, MSG_NESTED, i), name)


def _walk_enum(
    enum: EnumDescriptorProto, path: tuple[int, ...], scope: str
) -> Iterator[tuple[tuple[int, ...], str, str]]:
    name = f"{scope}.{enum.name}"
    yield path, "enum", name
    for i, value in enumerate(enum.value):
        yield (*path, ENUM_VALUE, i), "enum value", f"{name}.{value.name}"


def walk(fd: FileDescriptorProto) -> Iterator[tuple[tuple[int, ...], str, str]]:
    """(SourceCodeInfo path, kind, full name) of every documentable element of a file."""
    for i, msg in enumerate(fd.message_type):
        yield from _walk_message(msg, (FILE_MESSAGE, i), fd.package)
    for i, enum in enumerate(fd.enum_type):
        yield from _walk_enum(enum, (FILE_ENUM, i), fd.package)
    for i, svc in enumerate(fd.service):
        yield (FILE_SERVICE, i), "service", f"{fd.package}.{svc.name}"
        for j, method in enumerate(svc.method):
            yield (FILE_SERVICE, i, SERVICE_METHOD, j), "rpc", f"{fd.package}.{svc.name}.{method.name}"


def undocumented(fds: FileDescriptorSet) -> list[str]:
    problems = []
    for fd in fds.file:
        comments = {tuple(loc.path): loc.leading_comments for loc in fd.source_code_info.location}
        for path, kind, name in walk(fd):
            if not comments.get(path, "").strip():
                problems.append(f"{fd.name}: {kind} {name} has no leading comment")
    return problems


# ---- pure-Python subset of buf STANDARD lint ------------------------------------------------------


def upper_snake(pascal: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", pascal).upper()


def _lint_enum(enum: EnumDescriptorProto, where: str) -> list[str]:
    problems = []
    prefix = upper_snake(enum.name) + "_"
    if not PASCAL.match(enum.name):
        problems.append(f"{where}: enum {enum.name} is not PascalCase")
    if not enum.value or enum.value[0].number != 0 or enum.value[0].name != prefix + "UNSPECIFIED":
        problems.append(f"{where}: enum {enum.name} zero value must be {prefix}UNSPECIFIED")
    for value in enum.value:
        if not value.name.startswith(prefix) or not UPPER_SNAKE.match(value.name):
            problems.append(f"{where}: enum value {value.name} must be UPPER_SNAKE prefixed with {prefix}")
    return problems


def _lint_message(msg: DescriptorProto, where: str) -> list[str]:
    problems = []
    if not PASCAL.match(msg.name):
        problems.append(f"{where}: message {msg.name} is not PascalCase")
    for field in msg.field:
        if not LOWER_SNAKE.match(field.name):
            problems.append(f"{where}: field {msg.name}.{field.name} is not lower_snake_case")
    for oneof in msg.oneof_decl:
        if not LOWER_SNAKE.match(oneof.name.lstrip("_")):
            problems.append(f"{where}: oneof {msg.name}.{oneof.name} is not lower_snake_case")
    for enum in msg.enum_type:
        problems += _lint_enum(enum, where)
    for nested in msg.nested_type:
        if not _is_map_entry(nested):
            problems += _lint_message(nested, where)
    return problems


def style_problems(fds: FileDescriptorSet) -> list[str]:
    problems = []
    used: dict[str, str] = {}  # message type -> the rpc that uses it, for RPC_REQUEST_RESPONSE_UNIQUE
    for fd in fds.file:
        if fd.package != "mor.v1" or not fd.name.startswith("mor/v1/"):
            problems.append(f"{fd.name}: package must be mor.v1 in directory mor/v1")
        for msg in fd.message_type:
            problems += _lint_message(msg, fd.name)
        for enum in fd.enum_type:
            problems += _lint_enum(enum, fd.name)
        for svc in fd.service:
            if not PASCAL.match(svc.name):
                problems.append(f"{fd.name}: service {svc.name} is not PascalCase")
            for m in svc.method:
                rpc = f"{svc.name}.{m.name}"
                if not PASCAL.match(m.name):
                    problems.append(f"{fd.name}: rpc {rpc} is not PascalCase")
                for type_name, suffix in ((m.input_type, "Request"), (m.output_type, "Response")):
                    short = type_name.rsplit(".", 1)[-1]
                    if short not in (f"{m.name}{suffix}", f"{svc.name}{m.name}{suffix}"):
                        problems.append(f"{fd.name}: rpc {rpc} uses {short}, want {m.name}{suffix}")
                    if type_name in used:
                        problems.append(f"{fd.name}: {short} used by both {used[type_name]} and {rpc}")
                    used[type_name] = rpc
    return problems


# ---- tests ---------------------------------------------------------------------------------------


def test_checked_in_stubs_match_fresh_generation(tmp_path: Path) -> None:
    assert generate.main(["--out", str(tmp_path)]) == 0

    fresh = generate.checked_in(tmp_path)
    current = generate.checked_in(generate.WIRE_DIR)

    stale = generate.diff(fresh, current)
    assert not stale, f"stale stubs {stale}: run `python -m services.common.wire.generate`"
    assert {"reward_node_pb2.py", "reward_node_pb2.pyi", "reward_node_pb2_grpc.py"} <= set(current)


def test_generation_is_deterministic() -> None:
    assert generate.render() == generate.render()


def test_check_mode_reports_stale_missing_and_orphan_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    generate.write(generate.render(), tmp_path)
    (tmp_path / "common_pb2.py").write_text("# edited by hand\n")
    (tmp_path / "reward_node_pb2.pyi").unlink()
    (tmp_path / "old_pb2.py").write_text("")

    rc = generate.main(["--check", "--out", str(tmp_path)])

    out = capsys.readouterr().out
    assert rc == 1
    for name in ("common_pb2.py", "reward_node_pb2.pyi", "old_pb2.py"):
        assert name in out
    assert "policy_sampler_pb2.py" not in out
    assert (tmp_path / "common_pb2.py").read_text() == "# edited by hand\n", "--check must not write"


def test_generated_code_imports_the_wire_package_not_mor() -> None:
    for name, content in generate.render().items():
        assert not re.search(rb"^\s*(from|import) mor\b", content, re.MULTILINE), name
    assert orchestrator_pb2.Run.__module__ == "services.common.wire.orchestrator_pb2"


def test_every_element_has_a_leading_comment(descriptor_set: FileDescriptorSet) -> None:
    names = [name for fd in descriptor_set.file for _, _, name in walk(fd)]
    assert "mor.v1.RewardNode.Score" in names and "mor.v1.Score.parts" in names

    assert undocumented(descriptor_set) == []


def test_comment_check_catches_an_undocumented_field(bad_descriptor_set: FileDescriptorSet) -> None:
    assert undocumented(bad_descriptor_set) == [
        "bad.proto: field bad.v1.good_name.undocumented has no leading comment"
    ]


def test_protos_follow_buf_standard_style(descriptor_set: FileDescriptorSet) -> None:
    assert {fd.name for fd in descriptor_set.file} == {
        "mor/v1/common.proto",
        "mor/v1/orchestrator.proto",
        "mor/v1/policy_sampler.proto",
        "mor/v1/reward_node.proto",
    }
    assert style_problems(descriptor_set) == []


def test_style_check_catches_each_kind_of_break(bad_descriptor_set: FileDescriptorSet) -> None:
    problems = "\n".join(style_problems(bad_descriptor_set))

    assert "package must be mor.v1" in problems
    assert "message good_name is not PascalCase" in problems
    assert "field good_name.BadField is not lower_snake_case" in problems
    assert "zero value must be COLOR_UNSPECIFIED" in problems
    assert "enum value RED must be UPPER_SNAKE prefixed with COLOR_" in problems
    assert "rpc Svc.Do uses good_name, want DoRequest" in problems
    assert "good_name used by both Svc.Do and Svc.Do" in problems


def _find_buf() -> str | None:
    local = generate.REPO_ROOT / "node_modules" / ".bin" / "buf"
    return str(local) if local.is_file() else shutil.which("buf")


def test_buf_lint_passes() -> None:
    buf = _find_buf()
    if buf is None:
        pytest.skip(
            "buf not installed (npm install --no-save @bufbuild/buf); the pure-Python style test still ran"
        )

    result = subprocess.run(
        [buf, "lint", "protos"], cwd=generate.REPO_ROOT, capture_output=True, text=True, timeout=300
    )

    assert result.returncode == 0, result.stdout + result.stderr


def test_score_request_round_trips() -> None:
    request = reward_node_pb2.ScoreRequest(
        request_id="req-1",
        prompt="How many red circles?",
        image=common_pb2.Image(data=bytes(range(256)) * 4, mime_type="image/png"),
        responses=["3", "three", "There are 3 red circles.", ""],
        return_parts=True,
    )

    parsed = reward_node_pb2.ScoreRequest.FromString(request.SerializeToString())

    assert parsed == request
    assert list(parsed.responses) == ["3", "three", "There are 3 red circles.", ""]
    assert parsed.image.data == bytes(range(256)) * 4
    assert parsed.image.mime_type == "image/png"


def test_score_parts_and_optional_fields_round_trip() -> None:
    response = reward_node_pb2.ScoreResponse(
        scores=[reward_node_pb2.Score(overall=0.5, parts={"format": 1.0, "accuracy": 0.0})], node_id="n1"
    )
    params = common_pb2.SamplingParams(temperature=0.0, seed=0)
    chunk = policy_sampler_pb2.UpdateWeightsRequest(data=b"\x00" * 10)

    parsed_response = reward_node_pb2.ScoreResponse.FromString(response.SerializeToString())
    parsed_params = common_pb2.SamplingParams.FromString(params.SerializeToString())
    parsed_chunk = policy_sampler_pb2.UpdateWeightsRequest.FromString(chunk.SerializeToString())

    assert dict(parsed_response.scores[0].parts) == {"format": 1.0, "accuracy": 0.0}
    # Greedy (0.0) and seed 0 must stay distinguishable from "unset".
    assert parsed_params.HasField("temperature") and parsed_params.HasField("seed")
    assert not common_pb2.SamplingParams().HasField("seed")
    assert parsed_chunk.WhichOneof("chunk") == "data"


@pytest.mark.parametrize(
    ("module", "grpc_module", "service", "rpcs"),
    [
        (reward_node_pb2, reward_node_pb2_grpc, "RewardNode", {"Score", "ScoreBatch", "GetInfo"}),
        (
            policy_sampler_pb2,
            policy_sampler_pb2_grpc,
            "PolicySampler",
            {"Generate", "UpdateWeights", "GetInfo"},
        ),
        (
            orchestrator_pb2,
            orchestrator_pb2_grpc,
            "Orchestrator",
            {"StartRun", "GetRun", "WatchRun", "StopRun", "RegisterNode", "ListNodes", "RemoveNode"},
        ),
    ],
)
def test_services_expose_expected_rpcs(module, grpc_module, service: str, rpcs: set[str]) -> None:
    descriptor = module.DESCRIPTOR.services_by_name[service]

    assert descriptor.full_name == f"mor.v1.{service}"
    assert {m.name for m in descriptor.methods} == rpcs
    servicer = getattr(grpc_module, f"{service}Servicer")
    assert all(callable(getattr(servicer, rpc)) for rpc in rpcs)
    assert callable(getattr(grpc_module, f"add_{service}Servicer_to_server"))


def test_streaming_shapes() -> None:
    sampler = policy_sampler_pb2.DESCRIPTOR.services_by_name["PolicySampler"].methods_by_name
    orchestrator = orchestrator_pb2.DESCRIPTOR.services_by_name["Orchestrator"].methods_by_name

    assert sampler["UpdateWeights"].client_streaming and not sampler["UpdateWeights"].server_streaming
    assert orchestrator["WatchRun"].server_streaming and not orchestrator["WatchRun"].client_streaming
    assert not sampler["Generate"].client_streaming and not sampler["Generate"].server_streaming
