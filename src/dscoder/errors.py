"""The one exception type for bad input. The CLI prints its message (no traceback) and exits with status 2."""


class UserError(Exception):
    """Input a user can fix: a missing file, a corrupt checkpoint, an unknown field, a prompt too long...

    The message must say what is wrong and, where it helps, what to do instead."""
