"""The one exception the local stack raises: a line saying what is wrong and what to do."""


class StackError(Exception):
    """The local stack could not start or stop; the message says what to do."""
