"""Benchmarks and the torture run (``make bench``, ``make torture``); see README.md here.

A package so the short torture test (tests/integration/test_torture_short.py) can import
the torture driver's functions; the scripts also run directly (``python benchmarks/run.py``).
"""
