"""Progress bars for long work, on stderr so reports and JSON on stdout stay clean."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
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


def track(items: Iterable[T], description: str, total: int | None = None, enabled: bool = True) -> Iterator[T]:
    """Yield ``items`` while drawing a progress bar (a no-op wrapper when ``enabled`` is false)."""
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
