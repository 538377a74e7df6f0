#!/usr/bin/env python3
"""Writes the committed seed inputs: protobuf-encoded Structs for `content`
(hand-encoded, so no protoc is needed) and payload JSON texts for
`client_event`. Run from anywhere: python3 fuzz/seeds/make_seeds.py"""

import json
import math
import pathlib
import struct

HERE = pathlib.Path(__file__).resolve().parent


def varint(n):
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def field(number, wire, payload):
    return varint(number << 3 | wire) + payload


def length_delimited(number, payload):
    return field(number, 2, varint(len(payload)) + payload)


def value(v):
    """google.protobuf.Value"""
    if v is None:
        return field(1, 0, varint(0))
    if isinstance(v, bool):
        return field(4, 0, varint(int(v)))
    if isinstance(v, (int, float)):
        return field(2, 1, struct.pack("<d", float(v)))
    if isinstance(v, str):
        return length_delimited(3, v.encode())
    if isinstance(v, dict):
        return length_delimited(5, struct_(v))
    if isinstance(v, list):
        return length_delimited(6, b"".join(length_delimited(1, value(i)) for i in v))
    raise TypeError(v)


def struct_(d):
    """google.protobuf.Struct: map<string, Value> fields = 1"""
    out = b""
    for key, v in d.items():
        entry = length_delimited(1, key.encode()) + length_delimited(2, value(v))
        out += length_delimited(1, entry)
    return out


CONTENT = {
    "readme": {"message": "Product has been uploaded successfully", "data": {"id": 63}},
    "mixed": {
        "id": 63, "price": "22", "discount": 3244.9, "isAvailable": True, "none": None,
        "nested": {"list": [1, -2, 0.5, "x", {"deep": []}]},
        "unicode": "Größe ✓ 日本", "big": 9007199254740992, "negative": -17,
    },
    "numbers": {"tiny": 5e-324, "huge": 1.7976931348623157e308, "past_safe": 9007199254740994,
                "minus_zero": -0.0, "third": 1 / 3, "neg_big": -1e300},
    "non_finite": {"nan": math.nan},
    "empty": {},
    "deep": {"a": {"b": {"c": {"d": [[[{"e": None}]]]}}}},
}

CLIENT_EVENT = {
    "page": {"page": 2, "limit": 20},
    "page_defaults": {},
    "page_zero": {"page": 0, "limit": 101},
    "page_string": {"page": "2"},
    "mark": {"ids": ["68553796000745d4620985bc", "68553796000745D4620985BC"]},
    "mark_bad": {"ids": ["68553796000745d4620985bc", 7, "nope"]},
    "mark_empty": {"ids": []},
    "null": None,
    "array": [1, 2],
}

for name, content in CONTENT.items():
    (HERE / "content" / name).write_bytes(struct_(content))
for name, payload in CLIENT_EVENT.items():
    (HERE / "client_event" / name).write_text(json.dumps(payload, ensure_ascii=False))
