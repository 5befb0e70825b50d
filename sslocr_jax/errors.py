"""User errors: a bad flag, path, config value or workdir, as opposed to a bug.

The command-line programs (`main`, `predict`, `export`) print a user error as one line,
`error: <message>`, and exit with status 2, without a traceback (`--verbose` shows it).
Anything else keeps its traceback. The classes subclass the built-in exceptions the library
raised before (ValueError, FileNotFoundError), so callers that catch those still do.
"""

import contextlib
import sys
import traceback

from absl import flags

EXIT_USER_ERROR = 2

# One definition for the absl CLIs (main, predict); export (argparse) has its own --verbose.
VERBOSE = flags.DEFINE_bool(
  "verbose",
  False,
  "Show the traceback of a user error (bad path, flag, config value or "
  "workdir), which otherwise ends the program with a one-line message and exit status 2.",
)


class UserError(ValueError):
  """A problem the user fixes with a flag, a path or a config value; the message says how."""


class MissingPath(UserError, FileNotFoundError):
  """A file or folder named by the user does not exist (or holds nothing usable)."""


@contextlib.contextmanager
def exit_on_user_error(verbose: bool = False):
  """Turns a UserError into `error: <message>` on stderr and exit status 2 (with the traceback
  before it when `verbose`)."""
  try:
    yield
  except UserError as e:
    if verbose:
      traceback.print_exc()
    print(f"error: {e}", file=sys.stderr, flush=True)
    raise SystemExit(EXIT_USER_ERROR) from None
