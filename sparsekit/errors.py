class SparsekitError(ValueError):
    """The one exception sparsekit raises for bad input: it names the argument and the problem."""


class SparsekitWarning(UserWarning):
    """What sparsekit warns about: results it could not check, candidates it dropped."""
