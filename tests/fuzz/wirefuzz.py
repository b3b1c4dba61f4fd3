"""Wire fuzzing helpers (loaded by tests/fuzz/conftest.py; no test here).

* ``Fuzzer``: hypothesis strategies built from the proto descriptors: every field by its type
  (edge integers, NaN / subnormal floats, unknown enum numbers, odd and huge strings, special
  tokens, valid and hostile images), nested messages to a depth, repeated and map fields, oneofs
  (none or one member) and proto3 optionals; per-field overrides mix in near-valid values so that
  cases get past the first check and reach the model.
* ``raw_payloads``: undecodable and adversarial request bytes (truncations, bit flips, huge length
  prefixes, deep nesting) for calls made with identity serializers.
* ``ServerProcess`` (from tests/service_process.py): a real server under test in its own process
  (``python -m services.cli <service> serve -c <yaml>`` on 127.0.0.1, port 0).
* ``LoopThread``: one asyncio loop in a thread that hosts the client channels, so synchronous
  hypothesis tests can drive the servers.
* ``Tally``: every answer's status, checked against the codes the protos document for the method,
  with bounded details and trailers; it also samples the RSS of the server process under test (and,
  for information only, of the test process that generates the cases). It keeps counts, the
  slowest answer per method and a bounded set of findings, never requests or answers.
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import functools
import io
import json
import math
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import grpc
import psutil
from google.protobuf import descriptor as _descriptor
from google.protobuf import message_factory
from hypothesis import strategies as st
from PIL import Image

from tests.service_process import ServerProcess

FD = _descriptor.FieldDescriptor
C = grpc.StatusCode

MAX_DETAILS_BYTES = 2048  # a status message longer than this is a finding (echoed input)
MAX_TRAILER_BYTES = 4096  # all trailing metadata together
CALL_TIMEOUT_S = 60.0  # an answer later than this is a finding (a hang)

# What each method may answer besides OK (protos/mor/v1/*.proto and grpc.health.v1). The servers
# under fuzz run without auth, so UNAUTHENTICATED / PERMISSION_DENIED would be findings too; they
# are listed where documented and counted, never expected.
_AUTH = {C.UNAUTHENTICATED, C.PERMISSION_DENIED}
_NODE = {C.INVALID_ARGUMENT, C.RESOURCE_EXHAUSTED, C.UNAVAILABLE} | _AUTH
DOCUMENTED: dict[str, set[C]] = {
    "/mor.v1.RewardNode/Score": _NODE,
    "/mor.v1.RewardNode/ScoreBatch": _NODE,
    "/mor.v1.RewardNode/GetInfo": {C.UNAVAILABLE} | _AUTH,
    "/mor.v1.PolicySampler/Generate": {C.INVALID_ARGUMENT, C.RESOURCE_EXHAUSTED, C.FAILED_PRECONDITION,
                                       C.UNAVAILABLE} | _AUTH,
    "/mor.v1.PolicySampler/UpdateWeights": {C.INVALID_ARGUMENT, C.DATA_LOSS, C.RESOURCE_EXHAUSTED,
                                            C.FAILED_PRECONDITION, C.UNAVAILABLE} | _AUTH,
    "/mor.v1.PolicySampler/GetInfo": {C.UNAVAILABLE} | _AUTH,
    "/mor.v1.Orchestrator/StartRun": {C.INVALID_ARGUMENT, C.ALREADY_EXISTS, C.RESOURCE_EXHAUSTED,
                                      C.FAILED_PRECONDITION, C.UNAVAILABLE} | _AUTH,
    "/mor.v1.Orchestrator/GetRun": {C.NOT_FOUND, C.UNAVAILABLE} | _AUTH,
    "/mor.v1.Orchestrator/WatchRun": {C.NOT_FOUND, C.INVALID_ARGUMENT, C.UNAVAILABLE} | _AUTH,
    "/mor.v1.Orchestrator/StopRun": {C.NOT_FOUND, C.UNAVAILABLE} | _AUTH,
    "/mor.v1.Orchestrator/RegisterNode": {C.INVALID_ARGUMENT, C.RESOURCE_EXHAUSTED, C.UNAVAILABLE} | _AUTH,
    "/mor.v1.Orchestrator/ListNodes": {C.UNAVAILABLE} | _AUTH,
    "/mor.v1.Orchestrator/RemoveNode": {C.NOT_FOUND, C.UNAVAILABLE} | _AUTH,
    # grpc.health.v1: NOT_FOUND for a service name the server does not know.
    "/grpc.health.v1.Health/Check": {C.NOT_FOUND},
}
# Bytes that do not parse as the request message: INVALID_ARGUMENT (reason UNDECODABLE_REQUEST).
RAW_EXTRA = {C.INVALID_ARGUMENT}


# ---- values -------------------------------------------------------------------------------------

SPECIAL_TOKENS = (
    "<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "<|im_start|>", "<|im_end|>",
    "<|endoftext|>", "<image>", "<fake_token_around_image>", "<global-img>", "<row_1_col_1>", "<end_of_utterance>",
    "[INST]", "<s>", "</s>", "<pad>", "<unk>", "<|box_start|>", "<|quad_start|>",
)
ODD_STRINGS = (
    "", " ", "\t\n", "\x00", "\x00" * 64, "\n" * 200, "\r\n", "\u202e\u202d", "\ufeff", "\uffff", "\U0010ffff",
    "\u0301" * 50, "🙂", "👨‍👩‍👧‍👦" * 20, "Z̴̡̢͈̈́" * 30, "%s%n%x%p", "{}", "{{7*7}}", "${jndi:ldap://x}", "'; DROP TABLE x;--",
    "../../../../etc/passwd", "/etc/passwd", "C:\\Windows", "\\\\?\\", "null", "NaN", "-1", "0", "1e309",
)
MIME_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp", "image/bmp", "image/tiff", "image/jpg", "IMAGE/PNG",
              "image/png ", "image/png; q=1", "image/*", "text/html", "application/octet-stream", "")


def _repeat(t: tuple[str, int]) -> str:
    return t[0] * t[1]


def _huge_strings() -> st.SearchStrategy[str]:
    """Long runs (limit edges 4096 / 4097 and far beyond), built when drawn (small reprs)."""
    return st.tuples(st.sampled_from(("a", "😀", "\x00", " ", "<|image_pad|>", "ab\n")),
                     st.sampled_from((64, 200, 201, 1_000, 4_096, 4_097, 65_536, 300_000))).map(_repeat)


def texts() -> st.SearchStrategy[str]:
    """Strings: arbitrary unicode (no lone surrogates: the wire carries UTF-8), odd and huge ones,
    and runs of model control tokens."""
    return st.one_of(
        st.text(st.characters(exclude_categories=("Cs",)), max_size=40),
        st.sampled_from(ODD_STRINGS),
        st.lists(st.sampled_from((*SPECIAL_TOKENS, "a", " ", "🙂", "\n")), min_size=1, max_size=12).map("".join),
        _huge_strings(),
    )


def ints(lo: int, hi: int) -> st.SearchStrategy[int]:
    edges = sorted({v for v in (0, 1, -1, 2, 3, 4, 7, 8, 9, 16, 64, 65, 1000, 4096, 2**31 - 1, 2**31, -(2**31),
                                2**32 - 1, 2**53, lo, hi, lo + 1, hi - 1) if lo <= v <= hi})
    return st.one_of(st.sampled_from(edges), st.integers(max(lo, -3), min(hi, 70)), st.integers(lo, hi))


def floats(width: int) -> st.SearchStrategy[float]:
    tiny = 1e-45 if width == 32 else 5e-324
    big = 3.4e38 if width == 32 else 1.7e308
    edges = (0.0, -0.0, 1.0, 0.5, 0.7, 2.0, 100.0, -1.0, tiny, 1e-38, 1e-7, big, -big, math.inf, -math.inf, math.nan)
    return st.one_of(st.sampled_from(edges), st.floats(0, 2, width=width), st.floats(width=width))


_INT_RANGES = {
    FD.TYPE_INT32: (-(2**31), 2**31 - 1), FD.TYPE_SINT32: (-(2**31), 2**31 - 1), FD.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FD.TYPE_INT64: (-(2**63), 2**63 - 1), FD.TYPE_SINT64: (-(2**63), 2**63 - 1), FD.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FD.TYPE_UINT32: (0, 2**32 - 1), FD.TYPE_FIXED32: (0, 2**32 - 1),
    FD.TYPE_UINT64: (0, 2**64 - 1), FD.TYPE_FIXED64: (0, 2**64 - 1),
}


# ---- images -------------------------------------------------------------------------------------

def _encode(img: Image.Image, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height but which holds no pixel data (a bomb's header)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IEND", b"")


def png_zeros(width: int, height: int) -> bytes:
    """A real, tiny-on-the-wire PNG of width x height black pixels (a decompression bomb)."""
    raw = zlib.compress(b"\x00" * (1 + 3 * width) * height, 9)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", raw) + _png_chunk(b"IEND", b"")


def jpeg_header_only(width: int, height: int) -> bytes:
    sof = struct.pack(">HBHHB", 17, 8, height, width, 3) + b"\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    return b"\xff\xd8\xff\xc0" + sof + b"\xff\xd9"


@functools.cache
def images() -> dict[str, bytes]:
    """Named image payloads, valid and hostile (built once)."""
    rgb = Image.new("RGB", (16, 16), (200, 30, 30))
    out = {
        "png16": _encode(rgb, "PNG"),
        "png1x1": _encode(Image.new("RGB", (1, 1)), "PNG"),
        "png300x1": _encode(Image.new("RGB", (300, 1)), "PNG"),
        "png1x300": _encode(Image.new("RGB", (1, 300)), "PNG"),
        "png200x1": _encode(Image.new("RGB", (200, 1)), "PNG"),
        "png28x28": _encode(Image.new("RGB", (28, 28), (1, 2, 3)), "PNG"),
        "png64_rgba": _encode(Image.new("RGBA", (64, 64), (1, 2, 3, 0)), "PNG"),
        "png_L": _encode(Image.new("L", (20, 30)), "PNG"),
        "png_I16": _encode(Image.new("I;16", (20, 20)), "PNG"),
        "png_P": _encode(Image.new("P", (20, 20)), "PNG"),
        "png_LA": _encode(Image.new("LA", (20, 20)), "PNG"),
        "png_1bit": _encode(Image.new("1", (20, 20)), "PNG"),
        "jpeg32": _encode(Image.new("RGB", (32, 32), (9, 99, 199)), "JPEG"),
        "jpeg_cmyk": _encode(Image.new("CMYK", (24, 24)), "JPEG"),
        "jpeg_progressive": _encode(Image.new("RGB", (40, 40), (5, 5, 5)), "JPEG", progressive=True),
        "jpeg_L": _encode(Image.new("L", (24, 24)), "JPEG"),
        "gif": _encode(Image.new("P", (16, 16)), "GIF"),
        "gif_anim": _encode(Image.new("P", (16, 16)), "GIF", save_all=True,
                            append_images=[Image.new("P", (16, 16), 3)] * 20),
        "webp": _encode(rgb, "WEBP"),
        "bmp": _encode(rgb, "BMP"),
        "tiff": _encode(rgb, "TIFF"),
        "ico": _encode(rgb, "ICO"),
        "png_hdr_65535sq": png_header_only(65535, 65535),
        "png_hdr_2g": png_header_only(2**31 - 1, 2**31 - 1),
        "png_hdr_0x0": png_header_only(0, 0),
        "png_hdr_100000x1": png_header_only(100_000, 1),
        "png_hdr_4096sq": png_header_only(4096, 4096),
        "jpeg_hdr_65500sq": jpeg_header_only(65500, 65500),
        "png_zeros_4096sq": png_zeros(4096, 4096),
        "png_zeros_4097x4096": png_zeros(4097, 4096),
        "png_zeros_8000x1": png_zeros(8000, 1),
        "png_zeros_1024sq": png_zeros(1024, 1024),
        "png_signature": b"\x89PNG\r\n\x1a\n",
        "jpeg_soi": b"\xff\xd8",
        "empty": b"",
    }
    out["png_truncated"] = out["png16"][: len(out["png16"]) // 2]
    out["jpeg_truncated"] = out["jpeg32"][: len(out["jpeg32"]) // 2]
    out["png_trailing_garbage"] = out["png16"] + b"\x00garbage" * 100
    out["png_bad_crc"] = out["png16"][:29] + b"\x00\x00\x00\x00" + out["png16"][33:]
    return out


VALID_IMAGES = ("png16", "png28x28", "png64_rgba", "jpeg32", "png_L")


def image_bytes() -> st.SearchStrategy[bytes]:
    """Valid, odd and hostile encoded images, and valid ones with a few bytes flipped."""
    named = images()
    flipped = st.tuples(st.sampled_from(VALID_IMAGES), st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)),
                                                                min_size=1, max_size=4))
    return st.one_of(
        st.sampled_from(sorted(named)).map(named.__getitem__),
        flipped.map(lambda t: _flip(named[t[0]], t[1])),
        st.binary(max_size=64),
    )


def _flip(data: bytes, edits: list[tuple[int, int]]) -> bytes:
    b = bytearray(data)
    for i, v in edits:
        if b:
            b[i % len(b)] = v
    return bytes(b)


def image_message_values() -> st.SearchStrategy[dict[str, Any]]:
    """{'data', 'mime_type'} pairs, with the right type for valid images most of the time."""
    named = images()

    def mime_of(name: str) -> str:
        return "image/jpeg" if name.startswith("jpeg") else f"image/{name.split('_')[0].rstrip('0123456789')}"

    valid = st.sampled_from(sorted(named)).map(lambda n: {"data": named[n], "mime_type": mime_of(n)})
    return st.one_of(valid, st.fixed_dictionaries({"data": image_bytes(), "mime_type": st.one_of(st.sampled_from(MIME_TYPES),
                                                                                                   texts())}))


# ---- messages from descriptors -----------------------------------------------------------------

Override = st.SearchStrategy[Any] | Callable[[st.SearchStrategy[Any]], st.SearchStrategy[Any]]


class Fuzzer:
    """Strategies of protobuf messages from their descriptors; see the module docstring.

    ``overrides`` maps a field's full name (``mor.v1.Image.mime_type``) or a message's full name
    (``mor.v1.Image``) to a strategy of its value (a list for a repeated field, a message for a
    message) or to a function that gets the generic strategy and returns one (to mix the two).
    """

    def __init__(self, overrides: dict[str, Override] | None = None, *, max_depth: int = 4, max_list: int = 5) -> None:
        self.overrides = dict(overrides or {})
        self.max_depth = max_depth
        self.max_list = max_list
        self._cache: dict[tuple[str, int], st.SearchStrategy[Any]] = {}

    def _apply(self, key: str, generic: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        o = self.overrides.get(key)
        if o is None:
            return generic
        return o(generic) if callable(o) and not isinstance(o, st.SearchStrategy) else o

    def message(self, desc: _descriptor.Descriptor, depth: int = 0) -> st.SearchStrategy[Any]:
        key = (desc.full_name, depth)
        if key not in self._cache:
            self._cache[key] = self._apply(desc.full_name, st.deferred(lambda: self._generic(desc, depth)))
        return self._cache[key]

    def near(self, desc: _descriptor.Descriptor, valid: st.SearchStrategy[Any], max_edits: int = 2,
             depth: int = 0) -> st.SearchStrategy[Any]:
        """Messages from ``valid`` with up to ``max_edits`` top-level fields replaced by generated
        values (or cleared): cases that pass most checks and break one or two."""
        names = [f.name for f in desc.fields]

        @st.composite
        def edited(draw: Any) -> Any:
            msg = type(draw(valid))()
            msg.CopyFrom(draw(valid))
            for name in draw(st.lists(st.sampled_from(names), max_size=max_edits, unique=True)):
                f = desc.fields_by_name[name]
                value = self.field(f, depth)
                msg.ClearField(name)
                if value is not None and draw(st.integers(0, 4)):  # 1 in 5 only clears it
                    edit = build(type(msg), {name: draw(value)})
                    msg.MergeFrom(edit)
            return msg

        return edited()

    def _generic(self, desc: _descriptor.Descriptor, depth: int) -> st.SearchStrategy[Any]:
        cls = message_factory.GetMessageClass(desc)
        oneof_fields = {f.name for o in desc.oneofs for f in o.fields}
        optional = {f.name: self.field(f, depth) for f in desc.fields if f.name not in oneof_fields}
        optional = {k: v for k, v in optional.items() if v is not None}
        choices = []
        for o in desc.oneofs:
            members = [(f.name, self.field(f, depth)) for f in o.fields]
            members = [st.tuples(st.just(n), s) for n, s in members if s is not None]
            choices.append(st.one_of(st.none(), *members) if members else st.none())
        return st.tuples(st.fixed_dictionaries({}, optional=optional), st.tuples(*choices)).map(
            lambda t: build(cls, {**t[0], **dict(c for c in t[1] if c is not None)}))

    def field(self, f: _descriptor.FieldDescriptor, depth: int) -> st.SearchStrategy[Any] | None:
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            k, v = f.message_type.fields_by_name["key"], f.message_type.fields_by_name["value"]
            ks, vs = self.scalar(k, depth), self.scalar(v, depth) if v.message_type is None else self._nested(v, depth)
            if vs is None:
                return None
            return self._apply(f.full_name, st.dictionaries(ks, vs, max_size=self.max_list))
        elem = self._nested(f, depth) if f.message_type is not None else self.scalar(f, depth)
        if elem is None:
            return None
        if f.is_repeated:
            generic = st.one_of(st.lists(elem, max_size=self.max_list),
                                st.lists(elem, min_size=self.max_list, max_size=8 * self.max_list))
            return self._apply(f.full_name, generic)
        return self._apply(f.full_name, elem)

    def _nested(self, f: _descriptor.FieldDescriptor, depth: int) -> st.SearchStrategy[Any] | None:
        if depth + 1 > self.max_depth:
            return None
        return self.message(f.message_type, depth + 1)

    def scalar(self, f: _descriptor.FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
        t = f.type
        if t == FD.TYPE_STRING:
            s: st.SearchStrategy[Any] = texts()
        elif t == FD.TYPE_BYTES:
            s = st.one_of(st.binary(max_size=128), image_bytes())
        elif t == FD.TYPE_BOOL:
            s = st.booleans()
        elif t == FD.TYPE_FLOAT:
            s = floats(32)
        elif t == FD.TYPE_DOUBLE:
            s = floats(64)
        elif t == FD.TYPE_ENUM:
            # proto3 enums are open: a number the receiver does not know must be handled too.
            s = st.one_of(st.sampled_from([v.number for v in f.enum_type.values]), ints(-(2**31), 2**31 - 1))
        elif t in _INT_RANGES:
            s = ints(*_INT_RANGES[t])
        else:  # pragma: no cover - groups are not proto3
            raise TypeError(f"unsupported field type {t} of {f.full_name}")
        return s


def build(cls: type, values: dict[str, Any]) -> Any:
    """A message of class ``cls`` with the given field values (messages, lists, dicts, scalars)."""
    msg = cls()
    fields = cls.DESCRIPTOR.fields_by_name
    for name, value in values.items():
        f = fields[name]
        target = getattr(msg, name)
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            vf = f.message_type.fields_by_name["value"]
            for k, v in value.items():
                if vf.message_type is not None:
                    target[k].CopyFrom(v)
                else:
                    target[k] = v
        elif f.is_repeated:
            target.extend(value)
        elif f.message_type is not None:
            target.CopyFrom(value)
        else:
            setattr(msg, name, value)
    return msg


# ---- raw bytes ----------------------------------------------------------------------------------

def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def length_delimited(field_number: int, payload: bytes) -> bytes:
    return _varint(field_number << 3 | 2) + _varint(len(payload)) + payload


def deep_struct_value(depth: int) -> bytes:
    """google.protobuf.Value bytes nested `depth` list_values deep (built without recursion)."""
    value = b""
    for _ in range(depth):
        value = length_delimited(6, length_delimited(1, value))  # Value.list_value{values: [value]}
    return value


@functools.lru_cache(maxsize=16)
def deep_config_struct(depth: int) -> bytes:
    """StartRunRequest bytes whose config_struct holds one key with a value nested `depth` deep
    (cached: building the 100,000-deep one takes seconds, and cases draw a handful of depths)."""
    entry = length_delimited(1, b"grpo") + length_delimited(2, deep_struct_value(depth))
    return length_delimited(3, length_delimited(1, entry))


HOSTILE_RAW = (
    b"\xff" * 16, b"\x80" * 11, b"\x0a\xff\xff\xff\xff\x0f", b"\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",
    b"\x0b" * 2000, b"\x0c", b"\x0f", b"\x07", b"\x0a\x05abc", b"\x12\x01", b"\x08", b"\x08\x80\x80\x80\x80\x80\x80\x80\x80\x80\x80",
    b"\x0d\x00\x00", b"\x09\x00", length_delimited(1, b"\xff\xfe\xfd"),  # invalid UTF-8 in a string
    length_delimited(2, length_delimited(2, b"\xc3\x28")), length_delimited(1, b"a" * 70_000),
    b"\x00", b"\x00" * 100, _varint(2**29 << 3 | 2) + b"\x01x",  # the largest field number
)


def raw_payloads(valid: st.SearchStrategy[Any] | None = None) -> st.SearchStrategy[bytes]:
    """Random and adversarial bytes; with ``valid`` (a message strategy), also its serialisation
    truncated, bit-flipped or with junk appended."""
    parts = [st.binary(max_size=256), st.sampled_from(HOSTILE_RAW),
             st.sampled_from((10, 30, 45, 49, 50, 1000, 100_000)).map(deep_config_struct),
             st.lists(st.sampled_from(HOSTILE_RAW), min_size=2, max_size=5).map(b"".join)]
    if valid is not None:
        ser = valid.map(lambda m: m.SerializeToString())
        parts += [
            ser,
            st.tuples(ser, st.integers(0, 1000)).map(lambda t: t[0][: t[1] % (len(t[0]) + 1)]),
            st.tuples(ser, st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=4))
              .map(lambda t: _flip(t[0], t[1])),
            st.tuples(ser, st.sampled_from(HOSTILE_RAW)).map(b"".join),
        ]
    return st.one_of(*parts)


# ---- the servers under test, each in its own process: tests/service_process.py ------------------

# ---- the client side on a loop thread ----------------------------------------------------------

class LoopThread:
    """An asyncio loop in a daemon thread; ``run(coro)`` waits for its result from any thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name="fuzz-loop", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Any, timeout: float = CALL_TIMEOUT_S + 30) -> Any:
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


# ---- calls and their outcomes -------------------------------------------------------------------

@dataclass
class Outcome:
    code: grpc.StatusCode
    details: str = ""
    trailer_bytes: int = 0
    response: bytes | None = None
    seconds: float = 0.0


def _outcome_of(exc: grpc.aio.AioRpcError, t0: float) -> Outcome:
    md = exc.trailing_metadata() or ()
    size = sum(len(k) + len(v if isinstance(v, bytes) else str(v).encode()) for k, v in md)
    return Outcome(exc.code(), exc.details() or "", size, None, time.perf_counter() - t0)


class RawCaller:
    """Calls any method of a channel with request and response bytes as they are (identity
    serializers), so undecodable payloads reach the server."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel
        self._unary: dict[str, Any] = {}

    async def unary(self, method: str, payload: bytes, timeout: float = CALL_TIMEOUT_S) -> Outcome:
        mc = self._unary.get(method)
        if mc is None:
            mc = self._unary[method] = self.channel.unary_unary(method)
        t0 = time.perf_counter()
        try:
            resp = await mc(payload, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            return _outcome_of(exc, t0)
        return Outcome(C.OK, "", 0, resp, time.perf_counter() - t0)

    async def stream_unary(self, method: str, payloads: Iterable[bytes], timeout: float = CALL_TIMEOUT_S) -> Outcome:
        mc = self.channel.stream_unary(method)
        t0 = time.perf_counter()

        async def gen() -> Any:
            for p in payloads:
                yield p

        try:
            resp = await mc(gen(), timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            return _outcome_of(exc, t0)
        return Outcome(C.OK, "", 0, resp, time.perf_counter() - t0)

    async def unary_stream(self, method: str, payload: bytes, timeout: float = CALL_TIMEOUT_S,
                           max_messages: int = 3) -> Outcome:
        """The first messages of a server stream; a stream still open after them is cancelled and
        counts as OK (a watch on a live run never ends by itself)."""
        call = self.channel.unary_stream(method)(payload, timeout=timeout)
        t0 = time.perf_counter()
        got: list[bytes] = []
        try:
            async for m in call:
                got.append(m)
                if len(got) >= max_messages:
                    call.cancel()
                    break
        except grpc.aio.AioRpcError as exc:
            return _outcome_of(exc, t0)
        except asyncio.CancelledError:
            pass
        return Outcome(C.OK, "", 0, b"".join(got), time.perf_counter() - t0)


_MB = 2**20


def rss_mb(pid: int | None = None) -> float:
    """Resident set size of process ``pid`` (this process when None) in MiB; 0.0 once it is gone."""
    try:
        return psutil.Process(pid).memory_info().rss / _MB
    except psutil.Error:
        return 0.0


def reset_peak_rss(pid: int) -> bool:
    """Reset the kernel's RSS high-water mark of ``pid`` (VmHWM; Linux: /proc/PID/clear_refs "5").
    False where that is not possible (another OS, a kernel or sandbox without it)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return peak_rss_mb(pid) is not None


def peak_rss_mb(pid: int) -> float | None:
    """The kernel's RSS high-water mark of ``pid`` in MiB (VmHWM), None where not available."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def trim_memory() -> None:
    """Give freed heap memory back to the OS (glibc malloc_trim; nothing elsewhere)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


@dataclass
class Finding:
    method: str
    code: str
    details: str
    case: str


MAX_DISTINCT_FINDINGS = 64  # kinds of finding kept with a case each; all are counted


@dataclass
class Tally:
    """Outcomes per method and the RSS of the server under test (process ``pid``).

    ``bad`` holds the first finding of each kind (method, code, start of the details; at most
    MAX_DISTINCT_FINDINGS kinds) and ``n_bad`` counts them all (see ``record``). Server RSS is
    sampled at the start, every ``rss_every`` answers and at the end (``summary``); where the
    kernel keeps a resettable high-water mark (Linux VmHWM), it is reset at the start and read at
    the end, so the peak also covers the moments between samples, inside a call. The test
    process's own RSS (hypothesis and this harness) is kept apart as ``client_rss_*``."""

    pid: int | None = None
    rss_every: int = 1
    server_log: Callable[[], str] | None = None  # the server's last log lines, for failure messages
    codes: dict[str, collections.Counter[str]] = field(default_factory=lambda: collections.defaultdict(collections.Counter))
    bad: list[Finding] = field(default_factory=list)
    n_bad: int = 0
    slowest_s: dict[str, float] = field(default_factory=lambda: collections.defaultdict(float))
    rss_start_mb: float = 0.0
    rss_peak_mb: float = 0.0
    rss_hwm: bool = False
    client_rss_start_mb: float = 0.0
    client_rss_peak_mb: float = 0.0
    _kinds: set[tuple[str, str, str]] = field(default_factory=set, repr=False)
    _n: int = 0

    def __post_init__(self) -> None:
        if self.pid is not None:
            self.rss_hwm = reset_peak_rss(self.pid)
            self.rss_start_mb = self.rss_peak_mb = rss_mb(self.pid)
        self.client_rss_start_mb = self.client_rss_peak_mb = rss_mb()

    def sample_rss(self) -> None:
        if self.pid is not None:
            self.rss_peak_mb = max(self.rss_peak_mb, rss_mb(self.pid))
        self.client_rss_peak_mb = max(self.client_rss_peak_mb, rss_mb())

    def record(self, method: str, outcome: Outcome, allowed: set[grpc.StatusCode], case: Any,
               check_ok: Callable[[bytes], str | None] | None = None) -> None:
        """Count the answer; it is a finding when its code is neither OK nor allowed, its details or
        trailers are too large to be a bounded message, or ``check_ok`` finds a bad OK answer."""
        self.codes[method][outcome.code.name] += 1
        self.slowest_s[method] = max(self.slowest_s[method], outcome.seconds)
        self._n += 1
        if self._n % self.rss_every == 0:
            self.sample_rss()
        problem = None
        if outcome.code != C.OK and outcome.code not in allowed:
            problem = "undocumented status"
        elif len(outcome.details.encode()) > MAX_DETAILS_BYTES:
            problem = f"details of {len(outcome.details.encode())} bytes"
        elif outcome.trailer_bytes > MAX_TRAILER_BYTES:
            problem = f"trailers of {outcome.trailer_bytes} bytes"
        elif outcome.code == C.OK and check_ok is not None and outcome.response is not None:
            problem = check_ok(outcome.response)
        if problem is not None:
            self.n_bad += 1
            details = f"{problem}: {outcome.details[:300]}"
            kind = (method, outcome.code.name, details[:60])
            if kind not in self._kinds and len(self._kinds) < MAX_DISTINCT_FINDINGS:
                self._kinds.add(kind)
                self.bad.append(Finding(method, outcome.code.name, details, _short(case)))

    def cases(self, prefix: str = "") -> int:
        return sum(sum(c.values()) for m, c in self.codes.items() if m.startswith(prefix))

    def server_alive(self) -> bool:
        """The server process still runs (a crash would otherwise read as UNAVAILABLE answers)."""
        if self.pid is None:
            return True
        try:
            return psutil.Process(self.pid).status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def server_log_tail(self) -> str:
        return self.server_log() if self.server_log is not None else ""

    def finish(self) -> None:
        """The end-of-test RSS sample (and the kernel's peak where there is one)."""
        self.sample_rss()
        if self.pid is not None and self.rss_hwm:
            hwm = peak_rss_mb(self.pid)
            if hwm is not None:
                self.rss_peak_mb = max(self.rss_peak_mb, hwm)

    def summary(self) -> dict[str, Any]:
        self.finish()
        return {
            "cases": self.cases(),
            "codes": {m: dict(sorted(c.items())) for m, c in sorted(self.codes.items())},
            "slowest_s": {m: round(s, 3) for m, s in sorted(self.slowest_s.items())},
            "rss_of": f"server process {self.pid}" if self.pid is not None else "none",
            "server_alive": self.server_alive(),
            "rss_start_mb": round(self.rss_start_mb, 1),
            "rss_peak_mb": round(self.rss_peak_mb, 1),
            "rss_end_mb": round(rss_mb(self.pid), 1) if self.pid is not None else 0.0,
            "rss_peak_includes_hwm": self.rss_hwm,
            "client_rss_start_mb": round(self.client_rss_start_mb, 1),
            "client_rss_peak_mb": round(self.client_rss_peak_mb, 1),
            "findings": self.n_bad,
        }

    def report(self, limit: int = 8) -> str:
        """Distinct findings (by method, code and the start of the details), with one case each."""
        lines = [f"{f.method} -> {f.code} ({f.details}) for {f.case}" for f in self.bad[:limit]]
        return f"{self.n_bad} findings, {len(self.bad)} distinct kinds kept:\n" + "\n".join(lines)


def _short(case: Any, limit: int = 400) -> str:
    if isinstance(case, bytes | bytearray):
        text = repr(bytes(case[:200])) + (f"... ({len(case)} bytes)" if len(case) > 200 else "")
    else:
        text = repr(case)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"


def dumps(summary: dict[str, Any]) -> str:
    return json.dumps(summary, sort_keys=True)


__all__ = [
    "CALL_TIMEOUT_S", "DOCUMENTED", "RAW_EXTRA", "Fuzzer", "LoopThread", "Outcome", "RawCaller", "ServerProcess",
    "Tally", "build", "deep_config_struct", "image_bytes", "image_message_values", "images", "ints", "peak_rss_mb",
    "raw_payloads", "reset_peak_rss", "rss_mb", "texts", "trim_memory",
]
