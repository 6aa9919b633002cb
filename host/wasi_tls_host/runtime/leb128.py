"""LEB128 ``u32`` as the WebAssembly binary format encodes it (component and core module
sections, the module-signature format): at most 5 bytes, the value below 2**32."""

from __future__ import annotations


def encode_u32(value: int) -> bytes:
    if not 0 <= value < 1 << 32:
        raise ValueError(f"varuint32 out of range: {value}")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if not value:
            out.append(byte)
            return bytes(out)
        out.append(byte | 0x80)


def decode_u32(data: bytes | memoryview, offset: int, end: int | None = None) -> tuple[int, int]:
    """(value, offset after it); ValueError names what is wrong."""
    end = len(data) if end is None else end
    result = shift = 0
    for i in range(5):
        if offset + i >= end:
            raise ValueError("truncated varuint32")
        byte = data[offset + i]
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if i == 4 and byte & 0x70:
                raise ValueError("varuint32 out of range")
            return result, offset + i + 1
        shift += 7
    raise ValueError("varuint32 longer than 5 bytes")
