#!/usr/bin/env bash
# download -> prepare -> train -> evaluate, locally or as dependent SLURM jobs.
#   LANGSET=lang12|lang30 (or LANGS_TSV=FILE)  METHOD=lslo_prune|lslo|shared|full|search  MODEL_SIZE=615M|175M
#   STEPS=download,prepare,train,evaluate (a subset runs only those)
#   DRY_RUN=1  print every command instead of running it
#   SLURM=1    download here (compute nodes are often offline), then submit prepare, train,
#              an evaluation job array and a scoring job, each depending on the previous one
# See recipes/common.sh for paths and docs/flores-and-slurm.md for every variable.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$HERE/common.sh"
STEPS=${STEPS:-download,prepare,train,evaluate}
SLURM=${SLURM:-0}
has_step() { [[ ",$STEPS," == *",$1,"* ]]; }

[ -f "$LANGS_TSV" ] || { echo "flores_chain.sh: language set $LANGS_TSV not found (LANGSET / LANGS_TSV)" >&2; exit 2; }
echo "flores_chain.sh: language set $SET_NAME ($LANGS_TSV), OMP_NUM_THREADS=$OMP_NUM_THREADS" >&2

download=("$LSLO_PYTHON" -m lslo_data_prep.download)
prepare=("$LSLO_PYTHON" -m lslo_data_prep.prepare --langs "$LANGS_TSV" --flores-dir "$FLORES_DIR" --model-dir "$MODEL_DIR"
  --out "$PREP_DIR" --train-split "$TRAIN_SPLIT" --valid-split "$VALID_SPLIT" --valid-size "$VALID_SIZE"
  --test-split "$TEST_SPLIT" --workers "$PREP_WORKERS")

if has_step download; then
  echo "== download ($DATA_ROOT)" >&2
  # a FLORES_DIR / MODEL_DIR of your own that already holds the files is used as it is
  if [ "$FLORES_DIR" != "$DATA_ROOT/flores101_dataset" ] && [ -d "$FLORES_DIR/devtest" ]; then
    echo "using FLORES_DIR=$FLORES_DIR" >&2
  else lslo_run "${download[@]}" flores --dest "$DATA_ROOT"; fi
  if [ "$MODEL_DIR" != "$DATA_ROOT/flores101_mm100_$MODEL_SIZE" ] && [ -f "$MODEL_DIR/dict.txt" ]; then
    echo "using MODEL_DIR=$MODEL_DIR" >&2
  else lslo_run "${download[@]}" model --size "$MODEL_SIZE" --dest "$DATA_ROOT"; fi
fi

if [ "$SLURM" != 1 ]; then
  if has_step prepare; then echo "== prepare ($PREP_DIR)" >&2; lslo_run "${prepare[@]}"; fi
  if has_step train; then echo "== train $METHOD ($SAVE_DIR)" >&2; bash "$HERE/train.sh"; fi
  if has_step evaluate; then echo "== evaluate ($EVAL_DIR)" >&2; bash "$HERE/evaluate.sh"; fi
  exit 0
fi

# --- SLURM: dependent jobs ------------------------------------------------------------------
# SBATCH_ARGS go to every job (partition, account, time, ...); SBATCH_{PREPARE,TRAIN,EVAL}_ARGS to one.
NODES=${NODES:-1}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
EVAL_SHARDS=${EVAL_SHARDS:-8}  # evaluation array tasks (one GPU and one model load each)
EVAL_ARRAY_PARALLEL=${EVAL_ARRAY_PARALLEL:-32}
export NODES GPUS_PER_NODE STEPS SLURM
[ "${DRY_RUN:-0}" = 1 ] || mkdir -p "$RUN_DIR/slurm"
logs=(--output "$RUN_DIR/slurm/%x-%j.out")
dep=()
last=""
submit() {  # submit NAME ARGS... ; sets $last to the job id (a placeholder in a dry run)
  local name=$1; shift
  local cmd=(sbatch --parsable --job-name "lslo-$name" "${logs[@]}" "${dep[@]}" $SBATCH_ARGS "$@")
  if [ "${DRY_RUN:-0}" = 1 ]; then printf '%q ' "${cmd[@]}"; echo; last="\$JOB_${name^^}"
  else last=$("${cmd[@]}"); last=${last%%;*}; echo "submitted $name: job $last" >&2; fi
  dep=(--dependency "afterok:$last")
}
SBATCH_ARGS=${SBATCH_ARGS:-}
# shellcheck disable=SC2086
if has_step prepare; then submit prepare ${SBATCH_PREPARE_ARGS:-} "$HERE/slurm/prepare.sbatch"; fi
if has_step train; then
  if [ "$NODES" = 1 ]; then
    # shellcheck disable=SC2086
    submit train --nodes 1 --ntasks-per-node 1 --gpus-per-node "$GPUS_PER_NODE" ${SBATCH_TRAIN_ARGS:-} "$HERE/slurm/train_1node.sbatch"
  else
    # shellcheck disable=SC2086
    submit train --nodes "$NODES" --ntasks-per-node "$GPUS_PER_NODE" --gpus-per-node "$GPUS_PER_NODE" ${SBATCH_TRAIN_ARGS:-} "$HERE/slurm/train_multinode.sbatch"
  fi
fi
if has_step evaluate; then
  EVAL_PAIRS=${EVAL_PAIRS:-$(lslo_all_pairs)}
  export EVAL_PAIRS
  n=$(tr ',' '\n' <<< "$EVAL_PAIRS" | grep -c .)
  EVAL_SHARDS=$(( EVAL_SHARDS < n ? EVAL_SHARDS : n ))  # task i decodes directions i, i+N, i+2N, ...
  export EVAL_SHARDS
  # shellcheck disable=SC2086
  submit eval --array "0-$((EVAL_SHARDS - 1))%$EVAL_ARRAY_PARALLEL" --gpus-per-node 1 ${SBATCH_EVAL_ARGS:-} "$HERE/slurm/eval_array.sbatch"
  # shellcheck disable=SC2086
  submit score ${SBATCH_PREPARE_ARGS:-} "$HERE/slurm/score.sbatch"
fi
