"""The term as a lease: trust extends only while trusted, and an ended term stays ended."""

from __future__ import annotations

import time

from coordinator._term import DemotionReason, Term


async def test_a_heartbeat_that_succeeds_after_the_deadline_does_not_revive_the_term() -> None:
    started = time.monotonic()
    term = Term(1, started - 2.0, trust_window=1.0)  # trusted until one second ago
    assert not term.trusted
    assert await term.wait_over() == DemotionReason.TRUST_EXPIRED
    term.extend(heartbeat_started=started)  # a slow heartbeat, begun in time, answered late
    assert term.ended == DemotionReason.TRUST_EXPIRED
    assert not term.trusted


async def test_a_heartbeat_moves_the_deadline_from_its_own_start() -> None:
    now = time.monotonic()
    term = Term(7, now, trust_window=60.0)
    term.extend(heartbeat_started=now + 5.0)
    assert term.trusted_until == now + 65.0
    term.extend(heartbeat_started=now + 1.0)  # an older heartbeat never shortens it
    assert term.trusted_until == now + 65.0


async def test_the_first_ending_wins_and_wakes_the_waiter() -> None:
    term = Term(3, time.monotonic(), trust_window=60.0)
    term.end(DemotionReason.CONNECTION_LOST)
    term.end(DemotionReason.RESIGNED)
    assert await term.wait_over() == DemotionReason.CONNECTION_LOST
    assert not term.trusted
