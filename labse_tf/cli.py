"""What every command line shares: its progress output, and how an expected error ends it."""

import contextlib
import sys

__all__ = ["exit_on", "log"]


def log(message: str) -> None:
    """A progress line on stdout, flushed at once so a pipe or log file sees it as it comes."""
    print(message, flush=True)


@contextlib.contextmanager
def exit_on(*errors: type[BaseException]):
    """Ends the command with `error: <message>` on stderr and exit status 1 on any of
    `errors` (a user's mistake: a bad value, a missing file), which a traceback would bury."""
    try:
        yield
    except errors as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
