#!/usr/bin/env bash
# Issue 37's levers, each measured alone, on one GPU: every arm x seed is its own leave-one-out
# run (configs/lesjak.py, 07 <-> 26), all launched at once (one GPU, 16 host cores); each run is
# capped at RUN_LIMIT seconds and the summaries come back as one archive.
#
#   arms: van      training from scratch (control)
#         tp       0CF, encoder pretrained here with the defaults (600 steps, sequence dropout 0.5)
#         tp_sd0   0CF, pretraining without sequence dropout
#         tp_long  0CF, pretraining 4000 steps (the paper's :full length)
#         tp_lr01  0CF, default pretraining, the transferred encoder at 0.1x the learning rate
#
# Inputs (copied next to the code, the data are never committed): .gpudata/lesjak_mni,
# .gpudata/lesjak_lesion_maps, .gpudata/rawprep (the four raw longitudinal exams after msjax's
# pipeline, the cohort configs/lesjak.py pretrains on), .whl (nibabel, grain, ... for the image).
# Read the archive with studies/paper_claim.py (--run SEED:DIR per run).
#
# Measured on an H200 (16 Xeon cores), 2026-12-04, all 15 runs at once: none finished in 470 s.
# Every run went at ~52 patches/s, pretraining too (whose batches cost 8 ms of host time), so the
# shared GPU was the limit, not the data: the 0CF runs had pretrained (600 steps, 231 s) and
# fine-tuned fold 1 (800 steps, ~210 s); VAN was at step ~290 of fold 2. The grid needs ~15 min
# this way: give it one call of its own (RUN_LIMIT=900 does not fit a 10-minute call; split it
# by ARMS / SEEDS over calls).
set -u
RUN_LIMIT=${RUN_LIMIT:-480}
SEEDS=${SEEDS:-"0 1 2"}
ARMS=${ARMS:-"van tp tp_sd0 tp_long tp_lr01"}
DEST=$(realpath -m "${OUT:-runs/gpu_levers_out}")
W=runs/gpu
mkdir -p "$W" "$DEST"
if [ -z "${NO_WHEELS:-}" ] && ls .whl/*.whl >/dev/null 2>&1; then
  rm -rf /tmp/site; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, \
'optax', optax.__version__, jax.devices())" || exit 1
grep -m1 'model name' /proc/cpuinfo; nproc

D=.gpudata
common=(--config ${CONFIG:-configs/lesjak.py} --config.labelled=$D/lesjak_mni
        --config.data.lesion_maps=$D/lesjak_lesion_maps --config.unlabelled_raw=
        --config.unlabelled=$D/rawprep)
arm_flags() {
  case $1 in
    van) echo "--config.pretrained=msjax-lesjak-encoder --config.strategies=van" ;;
    tp) echo "--config.strategies=0" ;;
    tp_sd0) echo "--config.strategies=0 --config.data.pretrain_sequence_dropout=0" ;;
    tp_long) echo "--config.strategies=0 --config.pretrain.steps=4000 \
--config.pretrain.checkpoint_every=500" ;;
    tp_lr01) echo "--config.strategies=0 --config.finetune.transferred_lr_scale=0.1" ;;
  esac
}
t0=$(date +%s)
pids=()
for seed in $SEEDS; do
  for arm in $ARMS; do
    # shellcheck disable=SC2046
    timeout "$RUN_LIMIT" python3 -m msjax.main "${common[@]}" $(arm_flags "$arm") \
      --config.seed="$seed" --workdir "$W/${arm}_s$seed" > "$W/${arm}_s$seed.log" 2>&1 &
    pids+=($!)
  done
done
while :; do
  running=0
  for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && running=$((running + 1)); done
  done_=$(ls $W/*/leave_one_out.json 2>/dev/null | wc -l)
  echo "[$(( $(date +%s) - t0 )) s] running $running, finished $done_"
  [ "$running" -eq 0 ] && break
  sleep 30
done
for f in $W/*.log; do echo "== $f"; grep -E "Error|error:|Traceback" "$f" | tail -3; \
  grep -E "^step [0-9]+/|^\[(pretrain|finetune)\]" "$f" | tail -2; done
(cd $W && find . \( -name leave_one_out.json -o -name results.md -o -name '*.log' \
  -o -name train_summary.json -o -name summary.json \) -not -path '*/checkpoints/*' \
  -not -path '*/predictions/*' -print0 | tar czf "$DEST/levers.tgz" --null -T -)
ls -la "$DEST"
