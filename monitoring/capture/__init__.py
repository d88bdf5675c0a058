"""Capture of sampled gateway traffic and user feedback, in a database apart from the registry.

The gateway builds a `RequestRecord` per request and hands it to `CaptureWriter.submit` (never
blocks, never raises); `FeedbackIn` validates the body of `POST /v1/feedback` and
`CaptureStore.add_feedback` stores it; the drift loop reads `CaptureStore.recent` and
`CaptureStore.with_feedback`.
"""

from tuneloop.monitoring.capture.redact import load_redactor, mask_pii
from tuneloop.monitoring.capture.schema import FeedbackIn, RequestRecord
from tuneloop.monitoring.capture.store import CaptureStore, UnknownRequestError
from tuneloop.monitoring.capture.tables import CapturedRequest, CaptureStatus, Feedback
from tuneloop.monitoring.capture.writer import CaptureWriter, WriterStats

__all__ = [
    "CaptureStatus",
    "CaptureStore",
    "CaptureWriter",
    "CapturedRequest",
    "Feedback",
    "FeedbackIn",
    "RequestRecord",
    "UnknownRequestError",
    "WriterStats",
    "load_redactor",
    "mask_pii",
]
