"""Where metrics go: metrics.jsonl, TensorBoard events, and the console progress line."""

import json
import os

import tensorflow as tf


class MetricsWriter:
    """Appends one JSON object per logged step to workdir/metrics.jsonl and mirrors the scalars
    to TensorBoard. A resumed run appends, so the steps it redoes appear twice; the later line
    for a step is the one that counts."""

    def __init__(self, workdir: str, *, enabled: bool = True):
        self.enabled = enabled
        if enabled:
            self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
            self._tb = tf.summary.create_file_writer(os.path.join(workdir, "tensorboard"))

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        self._jsonl.write(json.dumps(record) + "\n")
        self._jsonl.flush()
        with self._tb.as_default(step=record["step"]):
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    tf.summary.scalar(key, value)
        self._tb.flush()

    def write_event(self, record: dict) -> None:
        if self.enabled:
            self._jsonl.write(json.dumps(record) + "\n")
            self._jsonl.flush()

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tb.close()


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
