"""Errors crashcart raises on purpose.

Library code raises these; only the CLI prints them and turns them into exit codes, which
follow `docker exec`: 125 for crashcart's own failure, 126 when the command cannot be
executed, 127 when it is not found.
"""

from __future__ import annotations

EXIT_CRASHCART = 125
EXIT_CANNOT_EXECUTE = 126
EXIT_NOT_FOUND = 127


class CrashcartError(Exception):
    """A failure crashcart understands: printed as one line (plus an optional hint)."""

    exit_code = EXIT_CRASHCART

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(CrashcartError):
    """The command line is wrong."""


class TargetError(CrashcartError):
    """The target cannot be found, is ambiguous, or is gone."""


class AmbiguousTarget(TargetError):
    pass


class TargetGone(TargetError):
    """The target exited before or while crashcart attached to it."""


class RuntimeAnswerError(CrashcartError):
    """A container runtime answered something crashcart cannot use."""


class ImageError(CrashcartError):
    """The toolbox image is missing, corrupt, or cannot be mounted here."""


class KernelError(CrashcartError):
    """The kernel lacks something crashcart needs, or refused an operation."""


class SideloadError(CrashcartError):
    """Mounting or removing the toolbox inside a container failed."""


class CommandNotFound(CrashcartError):
    exit_code = EXIT_NOT_FOUND


class CannotExecute(CrashcartError):
    exit_code = EXIT_CANNOT_EXECUTE
