"""The one thing every measured process does: report what happened, and when.

Each report is a JSON line on stdout carrying ``t``, the system-wide
``CLOCK_MONOTONIC`` reading: on Linux every process reads the same clock, so
the driver subtracts the moment it injected a fault from the moment another
process reports the effect. Standard library only: the peers' processes
import this module from their own virtual environments.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

__all__ = ["emit", "now"]


def now() -> float:
    return time.clock_gettime(time.CLOCK_MONOTONIC)


def emit(event: str, **fields: Any) -> None:
    """Print one report; the time is read first, so printing never delays it."""
    t = now()
    sys.stdout.write(json.dumps({"event": event, "t": t, **fields}) + "\n")
    sys.stdout.flush()
