"""Reading the protobuf wire format without generated classes.

Two readers need it, and neither should need `protobuf` or mediapipe's generated code for
it: head pose reads the canonical face from `face_landmarker.task`'s geometry metadata, and
the trainer reads TFRecord `Example`s. A message is a run of (field number, wire type,
value) triples; this yields them, and the callers know their message's field numbers.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


class ProtoError(ValueError):
    """Bytes that are not the protobuf message they should be."""


def varint(buf: bytes, pos: int) -> tuple[int, int]:
    """The varint at `pos` and the position after it."""
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ProtoError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise ProtoError("varint longer than 10 bytes")


def iter_fields(buf: bytes) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value): int for varints, bytes for the rest."""
    pos, n = 0, len(buf)
    while pos < n:
        key, pos = varint(buf, pos)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise ProtoError("field number 0")
        if wire == 0:
            value, pos = varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == 2:
            size, pos = varint(buf, pos)
            value, pos = buf[pos : pos + size], pos + size
        elif wire == 5:
            value, pos = buf[pos : pos + 4], pos + 4
        else:
            raise ProtoError(f"unsupported wire type {wire} (groups are not used here)")
        if pos > n:
            raise ProtoError("truncated field")
        yield field, wire, value
