"""The measured processes, one module each, run as ``python -m bench.subjects.NAME``.

Each reports through :mod:`bench.emit` only. The peers' modules run in the
peers' own virtual environments and import nothing of this project but that.
"""
