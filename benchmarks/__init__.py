"""Benchmarks and the torture run (``make bench``, ``make torture``); see README.md here.

The scripts run directly (``python benchmarks/run.py``) and put the repository root on the
path; what they share with the tests (ferryd, nginx, the fault server, the torture phases)
is in harness/. A package so they can import each other as ``benchmarks.*``.
"""
