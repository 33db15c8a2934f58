"""Benchmarks: failover after real faults, the floor, peers and overhead.

``python -m bench`` (or ``make bench``) measures everything on one embedded
PostgreSQL 18 in one run and writes ``bench/RESULTS.md`` and
``bench/failover.png``. Nothing here is imported by the library.
"""
