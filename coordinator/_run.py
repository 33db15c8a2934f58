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
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from typing import Any

from coordinator._drivers import fenced_sync
from coordinator._errors import StaleTerm
from coordinator._fencing import FencedTransaction, Leadership, fenced_transaction
from coordinator._timetable import Outcome, Timetable

__all__ = ["RunContext", "ThreadRunContext"]


class RunContext:
    """One run of one tick of a leader-only job."""

    def __init__(
        self,
        job_id: str,
        term: int,
        scheduled_at: datetime,
        attempt: int,
        *,
        leadership: Leadership,
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
        self._refuse_second_commit()
        async with fenced_transaction(
            self._leadership, self._timetable.pool, self._assert_term_sql, term=self.term
        ) as tx:
            yield tx
            self._check_finished(
                await self._timetable.finish(
                    self.term,
                    self.job_id,
                    self.scheduled_at,
                    Outcome.DONE,
                    time.monotonic() - self._started,
                    conn=tx.conn,
                )
            )
        self.committed = True

    def _refuse_second_commit(self) -> None:
        if self.committed:
            raise RuntimeError(
                f"the run of {self.job_id} at {self.scheduled_at.isoformat()} already committed "
                "its fenced transaction: write everything of one run in one run.fenced()"
            )

    def _check_finished(self, finished: bool) -> None:
        if not finished:
            raise StaleTerm(
                f"the tick of {self.job_id} at {self.scheduled_at.isoformat()} is no longer "
                f"claimed by term {self.term}: stop the work of this run"
            )


class ThreadRunContext:
    """The run context of a job of :mod:`coordinator.sync`, which runs in a thread.

    The same tick, term and attempt; ``fenced(conn)`` takes the application's
    own blocking connection (psycopg 3, SQLAlchemy) and marks the tick done
    in that transaction.
    """

    def __init__(self, run: RunContext) -> None:
        self._run = run
        self.job_id = run.job_id
        self.term = run.term
        self.scheduled_at = run.scheduled_at
        self.attempt = run.attempt

    def __repr__(self) -> str:
        return repr(self._run)

    @contextlib.contextmanager
    def fenced(self, conn: Any) -> Iterator[FencedTransaction]:
        """A fenced transaction on ``conn`` that also marks this tick done; once per run.

        ``conn`` is a psycopg 3 ``Connection`` or a SQLAlchemy ``Connection``
        or ``Session``. Raises NotLeader or StaleTerm; the transaction then
        rolls back.
        """
        run = self._run
        run._refuse_second_commit()
        with fenced_sync(run._leadership, conn, run._assert_term_sql, term=run.term) as tx:
            yield tx
            run._check_finished(
                run._timetable.finish_sync(
                    conn, run.term, run.job_id, run.scheduled_at, time.monotonic() - run._started
                )
            )
        run.committed = True
