"""`python -m ssl_jax.report DIR [DIR ...]`: one Markdown table of finished workdirs.

Reads each workdir's results.json (and config.json and metrics.jsonl beside it) and prints a row
per (encoder, protocol): the trained encoder and, when the run evaluated one, the random-init
baseline. A protocol is any numeric `<name>_top1` key of results.json: `knn` and `linear` of a
pretraining run; `knn`, `frozen_features`, `augmented` and `fewshot_<n>shot` (the mean over
draws) of an evaluation run (configs/linear_eval.py, configs/fewshot.py); `finetune` and
`distill` of a classifier's run (configs/finetune.py, configs/distill.py). The last two kinds
also name the encoder they started from (method, backbone, pretraining epochs). `<name>_top5`
fills the top-5 column when present; `<name>_labels` or `label_fraction` the labels column
(a distilled student: the labels its teacher was fine-tuned on); `<name>_top1_std` (few-shot:
over the draws) follows the top-1 as "± std".

Only the standard library: the report runs without jax or TensorFlow, in well under a second.
"""

import argparse
import json
import os
import re
import sys

from ssl_jax import fileio
from ssl_jax.errors import UserError, exit_on_error

_TOP1 = re.compile(r"^(random_init_)?(\w+?)_top1$")
COLUMNS = ("workdir", "method", "backbone", "dataset", "epochs", "encoder", "protocol",
           "labels", "top-1", "top-5", "time")  # fmt: skip


def _read_json(path: str) -> dict:
    try:
        value = json.loads(fileio.read_text(path))
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e}); rerun the run to rewrite it") from None
    if not isinstance(value, dict):
        raise UserError(f"{path} holds {type(value).__name__}, not a JSON object")
    return value


def _last_epoch(workdir: str) -> float | None:
    """The epoch of the last logged training step (metrics.jsonl), or None."""
    path = fileio.join(workdir, "metrics.jsonl")
    epoch = None
    if fileio.exists(path):
        for line in fileio.read_text(path).splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by a kill: the rest still counts
                continue
            if "epoch" in record:
                epoch = record["epoch"]
    return epoch


def _duration(seconds) -> str:
    if seconds is None:
        return "n/a"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _percent(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def rows_of(workdir: str) -> list[dict]:
    """The table rows of one finished workdir (see the module docstring)."""
    if not fileio.is_dir(workdir):
        raise UserError(f"{workdir} is not a directory; pass pretraining or evaluation workdirs")
    results_path = fileio.join(workdir, "results.json")
    if not fileio.exists(results_path):
        raise UserError(
            f"{workdir} has no results.json: the run has not finished (rerun its command with "
            "the same --workdir to resume it) or this is not a workdir"
        )
    results = _read_json(results_path)
    config_path = fileio.join(workdir, "config.json")
    config = _read_json(config_path) if fileio.exists(config_path) else {}
    model = config.get("model") or {}
    backbone = model.get("name", "n/a")
    if model.get("width", 1.0) != 1.0:
        backbone += f" x{model['width']:g}"
    # Evaluation runs and classifiers trained on an encoder (fine-tuning, distillation) describe
    # the encoder they started from; a pretraining run describes itself.
    evaluation = results.get("task") == "evaluate" or "pretrain_epochs" in results
    fraction = results.get("label_fraction", 1.0)
    labels = f"{100 * fraction:g}%" if isinstance(fraction, (int, float)) else str(fraction)
    teacher_fraction = results.get("teacher_label_fraction")
    if isinstance(teacher_fraction, (int, float)):  # the student learns from the teacher's labels
        labels = f"{100 * teacher_fraction:g}% (teacher's)"
    common = {
        "workdir": os.path.basename(os.path.normpath(workdir)),  # gs://b/run too: "run"
        "method": results.get("method") or config.get("method", "n/a"),
        "backbone": results.get("backbone") or backbone,
        "dataset": config.get("dataset", "n/a"),
        "epochs": results.get("pretrain_epochs") if evaluation else _last_epoch(workdir),
        "labels": labels,
        "train_seconds": results.get("train_seconds", results.get("eval_seconds")),
    }
    rows = []
    for key in sorted(results, key=lambda k: (k.startswith("random_init_"), k)):
        match = _TOP1.match(key)
        if not match or not isinstance(results[key], (int, float)):
            continue
        if match.group(2) == "teacher":  # a distillation's teacher: its own workdir's row
            continue
        prefix, protocol = match.group(1) or "", match.group(2)
        shown = protocol
        if results.get("finetune_from", "encoder") != "encoder":  # SimCLR v2's projector layer
            shown += f" from {results['finetune_from']}"
        rows.append(
            {
                **common,
                "encoder": "random init" if prefix else results.get("encoder", "trained"),
                "protocol": shown,
                "top1": results[key],
                "top1_std": results.get(f"{prefix}{protocol}_top1_std"),
                "top5": results.get(f"{prefix}{protocol}_top5"),
                "labels": results.get(f"{protocol}_labels", common["labels"]),
            }
        )
    if not rows:
        reason = results.get("skipped", "no <protocol>_top1 entries")
        rows.append({**common, "encoder": "trained", "protocol": f"none ({reason})",
                     "top1": None, "top5": None})  # fmt: skip
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        epochs = "n/a" if r["epochs"] is None else f"{r['epochs']:.2f}"
        top1 = _percent(r["top1"])
        if r.get("top1_std") is not None:
            top1 += f" ± {100 * r['top1_std']:.1f}"
        cells = (r["workdir"], r["method"], r["backbone"], r["dataset"], epochs, r["encoder"],
                 r["protocol"], r["labels"], top1,
                 _percent(r["top5"]), _duration(r["train_seconds"]))  # fmt: skip
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m ssl_jax.report", description=__doc__.splitlines()[0]
    )
    parser.add_argument("workdirs", nargs="+", metavar="DIR", help="finished workdirs")
    parser.add_argument("--output", help="also write the table to this Markdown file")
    args = parser.parse_args(argv)
    with exit_on_error():
        rows = [row for workdir in args.workdirs for row in rows_of(workdir)]
        table = markdown(rows)
        if args.output:
            try:
                fileio.write_text(args.output, table)
            except OSError as e:
                raise UserError(f"cannot write {args.output}: {e.strerror}") from None
    sys.stdout.write(table)


if __name__ == "__main__":
    main()
