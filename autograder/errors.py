"""The error for bad input to a grading run as a whole, raised from collecting to grading."""


class GradingError(RuntimeError):
    """Bad input for the whole run (not one submission); the message says how to fix it."""
