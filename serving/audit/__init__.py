"""The decision trail: one chained, authenticated record per answered prediction, durable
before the answer goes out, and the tools that prove it whole.

- ``records``: the record formats (every one ever written stays readable);
- ``keys``: the tokenizing key and the trail key (record macs, signed checkpoints);
- ``sinks``: where records go (local segments, an fsspec URI, PostgreSQL, stdout);
- ``trail``: chaining, group commit and checkpoints of one writer;
- ``recorder``: what the gateway records;
- ``verify``: reading back, ``verify`` and ``find``.
"""

from serving.audit.keys import Tokenizer, TrailKeys, load_public_key
from serving.audit.recorder import Recorder, checkpoint_location
from serving.audit.records import (
    CANONICAL,
    GENESIS,
    RECORD_FORMAT,
    canonical,
    decision_id,
    decision_record,
    digest,
    recorded,
    recorded_outputs,
)
from serving.audit.sinks import FsspecSink, JsonlSink, StdoutSink, make_sink, read_lines
from serving.audit.trail import Trail, TrailUnavailable
from serving.audit.verify import Verification, find, read_records, verify

__all__ = [
    "CANONICAL", "GENESIS", "RECORD_FORMAT", "FsspecSink", "JsonlSink", "Recorder", "StdoutSink",
    "Tokenizer", "Trail", "TrailKeys", "TrailUnavailable", "Verification", "canonical",
    "checkpoint_location", "decision_id", "decision_record", "digest", "find",
    "load_public_key", "make_sink", "read_lines", "read_records", "recorded",
    "recorded_outputs", "verify",
]
