"""The data layer of training: read and validate JSONL files, split them, and tokenise the splits.

`formats` reads the three accepted formats and reports every bad line at once; `splits` makes the
deterministic, duplicate-free train/validation/test splits and their hash; `tokenize` turns them into
model inputs (SFT with the loss on answers only, UFT packed) and batches. Only the standard library
and pydantic are imported here; torch and transformers load inside the functions that use them.
"""

from tuneloop.train.data.formats import DataError, Example, Format, Message, read_examples, reference_answer
from tuneloop.train.data.splits import HASH_SCHEME, Splits, data_hash, make_splits
from tuneloop.train.data.tokenize import IGNORE_INDEX, Encoded, collate, encode_splits

__all__ = [
    "HASH_SCHEME",
    "IGNORE_INDEX",
    "DataError",
    "Encoded",
    "Example",
    "Format",
    "Message",
    "Splits",
    "collate",
    "data_hash",
    "encode_splits",
    "make_splits",
    "read_examples",
    "reference_answer",
]
