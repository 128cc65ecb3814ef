#!/usr/bin/env bash
# Multi-node ControlNet training on SLURM: one task per GPU, Lightning reads the SLURM environment.
#   sbatch scripts/train_slurm.sh                       # 2 nodes x 4 GPUs, SD1.5 on Stanford Dogs
#   NODES=1 GPUS=2 sbatch --nodes=1 --gpus-per-node=2 --ntasks-per-node=2 scripts/train_slurm.sh
#SBATCH --job-name=cutenet
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=4
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --output=slurm-%j.out
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
NODES=${NODES:-${SLURM_JOB_NUM_NODES:-2}}
GPUS=${GPUS:-${SLURM_NTASKS_PER_NODE:-4}}
CONFIG=${CONFIG:-models/cldm_v15.yaml}
# srun starts one process per GPU; Lightning's SLURM environment assigns ranks (no torchrun needed).
srun .venv/bin/python tutorial_train.py --config "$CONFIG" --accelerator gpu --devices "$GPUS" \
    --num-nodes "$NODES" --strategy ddp --precision bf16-mixed --workers "${SLURM_CPUS_PER_TASK:-8}" \
    --resume-from "${RESUME_FROM:-auto}" "$@"
