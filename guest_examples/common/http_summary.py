"""What the https_get examples (WASI 0.2 and 0.3) print about an HTTP/1.1 response read to
its end: the status line, the number of headers, and the body's length and SHA-256 (a
chunked body decoded first)."""

import hashlib


def dechunk(body: bytes) -> bytes:
    out, rest = [], body
    while rest:
        line, _, rest = rest.partition(b"\r\n")
        size = int(line.split(b";")[0], 16)
        if size == 0:
            break
        out.append(rest[:size])
        rest = rest[size + 2:]
    return b"".join(out)


def summary(response: bytes) -> list[str]:
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = dechunk(body)
    return [f"status: {lines[0]}", f"headers: {len(headers)}", f"body-bytes: {len(body)}",
            f"body-sha256: {hashlib.sha256(body).hexdigest()}"]
