class UserError(Exception):
    """Bad input from the user: reported as one line on stderr with a non-zero exit."""


class Stopped(SystemExit):
    """A run stopped by a signal after writing its checkpoint: it exits 128 + the signal's number,
    and `message` says where it stopped and how to continue (a sweep job's status records it)."""

    def __init__(self, signum: int, message: str):
        super().__init__(128 + signum)
        self.message = message
