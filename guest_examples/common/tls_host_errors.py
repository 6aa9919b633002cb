"""Guest-side helpers for this project's wasi-tls-host:tls interfaces: errors as text."""

from wit_world.imports import streams
from wit_world.imports import wasi_tls_host_tls_types as tls_types


def describe(err):
    """A package `error` record as `code: message`."""
    return f"{err.code.name.lower().replace('_', '-')}: {err.message}"


def would_block(e):
    """Whether an Err from this package means "not ready yet: wait on subscribe()"."""
    return isinstance(e.value, tls_types.Error) and e.value.code == tls_types.ErrorCode.WOULD_BLOCK


def stream_error(e):
    """Why a plaintext stream call failed, as `code: message`; None for a clean end of data."""
    value = e.value
    if isinstance(value, streams.StreamError_Closed):
        return None
    code = tls_types.error_code_of(value.value)
    name = code.name.lower().replace("_", "-") if code is not None else "io"
    return f"{name}: {value.value.to_debug_string()}"


def error_text(e):
    """Any Err a TLS guest's connection can meet (a stream's, this package's, a socket's) as
    one line: `code: message` where there is one."""
    value = e.value
    if isinstance(value, (streams.StreamError_Closed, streams.StreamError_LastOperationFailed)):
        return stream_error(e) or "closed"
    if isinstance(value, tls_types.Error):
        return describe(value)
    return getattr(value, "name", repr(value)).lower().replace("_", "-")
