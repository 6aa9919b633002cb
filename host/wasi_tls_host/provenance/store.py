"""Content-addressed module stores: a component named by its digest, fetched from wherever
it is published, checked before use.

A store is a directory laid out as ``DIR/sha256/<hex>.wasm`` or an HTTPS base URL with the
same layout under it. ``resolve`` looks in the local store first, then in each given store
in order; bytes from anywhere are hashed and compared with the name before anything else
happens, and what came from afar is kept in the local store. A store that answers with
other bytes is refused (DigestMismatch names both digests).

HTTPS fetches use the host's own trust settings (the system's store, which honours
``SSL_CERT_FILE``; an embedder can give an ``ssl.SSLContext``), never plain HTTP, never a
redirect away from HTTPS, with a size limit and a per-read timeout.
"""

from __future__ import annotations

import hashlib
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

from ..runtime.artifact_auth import write_atomically
from ..runtime.cache import user_cache_dir
from .digest import DigestMismatch, ProvenanceError, digest, parse_digest

DEFAULT_MAX_BYTES = 256 << 20
TIMEOUT_SECONDS = 30.0
FETCH_SECONDS = 600.0  # a whole module, at most DEFAULT_MAX_BYTES
# progress(received bytes, expected total or None)
Progress = Callable[[int, "int | None"], None]


class StoreError(ProvenanceError):
    """A module could not be found or fetched; the message says where it looked and why."""


def default_store_dir() -> Path:
    return user_cache_dir("modules", "WASI_TLS_HOST_MODULE_STORE")


def relative_path(name: str) -> str:
    return "sha256/" + parse_digest(name).split(":", 1)[1] + ".wasm"


class DirectoryStore:
    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def path(self, name: str) -> Path:
        return self.directory / relative_path(name)

    def add(self, wasm: bytes) -> str:
        """Store the bytes under their digest (atomically); return the digest."""
        name = digest(wasm)
        target = self.path(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(target, wasm)
        return name

    def get(self, name: str) -> bytes | None:
        """The stored bytes if present and genuine; a file with other bytes is refused."""
        try:
            wasm = self.path(name).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StoreError(f"cannot read {self.path(name)}: {e.strerror}") from None
        found, wanted = digest(wasm), parse_digest(name)
        if found != wanted:
            raise DigestMismatch(found, [wanted], f"module in store {self.directory}")
        return wasm

    def __str__(self) -> str:
        return str(self.directory)


class _HttpsOnlyRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        if urlsplit(newurl).scheme != "https":
            raise StoreError(f"refused a redirect from {req.full_url} to non-HTTPS {newurl}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class HttpsStore:
    def __init__(self, base_url: str, context: ssl.SSLContext | None = None, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if urlsplit(base_url).scheme != "https":
            raise ValueError(f"a remote module store must be an https:// URL, not {base_url!r}")
        self.base_url = base_url.rstrip("/") + "/"
        self.context = context or ssl.create_default_context()
        self.max_bytes = max_bytes

    def url(self, name: str) -> str:
        return self.base_url + relative_path(name)

    def get(self, name: str, progress: Progress | None = None) -> bytes | None:
        """Fetch and verify; None if the store does not have it (404)."""
        url = self.url(name)
        opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=self.context), _HttpsOnlyRedirects())
        try:
            with opener.open(url, timeout=TIMEOUT_SECONDS) as response:
                length = response.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                if total is not None and total > self.max_bytes:
                    raise StoreError(f"{url}: {total} bytes is over the limit of {self.max_bytes}")
                hasher, chunks, received = hashlib.sha256(), [], 0
                # TIMEOUT_SECONDS bounds each read; this bounds the whole transfer (a server
                # trickling a byte at a time would otherwise hold the run for days).
                deadline = time.monotonic() + FETCH_SECONDS
                while chunk := response.read(1 << 16):
                    if time.monotonic() > deadline:
                        raise StoreError(f"{url}: not received within {FETCH_SECONDS:g} s ({received} bytes so far)")
                    received += len(chunk)
                    if received > self.max_bytes:
                        raise StoreError(f"{url}: more than the limit of {self.max_bytes} bytes")
                    hasher.update(chunk)
                    chunks.append(chunk)
                    if progress:
                        progress(received, total)
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None
            raise StoreError(f"{url}: HTTP {e.code} {e.reason}") from None
        except urllib.error.URLError as e:
            reason = e.reason
            if isinstance(reason, ssl.SSLCertVerificationError):
                raise StoreError(f"{url}: the server's certificate is not trusted ({reason.verify_message})") from None
            raise StoreError(f"{url}: {reason}") from None
        except (OSError, ssl.SSLError) as e:
            raise StoreError(f"{url}: {e}") from None
        found = "sha256:" + hasher.hexdigest()
        if found != parse_digest(name):
            raise DigestMismatch(found, [parse_digest(name)], f"module served by {self.base_url}")
        return b"".join(chunks)

    def __str__(self) -> str:
        return self.base_url


Store = DirectoryStore | HttpsStore


def open_store(location: str, context: ssl.SSLContext | None = None, max_bytes: int = DEFAULT_MAX_BYTES) -> Store:
    """A store from a person's words: an https:// URL or a directory."""
    if "://" in location:
        return HttpsStore(location, context, max_bytes)
    return DirectoryStore(location)


def resolve(name: str, stores: list[Store], local: DirectoryStore | None = None, progress: Progress | None = None) -> bytes:
    """The verified bytes of module ``name`` (``sha256:<hex>``).

    Looks in ``local`` (default: the per-user store), then in ``stores`` in order; what is
    found elsewhere is copied into ``local``. Raises DigestMismatch if a store answers with
    other bytes, StoreError if no store has it.
    """
    name = parse_digest(name)
    local = local or DirectoryStore(default_store_dir())
    wasm = local.get(name)
    if wasm is not None:
        return wasm
    for store in stores:
        found = store.get(name, progress) if isinstance(store, HttpsStore) else store.get(name)
        if found is not None:
            if not (isinstance(store, DirectoryStore) and store.directory == local.directory):
                try:
                    local.add(found)
                except OSError:
                    pass  # a read-only local store must not stop a verified module from running
            return found
    looked = ", ".join(str(s) for s in [local, *stores])
    raise StoreError(f"module {name} is in none of the stores ({looked})")
