"""Command line: python -m ssl_jax.main --config=configs/simclr.py[:preset] --workdir=DIR.

Intentionally short: flags, the environment, and turning user errors into one line.
Running the same command again with the same workdir resumes the run.
"""

import os
import sys

# tf.data only feeds the input pipeline: keep its start-up chatter out of the console.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs, results and the export.")
flags.mark_flags_as_required(["workdir"])
config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/simclr.py:demo", lock_config=True
)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    import tensorflow as tf  # imported late so the TF log level above applies

    tf.config.set_visible_devices([], "GPU")  # keep tf.data off the accelerators JAX uses

    from ssl_jax import config_check, parallel, train
    from ssl_jax.errors import NonFiniteLossError, UserError

    logging.set_verbosity(logging.WARNING)
    parallel.initialize_distributed()
    try:
        config = config_check.validate(FLAGS.config)
        train.train_and_evaluate(config, FLAGS.workdir)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(3)


def _parse_flags(argv):
    """absl's parser, but a bad flag or config override is one line and exit status 2."""
    try:
        return FLAGS(argv)
    except flags.Error as e:
        message = str(e).replace("\n", " ")
        print(f"error: {message}", file=sys.stderr, flush=True)
        sys.exit(2)


def run():
    if not any(a.startswith("--config") for a in sys.argv[1:]):
        print("error: --config is required, e.g. --config=configs/simclr.py:demo", file=sys.stderr)
        sys.exit(2)
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
