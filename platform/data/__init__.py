"""The data contract every stage shares: read and validate the record formats, and split them.

`sources` reads rows from JSONL, CSV, Parquet and `datasets` folders; `formats` checks them against
the three accepted formats and reports every bad row at once; `splits` makes the
deterministic, duplicate-free train/validation/test splits and their hash. Training tokenises them
(train/tokenize.py); the loop reads them back to rebuild, evaluate and gate (monitoring/). Only the
standard library, pydantic and (for Parquet and Arrow, lazily) pyarrow are imported here.
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
