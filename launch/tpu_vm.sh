#!/bin/bash
# Cloud TPU VM slice (e.g. v5e-16: 4 hosts x 4 chips): the same command on every host.
#   TPU_NAME=my-v5e ZONE=us-west4-a launch/tpu_vm.sh configs/finetune.py gs://bucket/runs/ft \
#     --config.data.cohort=/mnt/cohort
set -euo pipefail
CONFIG=${1:?config file}; WORKDIR=${2:?workdir}; shift 2
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command "
  cd ~/msjax && pip install -q -e . 'jax[tpu]' &&
  python -m msjax.main --config $CONFIG --workdir $WORKDIR --config.distributed.mode=auto $*"
