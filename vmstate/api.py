"""``vmstate.api``, the documented name of the batch API, which lives in :mod:`vmstate.batch.api`."""
from vmstate.batch.api import Result, load, parse, population, run

__all__ = ["Result", "load", "parse", "population", "run"]
