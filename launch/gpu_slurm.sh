#!/usr/bin/env bash
# One process per node on a SLURM GPU cluster; jax.distributed.initialize() reads SLURM's variables.
#
#   sbatch --nodes=2 --gpus-per-node=8 launch/gpu_slurm.sh configs/simclr.py \
#       --workdir=/shared/runs/simclr --config.data_dir=/shared/tfds
#
# Every process sees all GPUs of its node; the mesh spans every GPU of every node. Resubmitting the
# same command resumes from the newest checkpoint in the (shared) workdir.
#SBATCH --ntasks-per-node=1
#SBATCH --job-name=ssl_jax
set -euo pipefail
CONFIG=${1:?usage: launch/gpu_slurm.sh CONFIG --workdir=DIR [overrides...]}
shift
export SSL_JAX_DISTRIBUTED=1
srun python -m ssl_jax.main --config="$CONFIG" "$@"
