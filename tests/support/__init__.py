"""Helpers shared by the test suite (and by ``bench/bench_tls.py``), importable as ``support``.

Scope: :mod:`support.pki` (test certificates and keys built with ``cryptography``),
:mod:`support.tls` (signers, an emulated mTLS card and ``openssl s_server`` for the TLS interop
tests) and :mod:`support.tearing` (the kill-at-write-point harness of the tearing tests, both the
child's and the parent's side). pytest finds the package through ``pythonpath = ["tests"]`` in
pyproject.toml; scripts run as subprocesses put ``tests/`` on ``sys.path`` themselves.

Not covered: fixtures (each test module keeps its own) and anything under ``src/``.
"""
