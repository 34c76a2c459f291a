#!/usr/bin/env bash
# Pretrain on a SLURM GPU cluster: one process per GPU, started by srun; jax.distributed joins them
# from SLURM's environment. The job is requeued when the trainer stops after a preemption or at the
# time limit, and the requeued job resumes from the newest checkpoint.
#
#   NODES=4 GPUS_PER_NODE=8 CPUS_PER_TASK=12 PARTITION=gpu TIME=24:00:00 \
#   WORKDIR=/shared/runs/simclr_r50 DATA_DIR=/shared/tfds \
#     launch/gpu_slurm.sh configs/simclr.py --config.num_epochs=100
#
#   launch/gpu_slurm.sh --dry-run configs/simclr.py ...   # print the sbatch / srun command only
#
# From a login node (in the repository, with ssl_jax and jax[cuda] installed in the active Python
# environment of every node) it submits itself with sbatch; inside the job, or inside an salloc
# allocation, it starts one task per GPU with srun. Settings, as environment variables [default]:
#   WORKDIR        (required; or --workdir=DIR) the run's directory, on storage every node sees
#   DATA_DIR       TFDS data_dir, passed as --config.data_dir [none]
#   NODES          [1]
#   GPUS_PER_NODE  tasks per node, one per GPU [inside an allocation SLURM_GPUS_ON_NODE, else 8]
#   CPUS_PER_TASK  cores per task: its input pipeline decodes and augments on them [SLURM's default]
#   TIME           the job's time limit [24:00:00]
#   PARTITION, ACCOUNT   [SLURM's defaults]
#   JOB_NAME       [ssl_jax]
#   SIGNAL_SECONDS SIGTERM this long before the time limit, so the trainer saves and stops [180]
#   MAX_RESTARTS   requeues after a preemption or the time limit before giving up [20]
#   PYTHON         [python]
#
# Every task sees all GPUs of its node (SLURM's default with --gpus-per-node); jax picks GPU number
# SLURM_LOCALID (jax/_src/clusters/cluster.py). Where a cluster binds each task to one GPU
# instead, export JAX_LOCAL_DEVICE_IDS=0. The trainer exits with status 75
# (ssl_jax.errors.PREEMPTED_EXIT_CODE) after SIGTERM once its checkpoint is saved; this script
# then requeues the job (scontrol requeue). Any other failure ends the job.
#
# One machine with several GPUs needs no launcher: one process drives every GPU it sees.
#   python -m ssl_jax.main --config=configs/simclr.py --workdir=runs/simclr_r50 [--config.key=value ...]
set -euo pipefail

PREEMPTED=75 # ssl_jax.errors.PREEMPTED_EXIT_CODE: checkpoint saved after SIGTERM; run again

WORKDIR=${WORKDIR:-}
DATA_DIR=${DATA_DIR:-}
NODES=${NODES:-1}
GPUS_PER_NODE=${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-8}}
CPUS_PER_TASK=${CPUS_PER_TASK:-}
TIME=${TIME:-24:00:00}
PARTITION=${PARTITION:-}
ACCOUNT=${ACCOUNT:-}
JOB_NAME=${JOB_NAME:-ssl_jax}
SIGNAL_SECONDS=${SIGNAL_SECONDS:-180}
MAX_RESTARTS=${MAX_RESTARTS:-20}
PYTHON=${PYTHON:-python}

fail() {
  echo "error: $*" >&2
  exit 2
}

# ------------------------------------------------------------------ command line
DRY_RUN=0
if [[ ${1:-} == --dry-run ]]; then
  DRY_RUN=1
  shift
fi
[[ $# -ge 1 && $1 != -* ]] || fail "usage: launch/gpu_slurm.sh [--dry-run] CONFIG [--config.key=value ...]"
args=("$@") # what the submitted job runs this script with
CONFIG=$1
shift
overrides=()
for arg in "$@"; do
  if [[ $arg == --workdir=* ]]; then WORKDIR=${arg#--workdir=}; else overrides+=("$arg"); fi
done
[[ -n $WORKDIR ]] || fail "set WORKDIR (or --workdir=DIR): the run's directory, on storage every node sees"
# A relative path would be resolved on each node; only an absolute one is surely the same place.
[[ $WORKDIR == /* || $WORKDIR == *://* ]] || fail "WORKDIR=$WORKDIR must be an absolute path on storage every node sees"
[[ $MAX_RESTARTS =~ ^[0-9]+$ ]] || fail "MAX_RESTARTS=$MAX_RESTARTS is not a number"

# ------------------------------------------------------------------ helpers
quote() { # the arguments as shell words on one line: 'a b' for "a b", 'it'\''s' for "it's"
  local words=() word q="'\\''" # q: end the quote, a quoted ', start a new quote
  for word in "$@"; do
    if [[ $word =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
      words+=("$word")
    else
      words+=("'${word//\'/$q}'")
    fi
  done
  printf "%s\n" "${words[*]}"
}

run() { # run a command; with --dry-run print it instead
  if ((DRY_RUN)); then quote "$@"; else "$@"; fi
}

say() { echo "==> $*" >&2; }

cpus=()
[[ -n $CPUS_PER_TASK ]] && cpus=("--cpus-per-task=$CPUS_PER_TASK") # srun does not inherit it

# One task per GPU on every node of the allocation, each the same command.
train=(srun "--ntasks-per-node=$GPUS_PER_NODE" ${cpus[@]+"${cpus[@]}"}
  "$PYTHON" -m ssl_jax.main "--config=$CONFIG" "--workdir=$WORKDIR")
[[ -n $DATA_DIR ]] && train+=("--config.data_dir=$DATA_DIR")
train+=(${overrides[@]+"${overrides[@]}"})

# ------------------------------------------------------------------ outside a job: submit this script
if [[ -z ${SLURM_JOB_ID:-} ]]; then
  submit=(sbatch "--job-name=$JOB_NAME" "--nodes=$NODES" "--ntasks-per-node=$GPUS_PER_NODE"
    "--gpus-per-node=$GPUS_PER_NODE" ${cpus[@]+"${cpus[@]}"} "--time=$TIME")
  [[ -n $PARTITION ]] && submit+=("--partition=$PARTITION")
  [[ -n $ACCOUNT ]] && submit+=("--account=$ACCOUNT")
  # --requeue: may be put back in the queue; --signal: SIGTERM to the tasks before the time limit;
  # --open-mode=append: the log of every requeued run goes on in one file (slurm-JOBID.out).
  submit+=(--requeue "--signal=TERM@$SIGNAL_SECONDS" --open-mode=append
    "--chdir=$(cd "$(dirname "$0")/.." && pwd)" --export=ALL "$0" "${args[@]}")
  run "${submit[@]}"
  ((DRY_RUN)) && echo "# the job then runs:" && quote "${train[@]}"
  exit 0
fi

# ------------------------------------------------------------------ inside a job: train
say "job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}): $(quote "${train[@]}")"
status=0
run "${train[@]}" || status=$?
if ((status == PREEMPTED)); then
  if ((${SLURM_RESTART_COUNT:-0} < MAX_RESTARTS)); then
    say "preempted, the checkpoint is saved (exit $PREEMPTED): requeueing job $SLURM_JOB_ID"
    run scontrol requeue "$SLURM_JOB_ID"
  else
    say "preempted, and MAX_RESTARTS=$MAX_RESTARTS requeues are spent: giving up"
  fi
elif ((status != 0)); then
  say "training failed with exit status $status: not requeueing"
fi
exit "$status"
