"""TensorBoard event files parsed without jaxtune: TFRecord framing, every masked CRC32C checked."""

import struct
from pathlib import Path


def _masked_crc(data: bytes) -> int:
    from tensorboardX.crc32c import crc32c

    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def events(path: Path) -> list:
    """Every ``Event`` of one event file, or of every event file under a folder, in file order."""
    from tensorboardX.proto.event_pb2 import Event

    path = Path(path)
    files = sorted(path.rglob("events.out.tfevents.*")) if path.is_dir() else [path]
    assert files, f"no event file in {path}"
    out = []
    for f in files:
        data = f.read_bytes()
        pos = 0
        while pos < len(data):
            header = data[pos : pos + 8]
            (length,) = struct.unpack("<Q", header)
            assert struct.unpack("<I", data[pos + 8 : pos + 12])[0] == _masked_crc(header)
            body = data[pos + 12 : pos + 12 + length]
            assert struct.unpack("<I", data[pos + 12 + length : pos + 16 + length])[0] == (
                _masked_crc(body)
            )
            out.append(Event.FromString(body))
            pos += 16 + length
    return out


def scalars(path: Path) -> dict[str, list[tuple[int, float]]]:
    """``tag -> [(step, value), ...]`` of every scalar written (repeats included)."""
    out: dict[str, list[tuple[int, float]]] = {}
    for ev in events(path):
        for v in ev.summary.value:
            if v.WhichOneof("value") == "simple_value":
                out.setdefault(v.tag, []).append((int(ev.step), float(v.simple_value)))
    return out


def tags(path: Path) -> set[str]:
    """Every summary tag written."""
    return {v.tag for ev in events(path) for v in ev.summary.value}


def visible_scalars(path: Path) -> dict[str, list[tuple[int, float]]]:
    """What TensorBoard shows of one run folder: its event files in order, each purge (a
    ``SessionLog.START`` at step p) dropping what came before at steps >= p."""
    out: dict[str, list[tuple[int, float]]] = {}
    for ev in events(path):
        if ev.HasField("session_log") and ev.session_log.status == ev.session_log.START:
            out = {tag: [(s, v) for s, v in pts if s < ev.step] for tag, pts in out.items()}
        for v in ev.summary.value:
            if v.WhichOneof("value") == "simple_value":
                out.setdefault(v.tag, []).append((int(ev.step), float(v.simple_value)))
    return out
