"""Progress hooks of the long history operations (the CLI shows them as rich progress bars)."""
from __future__ import annotations


class Task:
    """A progress handle; the default does nothing."""

    def update(self, completed: int) -> None:
        """Report that `completed` units are done."""

    def finish(self) -> None:
        """Report that the task is complete."""


class Reporter:
    """Progress reporting hook of the restore/export logic (the CLI shows rich progress bars)."""

    def task(self, description: str, total: int | None) -> Task:
        """Start a task of `total` units (None: unknown)."""
        return Task()

    def note(self, text: str) -> None:
        """Show one line of information."""


__all__ = ["Reporter", "Task"]
