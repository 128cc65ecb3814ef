#!/usr/bin/env bash
# Multi-node ControlNet training on SLURM: one task per GPU, Lightning reads the SLURM environment.
#   sbatch scripts/train_slurm.sh                       # 2 nodes x 4 GPUs, SD1.5 on Stanford Dogs
#   NODES=1 GPUS=2 sbatch --nodes=1 --gpus-per-node=2 --ntasks-per-node=2 scripts/train_slurm.sh
#   REQUEUE=0 sbatch scripts/train_slurm.sh             # save and stop at the time limit, but do not requeue
# Two minutes before the time limit SLURM sends SIGUSR1 to every task (--signal): training saves a resumable
# checkpoint at the next step boundary, exits non-zero, and rank 0 requeues the job (scontrol requeue). The
# requeued job continues from the newest intact checkpoint (--resume-from auto). SIGTERM (preemption, scancel)
# saves and stops the same way.
#SBATCH --job-name=cutenet
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=4
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --signal=USR1@120
#SBATCH --requeue
#SBATCH --output=slurm-%j.out
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
NODES=${NODES:-${SLURM_JOB_NUM_NODES:-2}}
GPUS=${GPUS:-${SLURM_NTASKS_PER_NODE:-4}}
CONFIG=${CONFIG:-models/cldm_v15.yaml}
if [ "${REQUEUE:-1}" = 1 ]; then REQUEUE_FLAG=--slurm-requeue; else REQUEUE_FLAG=--no-slurm-requeue; fi
# srun starts one process per GPU; Lightning's SLURM environment assigns ranks (no torchrun needed).
srun .venv/bin/python tutorial_train.py --config "$CONFIG" --accelerator gpu --devices "$GPUS" \
    --num-nodes "$NODES" --strategy ddp --precision bf16-mixed --workers "${SLURM_CPUS_PER_TASK:-8}" \
    --resume-from "${RESUME_FROM:-auto}" "$REQUEUE_FLAG" "$@"
