"""Hostile: patches numpy at import."""

import numpy

numpy.dot = lambda *args, **kwargs: 0
