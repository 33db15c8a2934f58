"""The run context of a leader-only job: its term, its tick, and one fenced transaction.

A job that asks for it (a parameter named ``run``, or one annotated
``RunContext``) writes through ``run.fenced()``. That transaction checks the
term first, like every fenced transaction, and marks the tick done just
before it commits: the run's database effects and "this tick is done"
commit together or not at all. A tick whose transaction never committed is
run again by the next leader (within the job's ``misfire_grace_time``); one
that committed is never run again.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Protocol

from coordinator._errors import StaleTerm
from coordinator._fencing import FencedTransaction, fenced_transaction
from coordinator._timetable import Outcome, Timetable

__all__ = ["RunContext"]


class _Leadership(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def term(self) -> int | None: ...


class RunContext:
    """One run of one tick of a leader-only job."""

    def __init__(
        self,
        job_id: str,
        term: int,
        scheduled_at: datetime,
        attempt: int,
        *,
        leadership: _Leadership,
        timetable: Timetable,
        assert_term_sql: str,
    ) -> None:
        self.job_id = job_id
        #: The term this run belongs to; its writes commit in this term or not at all.
        self.term = term
        #: The tick's scheduled fire time (timezone-aware), the same on every attempt.
        self.scheduled_at = scheduled_at
        #: 1, or more when an earlier leader's run of this tick never committed.
        self.attempt = attempt
        self._leadership = leadership
        self._timetable = timetable
        self._assert_term_sql = assert_term_sql
        self._started = time.monotonic()
        self.committed = False

    def __repr__(self) -> str:
        return (
            f"<RunContext {self.job_id} at {self.scheduled_at.isoformat()} term={self.term} "
            f"attempt={self.attempt}>"
        )

    @contextlib.asynccontextmanager
    async def fenced(self) -> AsyncIterator[FencedTransaction]:
        """A fenced transaction on the application's pool that also marks this tick done.

        Once per run. Raises NotLeader or StaleTerm (the run's term is over, or
        another term took the tick over); the transaction then rolls back.
        """
        if self.committed:
            raise RuntimeError(
                f"the run of {self.job_id} at {self.scheduled_at.isoformat()} already committed "
                "its fenced transaction: write everything of one run in one run.fenced()"
            )
        async with fenced_transaction(
            self._leadership, self._timetable.pool, self._assert_term_sql, term=self.term
        ) as tx:
            yield tx
            finished = await self._timetable.finish(
                self.term,
                self.job_id,
                self.scheduled_at,
                Outcome.DONE,
                time.monotonic() - self._started,
                conn=tx.conn,
            )
            if not finished:
                raise StaleTerm(
                    f"the tick of {self.job_id} at {self.scheduled_at.isoformat()} is no longer "
                    f"claimed by term {self.term}: stop the work of this run"
                )
        self.committed = True
