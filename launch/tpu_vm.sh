#!/usr/bin/env bash
# Pretrain on a Cloud TPU VM or pod slice: create it, set up every worker, run the same command on
# all workers (logs stream here), re-run it after a preemption, delete the TPU.
#
#   TPU=simclr ACCELERATOR_TYPE=v4-32 ZONE=us-central2-b SPOT=1 \
#   WORKDIR=gs://my-bucket/runs/simclr_r50 DATA_DIR=gs://my-bucket/tfds \
#     launch/tpu_vm.sh configs/simclr.py --config.num_epochs=100
#
#   launch/tpu_vm.sh --dry-run configs/simclr.py ...   # print the commands, one a line; run nothing
#
# CONFIG is a path inside this repository (configs/NAME.py[:preset]); the overrides after it go to
# python -m ssl_jax.main unchanged. Settings, as environment variables [default]:
#   TPU               the TPU VM's name [ssl-jax]
#   ZONE              [us-central2-b, a v4 zone]
#   ACCELERATOR_TYPE  [v4-8]: v4-8 is one host of 4 chips, v4-32 four hosts, v5litepod-16, v5p-8...
#   RUNTIME_VERSION   [from ACCELERATOR_TYPE: tpu-ubuntu2204-base for v4, v2-alpha-tpuv5-lite for
#                     v5e, v2-alpha-tpuv5 for v5p, v2-alpha-tpuv6e for v6e, the JAX versions of
#                     https://cloud.google.com/tpu/docs/runtimes]
#   PROJECT           [gcloud's configured project]
#   SPOT=1 or PREEMPTIBLE=1   cheaper capacity that can be taken back at any time [0]
#   WORKDIR           (required; or --workdir=DIR) the run's directory, on storage that every worker
#                     sees (gs://BUCKET/..., or a Filestore / NFS mount); the same path is passed
#                     to every worker
#   DATA_DIR          TFDS data_dir, passed as --config.data_dir [none]
#   REPO_URL          a git URL the workers clone, REPO_REF a branch, tag or commit of it
#                     [none: this checkout is copied, uncommitted changes included]
#   PYTHON            Python of the workers' virtualenv [python3.11, installed with apt if missing]
#   MAX_RESTARTS      re-runs after preemptions or a lost TPU before giving up [20]
#   KEEP_TPU=1        keep the TPU at the end, also after a failure [0: delete it]
#
# Re-running resumes: the trainer restores the newest checkpoint of WORKDIR. It exits with status
# 75 (ssl_jax.errors.PREEMPTED_EXIT_CODE) after SIGTERM, once the checkpoint is saved; 75, a lost
# ssh connection (255) or a TPU that is no longer READY (a spot TPU is PREEMPTED and must be
# recreated) make this script run the same command again. Any other failure stops it.
set -euo pipefail

PREEMPTED=75 # ssl_jax.errors.PREEMPTED_EXIT_CODE: checkpoint saved after SIGTERM; run again

TPU=${TPU:-ssl-jax}
ZONE=${ZONE:-us-central2-b}
ACCELERATOR_TYPE=${ACCELERATOR_TYPE:-v4-8}
case $ACCELERATOR_TYPE in
  v5litepod-* | v5e-*) default_runtime="v2-alpha-tpuv5-lite" ;;
  v5p-*) default_runtime="v2-alpha-tpuv5" ;;
  v6e-*) default_runtime="v2-alpha-tpuv6e" ;;
  *) default_runtime="tpu-ubuntu2204-base" ;; # v4 and older
esac
RUNTIME_VERSION=${RUNTIME_VERSION:-$default_runtime}
PROJECT=${PROJECT:-}
SPOT=${SPOT:-0}
PREEMPTIBLE=${PREEMPTIBLE:-0}
WORKDIR=${WORKDIR:-}
DATA_DIR=${DATA_DIR:-}
REPO_URL=${REPO_URL:-}
REPO_REF=${REPO_REF:-}
PYTHON=${PYTHON:-python3.11}
MAX_RESTARTS=${MAX_RESTARTS:-20}
KEEP_TPU=${KEEP_TPU:-0}

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
[[ $# -ge 1 && $1 != -* ]] || fail "usage: launch/tpu_vm.sh [--dry-run] CONFIG [--config.key=value ...]"
CONFIG=$1
shift
overrides=()
for arg in "$@"; do
  if [[ $arg == --workdir=* ]]; then WORKDIR=${arg#--workdir=}; else overrides+=("$arg"); fi
done
[[ -n $WORKDIR ]] || fail "set WORKDIR (or --workdir=DIR): the run's directory, on storage every worker sees"
# A relative path would name a different directory on each worker's own disk.
[[ $WORKDIR == /* || $WORKDIR == *://* ]] || fail "WORKDIR=$WORKDIR must be an absolute path on storage every worker sees"
[[ $SPOT == 1 && $PREEMPTIBLE == 1 ]] && fail "set SPOT=1 or PREEMPTIBLE=1, not both"
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

tpu=(gcloud compute tpus tpu-vm)
where=("--zone=$ZONE")
[[ -n $PROJECT ]] && where+=("--project=$PROJECT")

read_state() { # sets state: READY, PREEMPTED, CREATING, ...; empty when there is no such TPU
  local describe=("${tpu[@]}" describe "$TPU" "${where[@]}" "--format=value(state)")
  if ((DRY_RUN)); then
    quote "${describe[@]}"
    state="" # assume there is none yet
  else
    state=$("${describe[@]}" 2>/dev/null) || state=""
  fi
}

on_all_workers() { # run one shell command on every worker of the slice
  run "${tpu[@]}" ssh "$TPU" "${where[@]}" --worker=all "--command=$1"
}

# ------------------------------------------------------------------ what runs on the workers
archive="${TMPDIR:-/tmp}/ssl_jax-$TPU.tgz"
if [[ -n $REPO_URL ]]; then
  fetch="rm -rf ~/ssl_jax && git clone -q $(quote "$REPO_URL") ~/ssl_jax"
  [[ -n $REPO_REF ]] && fetch+=" && git -C ~/ssl_jax checkout -q $(quote "$REPO_REF")"
else
  fetch="rm -rf ~/ssl_jax && mkdir ~/ssl_jax && tar -xzf ~/ssl_jax-src.tgz -C ~/ssl_jax"
fi
apt=(sudo apt-get -qq -o DPkg::Lock::Timeout=600) # waits for the boot-time unattended upgrades
setup_on_worker="set -euo pipefail; $fetch; \
if ! $(quote "$PYTHON") -c 'import ensurepip' 2>/dev/null; then $(quote "${apt[@]}") update \
&& $(quote "${apt[@]}") install -y $(quote "$PYTHON" "$PYTHON-venv"); fi; \
$(quote "$PYTHON") -m venv ~/ssl_jax_venv; ~/ssl_jax_venv/bin/pip install -q --upgrade pip; \
~/ssl_jax_venv/bin/pip install -q -e ~/ssl_jax 'jax[tpu]' -c ~/ssl_jax/constraints.txt"

train=(python -m ssl_jax.main "--config=$CONFIG" "--workdir=$WORKDIR")
[[ -n $DATA_DIR ]] && train+=("--config.data_dir=$DATA_DIR")
train+=(${overrides[@]+"${overrides[@]}"})
# A trainer left over from a lost ssh connection holds the TPU: SIGTERM makes it save and exit.
# (The pattern cannot match this command's own shell, whose command line starts with "bash".)
leftover="'^[^ ]*python[^ ]* -m ssl_jax[.]main'"
train_on_worker() { # the worker's shell command; $@: overrides added to this run only
  echo "cd ~/ssl_jax && . ~/ssl_jax_venv/bin/activate || exit 1; \
if pkill -TERM -f $leftover; then while pgrep -f $leftover >/dev/null; do sleep 5; done; fi; \
SSL_JAX_DISTRIBUTED=1 exec $(quote "${train[@]}" "$@")"
}
# A TPU recreated after a preemption has new hosts: the workdir's lock (run.lock) of the run this
# script started on the deleted ones may not have been released, and would only count as stale
# after workdir_lock_stale_after_s. This script deleted those hosts, so the re-run takes it over.
takeover=(--config.workdir_lock_stale_after_s=0)

# ------------------------------------------------------------------ steps
create_tpu() {
  local capacity=()
  [[ $SPOT == 1 ]] && capacity=(--spot)
  [[ $PREEMPTIBLE == 1 ]] && capacity=(--preemptible)
  say "creating $ACCELERATOR_TYPE TPU $TPU in $ZONE ($RUNTIME_VERSION)"
  run "${tpu[@]}" create "$TPU" "${where[@]}" "--accelerator-type=$ACCELERATOR_TYPE" \
    "--version=$RUNTIME_VERSION" ${capacity[@]+"${capacity[@]}"}
}

set_up_workers() {
  say "setting up every worker: this code, a virtualenv, ssl_jax and jax[tpu]"
  [[ -z $REPO_URL ]] && run "${tpu[@]}" scp "$archive" "$TPU:ssl_jax-src.tgz" "${where[@]}" --worker=all
  on_all_workers "$setup_on_worker"
}

ensure_tpu() { # a READY TPU with every worker set up
  read_state
  case $state in
    READY) ((workers_ready)) && return ;;
    "")
      create_tpu
      ((restarts)) && recreated=1 # gone during the run: a re-run on new hosts
      ;;
    *)
      say "TPU $TPU is $state: deleting and recreating it"
      run "${tpu[@]}" delete "$TPU" "${where[@]}" --quiet
      create_tpu
      recreated=1
      ;;
  esac
  set_up_workers
  workers_ready=1
}

delete_tpu() {
  if [[ $KEEP_TPU == 1 ]]; then
    say "KEEP_TPU=1: TPU $TPU is kept; delete it with: $(quote "${tpu[@]}" delete "$TPU" "${where[@]}")"
  else
    say "deleting TPU $TPU"
    run "${tpu[@]}" delete "$TPU" "${where[@]}" --quiet || say "WARNING: could not delete TPU $TPU"
  fi
}

# ------------------------------------------------------------------ main
if [[ -z $REPO_URL ]]; then
  say "packing this checkout into $archive"
  run tar -czf "$archive" --exclude=.git --exclude=.venv --exclude=__pycache__ \
    --exclude='*.egg-info' --exclude=./runs -C "$(cd "$(dirname "$0")/.." && pwd)" .
fi
trap delete_tpu EXIT
workers_ready=0
restarts=0
recreated=0
while true; do
  ensure_tpu
  extra=()
  ((recreated)) && extra=("${takeover[@]}")
  recreated=0
  say "running on every worker: $(quote "${train[@]}" ${extra[@]+"${extra[@]}"})"
  status=0
  on_all_workers "$(train_on_worker ${extra[@]+"${extra[@]}"})" || status=$?
  case $status in
    0) break ;;
    "$PREEMPTED") why="preempted: the checkpoint is saved (exit $PREEMPTED)" ;;
    *)
      read_state
      if [[ $state != READY ]]; then
        why="TPU $TPU is ${state:-gone}"
      elif ((status == 255)); then
        why="the ssh connection was lost (exit 255)"
      else
        say "training failed with exit status $status: not re-running it"
        exit "$status"
      fi
      ;;
  esac
  restarts=$((restarts + 1))
  if ((restarts > MAX_RESTARTS)); then
    say "$why, and MAX_RESTARTS=$MAX_RESTARTS re-runs are spent: giving up"
    exit "$status"
  fi
  say "$why: re-running the same command (re-run $restarts of at most $MAX_RESTARTS)"
done
say "training finished"
