"""Reading TensorBoard event files back without TensorFlow: what a resumed logger continues from.

An event file is a sequence of TFRecords (a uint64 length, its masked CRC32C, the ``Event``
proto, its masked CRC32C); tensorboardX writes them and this module reads them.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

__all__ = ["last_logged_step", "read_events"]


def read_events(path: str | Path) -> list[Any]:
    """Every ``Event`` proto of one event file or of all event files under a folder."""
    from tensorboardX.proto.event_pb2 import Event

    p = Path(path)
    files = sorted(p.rglob("events.out.tfevents.*")) if p.is_dir() else [p]
    events = []
    for f in files:
        data = f.read_bytes()
        pos = 0
        while pos + 12 <= len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            start = pos + 12  # uint64 length, uint32 masked crc of the length
            if start + length + 4 > len(data):
                break  # a record cut short by a crash
            events.append(Event.FromString(data[start : start + length]))
            pos = start + length + 4  # the record, then a uint32 masked crc of it
    return events


def last_logged_step(run_dir: Path) -> int:
    """The last ``train/*`` step still visible in a run's event files (-1 if none).

    Files are read in order and a purge (``SessionLog.START`` at step p) drops steps >= p.
    """
    if not run_dir.is_dir():
        return -1
    steps: set[int] = set()
    for f in sorted(run_dir.glob("events.out.tfevents.*")):
        for ev in read_events(f):
            if ev.HasField("session_log") and ev.session_log.status == ev.session_log.START:
                steps = {s for s in steps if s < ev.step}
            elif ev.HasField("summary") and any(
                v.tag.startswith("train/") for v in ev.summary.value
            ):
                steps.add(int(ev.step))
    return max(steps, default=-1)
