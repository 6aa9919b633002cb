"""The interop suite as a library: ``run_matrix(MatrixOptions(...))`` runs guests, hosts and
TLS implementations against each other and returns a ``Report`` (``report.write(report, DIR)``
writes report.json, report.md and index.html). ``wasi-tls-host interop`` is its command line;
``wasi_tls_host.interop.pytest_plugin`` gives other projects' test suites the same parts.
"""

from __future__ import annotations

from .matrix import MatrixOptions, UnknownName, run_matrix
from .report import Case, Report, write

__all__ = ["Case", "MatrixOptions", "Report", "UnknownName", "run_matrix", "write"]
