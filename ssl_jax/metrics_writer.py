"""Where metrics go: metrics.jsonl, TensorBoard events, and the console progress line."""

import json
import os
import socket
import time

from tensorboard.compat.proto import event_pb2
from tensorboard.plugins.scalar import summary_v2 as scalar_summary
from tensorboard.summary.writer.record_writer import RecordWriter

from ssl_jax import fileio


class MetricsWriter:
    """Appends one JSON object per logged step to workdir/metrics.jsonl and mirrors the scalars
    to TensorBoard. A resumed run appends, so the steps it redoes appear twice; the later line
    for a step is the one that counts.

    Both files go through `fileio`, so a workdir on gs:// works (and is tested through an
    emulator) the same way as a local one."""

    def __init__(self, workdir: str, *, enabled: bool = True):
        self.enabled = enabled
        if enabled:
            self._jsonl = fileio.AppendLog(fileio.join(workdir, "metrics.jsonl"))
            self._tb = EventFile(fileio.join(workdir, "tensorboard"))

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        scalars = {k: v for k, v in record.items() if k != "step" and isinstance(v, (int, float))}
        self._tb.write_scalars(record["step"], scalars)

    def write_event(self, record: dict) -> None:
        if self.enabled:
            self._jsonl.write(json.dumps(record) + "\n")
            self._jsonl.flush()

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tb.close()


class EventFile:
    """TensorBoard scalars written as tf.summary.scalar writes them (the same Summary protos in
    the same TFRecord framing), without TensorFlow's filesystem layer: through `fileio`.

    Each process start opens a new events file, as tf.summary does; TensorBoard reads every
    file of the folder. Off local disk a flush rewrites the whole object, so a new file is
    started past `max_bytes` to keep that cost bounded.
    """

    def __init__(self, folder: str, *, max_bytes: int = 1 << 20):
        self.folder, self.max_bytes, self._count = folder, max_bytes, 0
        fileio.makedirs(folder)
        self._open()

    def _open(self) -> None:
        name = (f"events.out.tfevents.{time.time():.6f}.{socket.gethostname()}.{os.getpid()}."
                f"{self._count}.v2")  # fmt: skip
        self._count += 1
        self._log = fileio.AppendLog(fileio.join(self.folder, name), binary=True)
        self._records = RecordWriter(self._log)
        self._write(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

    def _write(self, event) -> None:
        self._records.write(event.SerializeToString())

    def write_scalars(self, step: int, scalars: dict) -> None:
        for tag, value in scalars.items():
            summary = scalar_summary.scalar_pb(tag, float(value))
            self._write(event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary))
        self._log.flush()
        if not fileio.is_local(self.folder) and self._log.size > self.max_bytes:
            self._log.close()
            self._open()

    def close(self) -> None:
        self._log.close()


def progress_line(
    record: dict, total_steps: int, steps_per_epoch: int, eta_seconds: float | None
) -> str:
    """step 120/3000 | epoch 3.2 | loss 5.1234 | lr 0.3 | 812 img/s | ETA 4m12s (+ evals).

    Speed and ETA leave out the first step of a process (it compiles); until a second step has
    run they read "compiling".
    """
    speed = record.get("images_per_sec")
    parts = [
        f"step {record['step']}/{total_steps}",
        f"epoch {record['step'] / steps_per_epoch:.2f}",
        f"loss {record['loss']:.4f}",
        f"lr {record['lr']:.4g}",
        f"{speed:.0f} img/s" if speed else "compiling",
        f"ETA {_duration(eta_seconds)}" if eta_seconds is not None else "ETA --",
    ]
    for key in ("probe_top1", "knn_top1", "linear_top1"):
        if key in record:
            parts.append(f"{key} {record[key]:.3f}")
    return " | ".join(parts)


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
