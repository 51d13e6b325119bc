#!/bin/bash
# GKE through XPK (TPU or GPU node pools): XPK sets the JAX coordination environment.
#   CLUSTER=my-cluster launch/xpk.sh configs/finetune.py gs://bucket/runs/ft --config.data.cohort=/gcs/cohort
set -euo pipefail
CONFIG=${1:?config file}; WORKDIR=${2:?workdir}; shift 2
: "${CLUSTER:?set CLUSTER}"
xpk workload create --cluster "$CLUSTER" --workload "msjax-$(date +%s)" \
  --tpu-type "${TPU_TYPE:-v5litepod-16}" --num-slices 1 \
  --docker-image "${IMAGE:-python:3.11}" \
  --command "pip install -q -e . 'jax[tpu]' && python -m msjax.main --config $CONFIG --workdir $WORKDIR --config.distributed.mode=auto $*"
