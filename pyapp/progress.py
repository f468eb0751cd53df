"""Showing a resync as it runs: a progress bar on a terminal, plain lines otherwise.

Ctrl-C does not kill the run mid-batch: it asks the loop to stop after the batch in flight has
committed, so a rerun continues where this one stopped.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from typing import Any

import psycopg
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from pyapp import admin

# Called after each committed batch; tests use it to press Ctrl-C at a precise point.
after_batch: Callable[[], None] = lambda: None  # noqa: E731


def count(n: int, singular: str, plural: str | None = None) -> str:
    """ "1 user", "2 users" (``plural`` for the irregular ones: "batches")."""
    return f"{n} {singular if n == 1 else plural or singular + 's'}"


def run_resync(conn: psycopg.Connection, batch_size: int, out: Console, err: Console, *,
               quiet: bool = False, pair: str | None = None) -> admin.ResyncReport:
    stop = {"requested": False}

    def on_sigint(signum: int, frame: Any) -> None:
        stop["requested"] = True
        err.print("[yellow]stopping after the current batch…[/yellow]")

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        if quiet or not out.is_terminal:
            def line(r: admin.ResyncReport) -> None:
                if not quiet:
                    out.print(f"batch {r.batches}: {r.synced + r.failed}/{count(r.total, 'pair')}, {r.failed} failed",
                              highlight=False)
                after_batch()
            return admin.resync_all(conn, batch_size, pair=pair, progress=line,
                                    should_stop=lambda: stop["requested"])
        with Progress(TextColumn("resync"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.fields[rate]} pairs/s"), TimeRemainingColumn(), console=out) as bar:
            task = bar.add_task("resync", total=None, rate="-")

            def update(r: admin.ResyncReport) -> None:
                speed = bar.tasks[task].speed
                rate = f"{speed:,.0f}" if speed else "-"
                bar.update(task, total=r.total, completed=r.synced + r.failed, rate=rate)
                after_batch()
            return admin.resync_all(conn, batch_size, pair=pair, progress=update,
                                    should_stop=lambda: stop["requested"])
    finally:
        signal.signal(signal.SIGINT, previous)
