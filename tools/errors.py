"""The error a user can fix from the command line: printed as one line, no traceback."""


class UserError(Exception):
    """An error the user can fix: printed as one line, without a traceback."""
