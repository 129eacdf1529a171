class SparsekitError(ValueError):
    """The one exception sparsekit raises for bad input: it names the argument and the problem."""
