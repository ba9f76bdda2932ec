"""Progress bars for long work, on stderr so reports and JSON on stdout stay clean."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")
_console = Console(stderr=True)
# Who follows long work instead of a terminal bar (the app's job runner): called with (description, done, total).
_observer: ContextVar[Callable[[str, int, int | None], None] | None] = ContextVar("progress_observer", default=None)


@contextmanager
def observed(callback: Callable[[str, int, int | None], None]) -> Iterator[None]:
    """Within this block (in this thread), every ``track`` reports its items to ``callback`` instead of a bar."""
    token = _observer.set(callback)
    try:
        yield
    finally:
        _observer.reset(token)


def track(items: Iterable[T], description: str, total: int | None = None, enabled: bool = True) -> Iterator[T]:
    """Yield ``items`` while drawing a progress bar (a no-op wrapper when ``enabled`` is false; reported to the
    observer instead, when one is set by ``observed``)."""
    if (observer := _observer.get()) is not None:
        for done, item in enumerate(items, start=1):
            yield item
            observer(description, done, total)
        return
    if not enabled:
        yield from items
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=_console, transient=False) as progress:
        task = progress.add_task(description, total=total)
        for item in items:
            yield item
            progress.advance(task)


@contextmanager
def byte_bar(description: str, total: int, enabled: bool = True) -> Iterator[Callable[..., None]]:
    """A bar counted in bytes; yields ``advance(nbytes, description=None)`` (a no-op when not ``enabled``)."""
    if not enabled:
        yield lambda nbytes, description=None: None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeRemainingColumn())
    with Progress(*columns, console=_console, transient=False) as progress:
        task = progress.add_task(description, total=total)

        def advance(nbytes: int, description: str | None = None) -> None:
            progress.update(task, advance=nbytes, **({"description": description} if description else {}))

        yield advance


def say(message: str, enabled: bool = True) -> None:
    """A line about long work under way (what is used, what was found), on stderr beside the progress bars."""
    if enabled:
        _console.print(message, highlight=False, markup=False)
