#!/bin/bash
# N processes on this machine (CPU), exercising the multi-host code path with jax.distributed.
#   launch/local_multiprocess.sh 2 configs/finetune.py:smoke runs/mp --config.data.cohort=runs/synth/cohort
set -euo pipefail
N=${1:?number of processes}; CONFIG=${2:?config}; WORKDIR=${3:?workdir}; shift 3
PORT=${PORT:-$(python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}
pids=()
for ((i = 0; i < N; i++)); do
  python -m msjax.main --config "$CONFIG" --workdir "$WORKDIR" \
    --config.distributed.mode=explicit --config.distributed.coordinator_address="127.0.0.1:$PORT" \
    --config.distributed.num_processes="$N" --config.distributed.process_id="$i" "$@" &
  pids+=($!)
done
trap 'kill -TERM "${pids[@]}" 2>/dev/null' INT TERM   # forward preemption to every process
status=0
for p in "${pids[@]}"; do wait "$p" || status=$?; done
exit $status
