"""The matrix's report: ``report.json`` (the schema below), ``report.md`` and a self-contained
``index.html`` (one colored grid per guest and role; no script, no CDN).

    {"cases": [{"guest", "toolchain", "wasi", "role", "host", "runtime", "peer", "peer_version",
                "tls_version", "feature", "outcome", "detail", "ms"}],
     "summary": {"cases", "pass", "fail", "skip", "n/a", "seconds", "started", "machine",
                 "host", "peers", "hosts", "figures"}}
"""

from __future__ import annotations

import html
import json
import os
import platform
import statistics
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

OUTCOMES = ("pass", "fail", "skip", "n/a")


@dataclass
class Case:
    guest: str
    toolchain: str
    wasi: str  # "0.2" or "0.3"
    role: str  # the guest's role: "client" or "server"
    host: str  # "wasi-tls-host" or "wasmtime CLI"
    runtime: str  # "core", "component" or "wasmtime"
    peer: str
    peer_version: str
    tls_version: str  # "1.2" or "1.3"
    feature: str
    outcome: str  # one of OUTCOMES
    detail: str
    ms: float | None = None  # the handshake, as the guest's side measured it

    @property
    def column(self) -> str:
        return f"this host {self.runtime}" if self.host == "wasi-tls-host" else self.host


@dataclass
class Figure:
    """The median handshake of a guest with a peer beside the same handshake between peers."""

    guest: str
    role: str
    host: str
    runtime: str
    peer: str
    tls_version: str
    ms: float
    samples: int
    reference: str
    reference_ms: float | None
    ratio: float | None
    measured_by: str = "host"  # who timed the guest's side: "host" (this host's TLS) or "guest" (it printed handshake-us)


@dataclass
class Report:
    cases: list[Case] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        counts = {outcome: 0 for outcome in OUTCOMES}
        for case in self.cases:
            counts[case.outcome] += 1
        return counts

    @property
    def failed(self) -> bool:
        return any(case.outcome == "fail" for case in self.cases)

    def to_json(self) -> dict[str, Any]:
        return {"cases": [asdict(c) for c in self.cases], "summary": self.summary}


def machine() -> dict[str, Any]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "load_average_at_end": [round(x, 2) for x in load] if load else None}


def median_ms(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.median(present), 3) if present else None


# --- writers -----------------------------------------------------------------------------


def write(report: Report, out: Path) -> list[Path]:
    """Write report.json, report.md and index.html into ``out``, each atomically."""
    written = []
    for name, text in (("report.json", json.dumps(report.to_json(), indent=1) + "\n"), ("report.md", markdown(report)),
                       ("index.html", page(report))):
        path = out / name
        fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        written.append(path)
    return written


def _grids(report: Report) -> dict[tuple[str, str], list[Case]]:
    grids: dict[tuple[str, str], list[Case]] = {}
    for case in report.cases:
        grids.setdefault((case.guest, case.role), []).append(case)
    return grids


def _columns(cases: list[Case]) -> list[tuple[str, str, str]]:
    """(host column, peer, version) in first-seen order."""
    seen: dict[tuple[str, str, str], None] = {}
    for case in cases:
        seen.setdefault((case.column, case.peer, case.tls_version), None)
    return list(seen)


def _features(cases: list[Case]) -> list[str]:
    return list(dict.fromkeys(case.feature for case in cases))


MARK = {"pass": "pass", "fail": "FAIL", "skip": "skip", "n/a": "n/a"}


def markdown(report: Report) -> str:
    s = report.summary
    counts = report.counts()
    lines = ["# wasi-tls-host interop report", "",
             f"{len(report.cases)} cases in {s.get('seconds', 0):.0f} s: " + ", ".join(f"{counts[o]} {o}" for o in OUTCOMES), ""]
    lines += ["## Peers", "", "| peer | implementation | version | status |", "|---|---|---|---|"]
    for name, peer in s.get("peers", {}).items():
        lines.append(f"| {name} | {peer['implementation']} | {peer['version']} | {peer['status']} |")
    lines += ["", "## Hosts", "", "| host | version | status |", "|---|---|---|"]
    for name, info in s.get("hosts", {}).items():
        lines.append(f"| {name} | {info['version']} | {info['status']} |")
    figures = s.get("figures", [])
    if figures:
        lines += ["", "## Handshake figures (median ms of 3 full handshakes, one case at a time; the same handshake between peers beside it)", "",
                  "| guest | WASI | role | runtime | peer | TLS | ms | timed by | samples | reference | reference ms | ratio |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        wasi = {name: g.get("wasi", "?") for name, g in s.get("guests", {}).items()}
        for f in figures:
            ratio = f"{f['ratio']:.1f}x" if f["ratio"] is not None else "-"
            ref = f"{f['reference_ms']:.2f}" if f["reference_ms"] is not None else "-"
            lines.append(f"| {f['guest']} | {wasi.get(f['guest'], '?')} | {f['role']} | {f['runtime']} | {f['peer']} | {f['tls_version']} | {f['ms']:.2f} | "
                         f"{f.get('measured_by', 'host')} | {f['samples']} | {f['reference']} | {ref} | {ratio} |")
    for (guest, role), cases in _grids(report).items():
        columns = _columns(cases)
        lines += ["", f"## {guest} ({role}, WASI {cases[0].wasi}, {cases[0].toolchain})", "",
                  "| feature | " + " | ".join(f"{c} {p} {v}" for c, p, v in columns) + " |", "|---" * (len(columns) + 1) + "|"]
        by_key = {(c.feature, c.column, c.peer, c.tls_version): c for c in cases}
        for feature in _features(cases):
            cells = [MARK[by_key[(feature, *col)].outcome] if (feature, *col) in by_key else "" for col in columns]
            lines.append(f"| {feature} | " + " | ".join(cells) + " |")
    failures = [c for c in report.cases if c.outcome == "fail"]
    if failures:
        lines += ["", "## Failures", ""]
        for c in failures:
            lines.append(f"- {c.guest} ({c.role}) on {c.column}, {c.peer} TLS {c.tls_version}, {c.feature}: {c.detail}")
    return "\n".join(lines) + "\n"


COLORS = {"pass": "#2e7d32", "fail": "#c62828", "skip": "#9e9e9e", "n/a": "#e0e0e0"}
TEXT = {"pass": "#fff", "fail": "#fff", "skip": "#fff", "n/a": "#555"}


def page(report: Report) -> str:
    e = html.escape
    s = report.summary
    counts = report.counts()
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>wasi-tls-host interop report</title><style>",
        "body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;margin:.5em 0 1.5em}",
        "td,th{border:1px solid #ccc;padding:2px 5px;text-align:center}th{background:#f5f5f5;font-weight:600}",
        "td.f{text-align:left;white-space:nowrap}th.v{writing-mode:vertical-rl;transform:rotate(180deg);white-space:nowrap}",
        "td.c{min-width:1.6em;font-size:11px}",
        *(f"td.{o.replace('/', '')}{{background:{COLORS[o]};color:{TEXT[o]}}}" for o in OUTCOMES),
        "</style></head><body><h1>wasi-tls-host interop report</h1>",
        f"<p>{len(report.cases)} cases in {s.get('seconds', 0):.0f} s: "
        + ", ".join(f"<b>{counts[o]}</b> {o}" for o in OUTCOMES) + f". Started {e(str(s.get('started', '')))}.</p>",
        "<p>Each cell is one case; hover for its detail. "
        + " ".join(f"<span style='background:{COLORS[o]};color:{TEXT[o]};padding:0 4px'>{o}</span>" for o in OUTCOMES) + "</p>",
        "<h2>Peers</h2><table><tr><th>peer</th><th>implementation</th><th>version</th><th>status</th></tr>",
    ]
    for name, peer in s.get("peers", {}).items():
        parts.append(f"<tr><td>{e(name)}</td><td>{e(peer['implementation'])}</td><td>{e(peer['version'])}</td><td>{e(peer['status'])}</td></tr>")
    parts.append("</table><h2>Hosts</h2><table><tr><th>host</th><th>version</th><th>status</th></tr>")
    for name, info in s.get("hosts", {}).items():
        parts.append(f"<tr><td>{e(name)}</td><td>{e(info['version'])}</td><td>{e(info['status'])}</td></tr>")
    parts.append("</table>")
    figures = s.get("figures", [])
    if figures:
        parts.append("<h2>Handshake figures</h2><p>Median of 3 full handshakes of each guest with each peer, measured one at a "
                     "time after the matrix, beside the same handshake between two peers measured right before it. "
                     "<i>timed by</i>: the guest's own figure, or this host's (from the guest's request to the established handshake).</p>"
                     "<table><tr><th>guest</th><th>WASI</th><th>role</th><th>runtime</th>"
                     "<th>peer</th><th>TLS</th><th>ms</th><th>timed by</th><th>samples</th><th>reference</th><th>reference ms</th><th>ratio</th></tr>")
        wasi = {name: g.get("wasi", "?") for name, g in s.get("guests", {}).items()}
        for f in figures:
            ratio = f"{f['ratio']:.1f}x" if f["ratio"] is not None else "-"
            ref = f"{f['reference_ms']:.2f}" if f["reference_ms"] is not None else "-"
            parts.append(f"<tr><td>{e(f['guest'])}</td><td>{e(wasi.get(f['guest'], '?'))}</td><td>{f['role']}</td><td>{e(f['runtime'])}</td><td>{e(f['peer'])}</td>"
                         f"<td>{f['tls_version']}</td><td>{f['ms']:.2f}</td><td>{e(f.get('measured_by', 'host'))}</td><td>{f['samples']}</td><td>{e(f['reference'])}</td>"
                         f"<td>{ref}</td><td>{ratio}</td></tr>")
        parts.append("</table>")
    for (guest, role), cases in _grids(report).items():
        columns = _columns(cases)
        parts.append(f"<h2>{e(guest)} <small>({role}, WASI {e(cases[0].wasi)}, {e(cases[0].toolchain)})</small></h2><table><tr><th>feature</th>")
        parts += [f"<th class=v>{e(c)} &middot; {e(p)} &middot; TLS {v}</th>" for c, p, v in columns]
        parts.append("</tr>")
        by_key = {(c.feature, c.column, c.peer, c.tls_version): c for c in cases}
        for feature in _features(cases):
            parts.append(f"<tr><td class=f>{e(feature)}</td>")
            for col in columns:
                case = by_key.get((feature, *col))
                if case is None:
                    parts.append("<td></td>")
                    continue
                tip = f"{case.outcome}: {case.detail}" + (f" ({case.ms:.2f} ms)" if case.ms is not None else "")
                label = {"pass": "&#10003;", "fail": "&#10007;", "skip": "-", "n/a": ""}[case.outcome]
                parts.append(f"<td class='c {case.outcome.replace('/', '')}' title='{e(tip, quote=True)}'>{label}</td>")
            parts.append("</tr>")
        parts.append("</table>")
    failures = [c for c in report.cases if c.outcome == "fail"]
    if failures:
        parts.append("<h2>Failures</h2><ul>")
        parts += [f"<li>{e(c.guest)} ({c.role}) on {e(c.column)}, {e(c.peer)} TLS {c.tls_version}, <b>{e(c.feature)}</b>: {e(c.detail)}</li>"
                  for c in failures]
        parts.append("</ul>")
    parts.append("</body></html>\n")
    return "".join(parts)
