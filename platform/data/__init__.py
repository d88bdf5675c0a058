"""The data contract every stage shares: read and validate the record formats, and split them.

`formats` reads the three accepted formats and reports every bad line at once; `splits` makes the
deterministic, duplicate-free train/validation/test splits and their hash. Training tokenises them
(train/tokenize.py); the loop reads them back to rebuild, evaluate and gate (monitoring/). Only the
standard library and pydantic are imported here.
"""

from tuneloop.platform.data.formats import (
    DataError,
    Example,
    Format,
    Message,
    read_examples,
    reference_answer,
)
from tuneloop.platform.data.splits import HASH_SCHEME, Splits, data_hash, make_splits

__all__ = [
    "HASH_SCHEME",
    "DataError",
    "Example",
    "Format",
    "Message",
    "Splits",
    "data_hash",
    "make_splits",
    "read_examples",
    "reference_answer",
]
