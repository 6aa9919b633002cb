"""Tools for developing wasi-tls-host (not installed with the package): the signature table
regenerator and the wasi-testsuite runner. Run from a checkout, e.g.
``python -m devtools.signatures``."""
