"""Command line: python -m ssl_jax.main --config=configs/simclr.py[:preset] --workdir=DIR.

A pretraining config (configs/<method>.py) trains; an evaluation config (`task = "evaluate"`:
configs/linear_eval.py, configs/fewshot.py) evaluates the frozen encoder at --config.pretrained.

Intentionally short: flags, the environment, and turning user errors into one line.
Running the same command again with the same workdir resumes the run.
"""

import os
import re
import sys

# tf.data only feeds the input pipeline: keep its start-up chatter out of the console.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from ssl_jax.errors import UserError, exit_on_error  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs, results and the export.")
flags.mark_flags_as_required(["workdir"])
config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/simclr.py:demo", lock_config=True
)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    from ssl_jax import config_check, methods

    logging.set_verbosity(logging.WARNING)
    with exit_on_error():
        # Config and method settings first: a mistake is reported in seconds, before TensorFlow
        # (the input pipeline) is even imported.
        config = _load_config()
        evaluation = config is not None and config.get("task", "pretrain") == "evaluate"
        if evaluation:
            config_check.validate_evaluation(config)
        else:
            config = config_check.validate(config)
            methods.get_method(config)

    import tensorflow as tf  # imported late so the TF log level above applies

    tf.config.set_visible_devices([], "GPU")  # keep tf.data off the accelerators JAX uses

    from ssl_jax import parallel, train
    from ssl_jax.evaluate import protocols

    parallel.initialize_distributed()
    with exit_on_error():
        if evaluation:
            protocols.run(config, FLAGS.workdir)
        else:
            train.train_and_evaluate(config, FLAGS.workdir)


def _parse_flags(argv):
    """absl's parser, but a bad flag or config override is one line and exit status 2."""
    try:
        return FLAGS(argv)
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
        print(f"error: {_flag_error_message(e)}", file=sys.stderr, flush=True)
        sys.exit(2)


def _flag_error_message(e: Exception) -> str:
    text = str(e)
    if isinstance(e, (AttributeError, KeyError)):
        # config_flags reports an unknown --config.KEY with the key quoted, and a hint.
        key = re.search(r"'([A-Za-z0-9_.]+)", text)
        hint = re.search(r"Did you mean \"([^\"]+)\"", text)
        return f"unknown config key {key.group(1) if key else text!r} in the --config overrides" + (
            f' (did you mean "{hint.group(1)}"?)' if hint else ""
        )
    if "Traceback" in text:  # an exception inside the config file: its last line says what
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        return f"{text.split(':', 1)[0]}: {lines[-1]}"
    return " ".join(text.split())


def _load_config():
    """The parsed config; config_flags defers a missing or broken config file to first use."""
    config = FLAGS.config
    try:
        config.get("method")
        return config
    except OSError as e:
        detail = [line.strip() for line in str(e).splitlines() if line.strip().startswith("[")]
        raise UserError(
            f"cannot load the config file {FLAGS['config'].config_filename!r}"
            + (f": {detail[-1]}" if detail else "")
        ) from None


def run():
    if not any(a.startswith("--config") for a in sys.argv[1:]):
        print("error: --config is required, e.g. --config=configs/simclr.py:demo", file=sys.stderr)
        sys.exit(2)
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
