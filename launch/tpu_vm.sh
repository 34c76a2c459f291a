#!/usr/bin/env bash
# Run ssl_jax on a Cloud TPU VM slice (single- or multi-host): the same command on every worker.
#
#   TPU=my-v4-32 ZONE=us-central2-b WORKDIR=/mnt/shared/simclr_r50 \
#     DATA_DIR=/mnt/shared/tfds bash launch/tpu_vm.sh configs/simclr.py [--config.key=value ...]
#
# jax.distributed.initialize() finds the other hosts on a TPU VM by itself; each host reads only its
# share of every global batch. The workdir must be on a filesystem every host sees (e.g. a Filestore
# or NFS mount; gs:// workdirs are not supported yet: the trainer writes with local file APIs).
# Re-running the same command resumes from the newest checkpoint, so a preempted slice is
# restarted with it too.
set -euo pipefail
: "${TPU:?set TPU to the TPU VM name}" "${ZONE:?set ZONE}"
: "${WORKDIR:?set WORKDIR (a shared filesystem path)}"
CONFIG=${1:?usage: launch/tpu_vm.sh CONFIG [overrides...]}
shift
REPO_URL=${REPO_URL:-}  # where workers clone ssl_jax from; default: copy this checkout with scp

if [[ -z "$REPO_URL" ]]; then
  tar czf /tmp/ssl_jax_src.tgz --exclude=.git --exclude=.venv .
  gcloud compute tpus tpu-vm scp /tmp/ssl_jax_src.tgz "$TPU":/tmp/ --zone "$ZONE" --worker=all
  FETCH="rm -rf ~/ssl_jax && mkdir -p ~/ssl_jax && tar xzf /tmp/ssl_jax_src.tgz -C ~/ssl_jax"
else
  FETCH="rm -rf ~/ssl_jax && git clone $REPO_URL ~/ssl_jax"
fi

gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all --command "
  set -e; $FETCH; cd ~/ssl_jax
  python3 -m venv ~/venv && . ~/venv/bin/activate
  pip install -q -e . 'jax[tpu]'
  SSL_JAX_DISTRIBUTED=1 python -m ssl_jax.main --config=$CONFIG --workdir=$WORKDIR ${DATA_DIR:+--config.data_dir=$DATA_DIR} $*
"
