"""The one error type for problems with the user's dataset, shared by loading, decoding and serving items."""


class DataError(ValueError):
    """A problem with the user's dataset; the message names the cause and the fix on one line."""


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type name when empty), to quote inside a one-line `DataError`."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
