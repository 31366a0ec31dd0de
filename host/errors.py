"""The one exception type every stage raises for bad input.

Command-line entry points catch it and print its message as a single line, so a user sees
"error: <file>: <what is wrong>" instead of a traceback.
"""


class BnnError(Exception):
    """Bad input or a broken artifact; the message names the file and the problem."""


class ImageError(BnnError):
    """An image that cannot be decoded (corrupt, truncated, unsupported)."""
