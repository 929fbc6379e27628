class UserError(Exception):
    """Bad input from the user: reported as one line on stderr with a non-zero exit."""
