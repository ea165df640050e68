"""One exception type for mistakes a user can fix (bad config, bad path, bad input).

The CLI prints these as one line and exits non-zero; anything else is a bug and keeps its traceback.
"""


class UserError(ValueError):
    """A problem in what the user asked for, with a message that says how to fix it."""
