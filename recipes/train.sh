#!/usr/bin/env bash
# Fine-tune the FLORES-101 M2M checkpoint on prepared data.
#   METHOD=full        full fine-tuning (baseline): plain fairseq `transformer`, every weight trains
#   METHOD=shared      one LoRA shared by all languages (--lslo-*-routing shared)
#   METHOD=lslo        language-specific LoRA: encoder src*3/4,tgt*1/4 of layers, decoder tgt
#   METHOD=lslo_prune  LSLo + gradual magnitude pruning (optimizer lslo_pruning)  [default]
#   METHOD=search      architecture search: every layer `learn`, criterion lslo_label_smoothed_cross_entropy
#   PRESET=ours        this project's recipe  [default]
#   PRESET=paper       the authors' reference recipe: --lslo-preset paper, --warmup-updates 1, --amp,
#                      seed 2, layerdrop 0, pruning of B only by fairseq's real epochs (masks at the
#                      start of each epoch, from epoch 2 over 10 epochs), the last epoch evaluated
# Every variable below can be set in the environment and then wins over the preset; see
# recipes/common.sh and docs/flores-and-slurm.md.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
paper() { [ "$PRESET" = paper ]; }

LR=${LR:-$([ "$METHOD" = full ] && echo 1e-4 || echo 3e-3)}
# WARMUP_UPDATES: the paper's 1; ours a tenth of the run's updates, at most 4000 (derived below from
# MAX_UPDATE or MAX_EPOCH x the estimated updates per epoch; 4000 when neither can be known)
WARMUP_UPDATES=${WARMUP_UPDATES:-$(paper && echo 1 || true)}
MAX_TOKENS=${MAX_TOKENS:-4000}
UPDATE_FREQ=${UPDATE_FREQ:-4}
MAX_EPOCH=${MAX_EPOCH:-15}
MAX_UPDATE=${MAX_UPDATE:-0}                   # 0: no limit (MAX_EPOCH decides)
LABEL_SMOOTHING=${LABEL_SMOOTHING:-0.2}
SAMPLING_TEMPERATURE=${SAMPLING_TEMPERATURE:-5}
VIRTUAL_EPOCH_SIZE=${VIRTUAL_EPOCH_SIZE:-}   # sentences per (virtual) epoch: fairseq's --virtual-epoch-size
if [ -z "$VIRTUAL_EPOCH_SIZE" ] && [[ " ${EXTRA_TRAIN_ARGS:-} " =~ [[:space:]]--virtual-epoch-size[=[:space:]]+([0-9]+) ]]; then
  VIRTUAL_EPOCH_SIZE=${BASH_REMATCH[1]}      # given in EXTRA_TRAIN_ARGS: the estimates below follow it too
  _virtual_in_extra=1
fi
DROPOUT=${DROPOUT:-0.1}
ATTENTION_DROPOUT=${ATTENTION_DROPOUT:-0.1}
SEED=${SEED:-$(paper && echo 2 || echo 1)}
LAYERDROP=${LAYERDROP:-$(paper && echo 0 || true)}   # empty: the model's own
# --amp (instead of FP16's --fp16) on every node that is not CPU=1
AMP=${AMP:-$(paper && [ "$CPU" != 1 ] && echo 1 || echo 0)}
DDP_BACKEND=${DDP_BACKEND:-no_c10d}
SAVE_INTERVAL_UPDATES=${SAVE_INTERVAL_UPDATES:-1000}   # checkpoint_last.pt for requeue
LOG_INTERVAL=${LOG_INTERVAL:-100}
NUM_WORKERS=${NUM_WORKERS:-1}
# LSLo
LSLO_RANK=${LSLO_RANK:-high:2,medium:2,low:8}
LSLO_ALPHA=${LSLO_ALPHA:-}
LSLO_SHARED_RANK=${LSLO_SHARED_RANK:-}
LSLO_PRESET=${LSLO_PRESET:-$(paper && echo paper || true)}   # the model's --lslo-preset (empty: its default)
ENC_POSITIONS=${ENC_POSITIONS:-q,k,v,fc1,fc2}
DEC_POSITIONS=${DEC_POSITIONS:-q,k,v,cross_q,cross_k,cross_v,fc1,fc2}
_src=$(( ENCODER_LAYERS * 3 / 4 )); [ "$_src" -ge 1 ] || _src=1
ENC_ROUTING=${ENC_ROUTING:-src*$_src$([ "$_src" -lt "$ENCODER_LAYERS" ] && echo ",tgt*$((ENCODER_LAYERS - _src))")}
DEC_ROUTING=${DEC_ROUTING:-tgt*$DECODER_LAYERS}
# pruning (--optimizer lslo_pruning)
#   PRUNE_UNIT=epochs            fairseq's real epochs; masks recomputed at the start of each epoch
#   PRUNE_UNIT=estimated-epochs  epochs converted to updates with UPDATES_PER_EPOCH (estimated from
#                                the data); masks every PRUNE_INTERVAL updates (the optimizer's 100)
#   PRUNE_UNIT=updates           PRUNE_START/END/DURATION/INTERVAL in updates
# From the start of epoch 2 over 10 epochs: PRUNE_START=2 and PRUNE_END=12 or PRUNE_DURATION=10.
SPARSITY=${SPARSITY:-0.9}
PRUNE_UNIT=${PRUNE_UNIT:-$(paper && echo epochs || echo estimated-epochs)}
PRUNE_START=${PRUNE_START:-2}
if [ -n "${PRUNE_END:-}" ] && [ -n "${PRUNE_DURATION:-}" ]; then
  echo "train.sh: PRUNE_END=$PRUNE_END and PRUNE_DURATION=$PRUNE_DURATION: set one of them (end = start + duration)" >&2
  exit 2
fi
if [ -z "${PRUNE_END:-}" ] && [ -z "${PRUNE_DURATION:-}" ]; then
  if paper; then PRUNE_DURATION=10; else PRUNE_END=12; fi
fi
PRUNE_END=${PRUNE_END:-}
PRUNE_DURATION=${PRUNE_DURATION:-}
PRUNE_INTERVAL=${PRUNE_INTERVAL:-}
PRUNE_SCOPE=${PRUNE_SCOPE:-language}
PRUNE_FACTORS=${PRUNE_FACTORS:-$(paper && echo B || echo AB)}
# architecture search
ROUTING_ENTROPY_WEIGHT=${ROUTING_ENTROPY_WEIGHT:-0}

if [ "${DRY_RUN:-0}" != 1 ]; then
  for f in "$DATA_DIR/lang_pairs.txt" "$DATA_DIR/lang_dict.txt" "$PRETRAINED"; do
    [ -f "$f" ] || { echo "train.sh: $f is missing (DATA_DIR / PRETRAINED: run the prepare step first)" >&2; exit 2; }
  done
  LANG_PAIRS=$(cat "$DATA_DIR/lang_pairs.txt")
else
  LANG_PAIRS=${LANG_PAIRS:-$(lslo_all_pairs)}
fi

args=("$DATA_DIR" --user-dir "$USER_DIR"
  --task translation_multi_simple_epoch --lang-pairs "$LANG_PAIRS" --lang-dict "$DATA_DIR/lang_dict.txt"
  --encoder-langtok src --decoder-langtok
  --sampling-method temperature --sampling-temperature "$SAMPLING_TEMPERATURE"
  --finetune-from-model "$PRETRAINED" --save-dir "$SAVE_DIR"
  $(lslo_dim_flags) --dropout "$DROPOUT" --attention-dropout "$ATTENTION_DROPOUT"
  --label-smoothing "$LABEL_SMOOTHING" --adam-betas "(0.9, 0.98)"
  --lr "$LR" --lr-scheduler inverse_sqrt
  --max-tokens "$MAX_TOKENS" --update-freq "$UPDATE_FREQ" --max-epoch "$MAX_EPOCH"
  --ddp-backend "$DDP_BACKEND" --seed "$SEED" --log-format simple --log-interval "$LOG_INTERVAL"
  --skip-invalid-size-inputs-valid-test --no-epoch-checkpoints
  --save-interval-updates "$SAVE_INTERVAL_UPDATES" --keep-interval-updates 1 --num-workers "$NUM_WORKERS")
[ "$MAX_UPDATE" != 0 ] && args+=(--max-update "$MAX_UPDATE")
[ -n "$VIRTUAL_EPOCH_SIZE" ] && [ -z "${_virtual_in_extra:-}" ] && args+=(--virtual-epoch-size "$VIRTUAL_EPOCH_SIZE")
[ "$CPU" = 1 ] && args+=(--cpu)
if [ "$AMP" = 1 ]; then args+=(--amp); else args+=($(lslo_fp16_flag)); fi
[ -n "$LAYERDROP" ] && args+=(--encoder-layerdrop "$LAYERDROP" --decoder-layerdrop "$LAYERDROP")

# PRUNE_UNIT=estimated-epochs gives the optimizer the schedule in updates, converted with
# UPDATES_PER_EPOCH (estimated from the data); PRUNE_UNIT=epochs/updates pass it on as it is.
world_size() {
  if [[ "${DISTRIBUTED_ARGS:-}" =~ --distributed-world-size\ ([0-9]+) ]]; then echo "${BASH_REMATCH[1]}"
  elif [ "$CPU" != 1 ] && command -v nvidia-smi >/dev/null 2>&1; then nvidia-smi -L | grep -c GPU
  else echo 1; fi
}
# epochs are fairseq's 1-based epoch numbers: epoch E starts after (E - 1) * UPDATES_PER_EPOCH updates
prune_updates() {
  awk -v e="$1" -v u="$UPDATES_PER_EPOCH" 'BEGIN { x = (e - 1) * u; printf "%d\n", (x < 0 ? 0 : x) + 0.5 }'
}
# UPDATES_PER_EPOCH (unless set): estimated from the prepared data the way fairseq batches it
estimate_updates_per_epoch() {
  [ -n "${UPDATES_PER_EPOCH:-}" ] && return 0
  [ -f "$DATA_DIR/langs.tsv" ] || return 1
  local cmd=("$LSLO_PYTHON" -m lslo_data_prep.epoch_size "$DATA_DIR" --max-tokens "$MAX_TOKENS"
    --update-freq "$UPDATE_FREQ" --world-size "$(world_size)" --sampling-method temperature
    --sampling-temperature "$SAMPLING_TEMPERATURE")
  [ -n "$VIRTUAL_EPOCH_SIZE" ] && cmd+=(--virtual-epoch-size "$VIRTUAL_EPOCH_SIZE")
  UPDATES_PER_EPOCH=$("${cmd[@]}") || exit 2
  echo "train.sh: about $UPDATES_PER_EPOCH updates per epoch (estimated$([ -n "$VIRTUAL_EPOCH_SIZE" ] && echo " for virtual epochs of $VIRTUAL_EPOCH_SIZE sentences"); set UPDATES_PER_EPOCH to override)" >&2
}
if [ -z "$WARMUP_UPDATES" ]; then
  if [ "$MAX_UPDATE" != 0 ]; then _total=$MAX_UPDATE
  elif estimate_updates_per_epoch; then _total=$(( MAX_EPOCH * UPDATES_PER_EPOCH ))
  else _total=""; fi
  if [ -n "$_total" ]; then
    WARMUP_UPDATES=$(( _total / 10 )); [ "$WARMUP_UPDATES" -ge 1 ] || WARMUP_UPDATES=1
    [ "$WARMUP_UPDATES" -le 4000 ] || WARMUP_UPDATES=4000
    echo "train.sh: warmup $WARMUP_UPDATES updates (a tenth of the run's ~$_total updates, at most 4000; set WARMUP_UPDATES to choose)" >&2
  else
    WARMUP_UPDATES=4000
    echo "train.sh: warmup 4000 updates (no prepared data to size the run from; set WARMUP_UPDATES to choose)" >&2
  fi
fi
args+=(--warmup-updates "$WARMUP_UPDATES")
if [ "$METHOD" = lslo_prune ]; then
  case "$PRUNE_UNIT" in
    updates|epochs)
      prune_args=(--lslo-prune-unit "$PRUNE_UNIT" --lslo-prune-start "$PRUNE_START")
      if [ -n "$PRUNE_DURATION" ]; then prune_args+=(--lslo-prune-duration "$PRUNE_DURATION")
      else prune_args+=(--lslo-prune-end "$PRUNE_END"); fi ;;
    estimated-epochs)
      [ -n "$PRUNE_END" ] || PRUNE_END=$(awk -v s="$PRUNE_START" -v d="$PRUNE_DURATION" 'BEGIN { print s + d }')
      if estimate_updates_per_epoch; then :
      elif [ "${DRY_RUN:-0}" = 1 ]; then UPDATES_PER_EPOCH=1000
        echo "train.sh: dry run without data: pruning schedule shown for UPDATES_PER_EPOCH=1000" >&2
      else
        echo "train.sh: $DATA_DIR/langs.tsv is missing: cannot estimate the updates per epoch (run the prepare step, or set UPDATES_PER_EPOCH)" >&2
        exit 2
      fi
      prune_args=(--lslo-prune-unit updates --lslo-prune-start "$(prune_updates "$PRUNE_START")"
        --lslo-prune-end "$(prune_updates "$PRUNE_END")") ;;
    *) echo "train.sh: PRUNE_UNIT=$PRUNE_UNIT: expected epochs, estimated-epochs or updates" >&2; exit 2 ;;
  esac
fi

lslo_args=(--arch lslo_transformer --lslo-langs "$DATA_DIR/langs.tsv" --lslo-rank "$LSLO_RANK"
  --lslo-encoder-positions "$ENC_POSITIONS" --lslo-decoder-positions "$DEC_POSITIONS")
[ -n "$LSLO_ALPHA" ] && lslo_args+=(--lslo-alpha "$LSLO_ALPHA")
[ -n "$LSLO_SHARED_RANK" ] && lslo_args+=(--lslo-shared-rank "$LSLO_SHARED_RANK")
[ -n "$LSLO_PRESET" ] && lslo_args+=(--lslo-preset "$LSLO_PRESET")
adam=(--optimizer adam)
ls_ce=(--criterion label_smoothed_cross_entropy)

case "$METHOD" in
  full) method_args=(--arch transformer "${adam[@]}" "${ls_ce[@]}") ;;
  shared) method_args=("${lslo_args[@]}" --lslo-encoder-routing shared --lslo-decoder-routing shared "${adam[@]}" "${ls_ce[@]}") ;;
  lslo) method_args=("${lslo_args[@]}" --lslo-encoder-routing "$ENC_ROUTING" --lslo-decoder-routing "$DEC_ROUTING" "${adam[@]}" "${ls_ce[@]}") ;;
  lslo_prune)
    method_args=("${lslo_args[@]}" --lslo-encoder-routing "$ENC_ROUTING" --lslo-decoder-routing "$DEC_ROUTING" "${ls_ce[@]}"
      --optimizer lslo_pruning --lslo-inner-optimizer adam --lslo-sparsity "$SPARSITY"
      "${prune_args[@]}" --lslo-prune-scope "$PRUNE_SCOPE" --lslo-prune-factors "$PRUNE_FACTORS")
    [ -n "$PRUNE_INTERVAL" ] && method_args+=(--lslo-prune-interval "$PRUNE_INTERVAL") ;;
  search)
    method_args=("${lslo_args[@]}" --lslo-encoder-routing "learn*$ENCODER_LAYERS" --lslo-decoder-routing "learn*$DECODER_LAYERS"
      "${adam[@]}" --criterion lslo_label_smoothed_cross_entropy --lslo-routing-entropy-weight "$ROUTING_ENTROPY_WEIGHT") ;;
  *) echo "train.sh: METHOD=$METHOD: expected full, shared, lslo, lslo_prune or search" >&2; exit 2 ;;
esac

# DISTRIBUTED_ARGS is set by the SLURM scripts (world size, port); EXTRA_TRAIN_ARGS is yours.
# shellcheck disable=SC2086
lslo_run "$LSLO_PYTHON" -m fairseq_cli.train "${args[@]}" "${method_args[@]}" ${DISTRIBUTED_ARGS:-} ${EXTRA_TRAIN_ARGS:-}

if [ "$METHOD" = search ] && [ "${DRY_RUN:-0}" != 1 ] && [ "${SLURM_PROCID:-0}" = 0 ]; then
  # The searched routing: per layer, the larger of the two learned weights wins.
  lslo_run "$LSLO_PYTHON" -m fairseq_lslo.cli.arch "$SAVE_DIR/checkpoint_last.pt" --plot "$SAVE_DIR/arch.png" \
    || echo "train.sh: lslo-arch failed (is fairseq_lslo.cli.arch installed?); the checkpoint is $SAVE_DIR/checkpoint_last.pt" >&2
fi
