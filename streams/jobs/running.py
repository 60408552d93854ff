"""What every batch job shares: its row, its progress on screen, interruption, and its end.

On a terminal a progress bar shows the rate and the time left; without one, a line every few
seconds says the same. Ctrl-C or SIGTERM asks the job to stop at its next batch boundary; the
job's row then says ``cancelled`` with its position. Exit codes: 0 done, 1 done with failures,
130 interrupted.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from psycopg_pool import AsyncConnectionPool
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from projections.database import connection
from projections.jobs import JobState, finish_job, record_progress

EXIT_DONE = 0
EXIT_FAILURES = 1
EXIT_INTERRUPTED = 130
_STORE_EVERY = 1.0
_LINE_EVERY = 5.0


class Job:
    """A running batch job: its counts, its row in ``ops.batch_jobs`` and its progress."""

    def __init__(
        self, pool: AsyncConnectionPool, state: JobState, what: str, console: Console
    ) -> None:
        self.pool = pool
        self.state = state
        self.what = what
        self.console = console
        self.stopping = asyncio.Event()
        self.started = time.monotonic()
        self._counted_from = state.processed + state.failed
        self._stored = 0.0
        self._printed = self.started
        self._progress: Progress | None = None
        self._task: Any = None

    @property
    def interrupted(self) -> bool:
        """Whether Ctrl-C or SIGTERM asked the job to stop."""
        return self.stopping.is_set()

    async def advance(
        self, processed: int = 0, failed: int = 0, position: dict[str, Any] | None = None,
        *, total: int | None = None,
    ) -> None:
        """Count what the last batch did, remember the position, and show and store it."""
        state = self.state
        state.processed += processed
        state.failed += failed
        if position is not None:
            state.position = position
        if total is not None:
            state.total = total
        now = time.monotonic()
        if self._progress is not None:
            self._progress.update(self._task, completed=state.processed + state.failed,
                                  total=state.total)
        elif now - self._printed >= _LINE_EVERY:
            self._printed = now
            self.console.print(self._line(now), highlight=False)
        if now - self._stored >= _STORE_EVERY:
            self._stored = now
            async with connection(self.pool) as conn:
                await record_progress(conn, state)

    def _line(self, now: float) -> str:
        state = self.state
        done = state.processed + state.failed
        rate = (done - self._counted_from) / max(now - self.started, 1e-9)
        of = f" of {state.total:,}" if state.total is not None else ""
        left = ""
        if state.total is not None and rate > 0:
            left = f", about {max(0, state.total - done) / rate:,.0f} s left"
        return (
            f"{self.what} job {state.id}: {done:,}{of} events, {state.failed:,} failed, "
            f"{rate:,.0f}/s{left}"
        )

    def summary(self, status: str, rows: list[tuple[str, str]]) -> None:
        """Print the one-screen summary of the job's end."""
        state = self.state
        elapsed = time.monotonic() - self.started
        done = state.processed + state.failed - self._counted_from
        table = Table(title=f"{self.what} job {state.id}: {status}", show_header=False)
        table.add_column(style="bold")
        table.add_column(justify="right")
        for name, value in [
            ("processed", f"{state.processed:,}"),
            ("failed", f"{state.failed:,}"),
            *rows,
            ("seconds", f"{elapsed:,.1f}"),
            ("events/s", f"{done / max(elapsed, 1e-9):,.0f}"),
        ]:
            table.add_row(name, value)
        self.console.print(table)


@asynccontextmanager
async def running_job(
    pool: AsyncConnectionPool, state: JobState, what: str, *, console: Console | None = None
) -> AsyncIterator[Job]:
    """Run a job: signals ask it to stop, progress is shown, and its row is finished.

    The body ends normally when the job is done or was interrupted (check
    :attr:`Job.interrupted`); an exception marks the job ``failed`` with its one-line reason.
    """
    console = console or Console(stderr=True)
    job = Job(pool, state, what, console)
    loop = asyncio.get_running_loop()
    restore = _on_signals(loop, job.stopping.set)
    progress = (
        Progress(
            TextColumn(f"{what} job {state.id}"), BarColumn(), MofNCompleteColumn(),
            TaskProgressColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
            console=console, transient=True,
        )
        if console.is_terminal else None
    )
    try:
        if progress is not None:
            progress.start()
            job._progress = progress
            job._task = progress.add_task(
                what, total=state.total, completed=state.processed + state.failed
            )
        yield job
    except BaseException as exc:
        if progress is not None:
            progress.stop()
            job._progress = None
        status = "cancelled" if isinstance(exc, KeyboardInterrupt | asyncio.CancelledError) \
            else "failed"
        async with connection(pool) as conn:
            await finish_job(conn, state, status, _one_line(exc))
        raise
    else:
        if progress is not None:
            progress.stop()
        status = "cancelled" if job.interrupted else "succeeded"
        async with connection(pool) as conn:
            await finish_job(conn, state, status)
    finally:
        restore()


def exit_code(job: Job) -> int:
    """0 when the job did everything, 1 when some items failed, 130 when interrupted."""
    if job.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_FAILURES if job.state.failed else EXIT_DONE


def _on_signals(loop: asyncio.AbstractEventLoop, stop: Callable[[], None]) -> Callable[[], None]:
    signals = (signal.SIGINT, signal.SIGTERM)
    for signum in signals:
        loop.add_signal_handler(signum, stop)

    def restore() -> None:
        for signum in signals:
            loop.remove_signal_handler(signum)

    return restore


def _one_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0] if text.strip() else type(exc).__name__

