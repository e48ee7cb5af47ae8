#!/usr/bin/env bash
# Multi-node training on SLURM: one torchrun per node, each starting one process per GPU.
#   sbatch scripts/slurm_train.sh --samples data/llava_samples/train_4perm_....json --hdf5 egoexor.h5 ...
# Extra arguments go to `python -m egoexor.train` unchanged. Adjust the resources to your cluster.
#SBATCH --job-name=egoexor
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=32
#SBATCH --time=24:00:00
set -euo pipefail

head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export MASTER_ADDR=$head_node MASTER_PORT=${MASTER_PORT:-29500}
export OMP_NUM_THREADS=4

srun torchrun \
    --nnodes "$SLURM_NNODES" --nproc_per_node "$SLURM_GPUS_PER_NODE" \
    --rdzv_backend c10d --rdzv_id "$SLURM_JOB_ID" --rdzv_endpoint "$MASTER_ADDR:$MASTER_PORT" \
    -m egoexor.train --config configs/egoexor.yaml --deepspeed configs/zero2.json "$@"
