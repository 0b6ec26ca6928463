# Shared settings of the FLORES-101 recipes (sourced).  Every value can be overridden from
# the environment; everything is exported so that SLURM jobs (sbatch --export=ALL) see it.
set -a
LSLO_REPO=${LSLO_REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
if [ -z "${LSLO_PYTHON:-}" ]; then
  if [ -x "$LSLO_REPO/.venv/bin/python" ]; then LSLO_PYTHON=$LSLO_REPO/.venv/bin/python; else LSLO_PYTHON=python3; fi
fi
PYTHONPATH=$LSLO_REPO${PYTHONPATH:+:$PYTHONPATH}
USER_DIR=${USER_DIR:-$LSLO_REPO/fairseq_lslo}

# --- data -------------------------------------------------------------------------------
LANGSET=${LANGSET:-lang12}                       # lang12 | lang30 | any lslo_data_prep/langs/NAME.tsv
LANGS_TSV=${LANGS_TSV:-$LSLO_REPO/lslo_data_prep/langs/$LANGSET.tsv}
MODEL_SIZE=${MODEL_SIZE:-615M}                   # 615M | 175M
DATA_ROOT=${DATA_ROOT:-$LSLO_REPO/work/flores}   # downloads and unpacked archives
FLORES_DIR=${FLORES_DIR:-$DATA_ROOT/flores101_dataset}
MODEL_DIR=${MODEL_DIR:-$DATA_ROOT/flores101_mm100_$MODEL_SIZE}
PRETRAINED=${PRETRAINED:-$MODEL_DIR/model.pt}
# The language set's name in folder names: LANGSET for a shipped lslo_data_prep/langs/$LANGSET.tsv;
# for a LANGS_TSV of your own, its file name, its number of languages and a hash of its rows (e.g.
# mine-10langs-1a2b3c4d), so that different inventories never share prepared data or run folders.
if [ -z "${SET_NAME:-}" ]; then
  if [ "$LANGS_TSV" = "$LSLO_REPO/lslo_data_prep/langs/$LANGSET.tsv" ]; then SET_NAME=$LANGSET
  elif [ -f "$LANGS_TSV" ]; then SET_NAME=$("$LSLO_PYTHON" -m lslo_data_prep.langsets "$LANGS_TSV" name)
  else SET_NAME=$(basename "$LANGS_TSV" .tsv); fi
fi
PREP_DIR=${PREP_DIR:-$DATA_ROOT/prepared-$SET_NAME-$MODEL_SIZE}
DATA_DIR=${DATA_DIR:-$PREP_DIR/bin}              # what fairseq reads
RAW_DIR=${RAW_DIR:-$PREP_DIR/raw}                # plain-text references
TRAIN_SPLIT=${TRAIN_SPLIT:-dev}
VALID_SPLIT=${VALID_SPLIT:-dev}
VALID_SIZE=${VALID_SIZE:-100}                    # held out of TRAIN_SPLIT when VALID_SPLIT equals it
TEST_SPLIT=${TEST_SPLIT:-devtest}
PREP_WORKERS=${PREP_WORKERS:-1}

# --- run --------------------------------------------------------------------------------
METHOD=${METHOD:-lslo_prune}                     # full | shared | lslo | lslo_prune | search
# ours: this project's recipe; paper: the authors' reference recipe (see recipes/train.sh)
PRESET=${PRESET:-ours}
case "$PRESET" in
  ours|paper) ;;
  *) echo "PRESET=$PRESET: expected ours or paper" >&2; exit 2 ;;
esac
RUN_DIR=${RUN_DIR:-$DATA_ROOT/runs/$SET_NAME-$MODEL_SIZE-$METHOD$([ "$PRESET" = ours ] || echo "-$PRESET")}
SAVE_DIR=${SAVE_DIR:-$RUN_DIR/checkpoints}
EVAL_DIR=${EVAL_DIR:-$RUN_DIR/eval}
# The checkpoint the evaluation step decodes: the last one for pruning runs (the model at its final
# sparsity, as the reference evaluates it; the best on valid may be from before pruning ended) and for
# PRESET=paper (the reference's last epoch); otherwise the best on valid.
if [ "$METHOD" = lslo_prune ] || [ "$PRESET" = paper ]; then _ckpt=last; else _ckpt=best; fi
EVAL_CHECKPOINT=${EVAL_CHECKPOINT:-$SAVE_DIR/checkpoint_$_ckpt.pt}
unset _ckpt

# --- threads ------------------------------------------------------------------------------
# one OpenMP thread per process unless you set it: on a loaded CPU more threads run slower
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

# --- architecture (must match the checkpoint) --------------------------------------------
case "$MODEL_SIZE" in
  615M) _L=12 _D=1024 _F=4096 _H=16 ;;
  175M) _L=6 _D=512 _F=2048 _H=16 ;;
  *) echo "MODEL_SIZE=$MODEL_SIZE: expected 615M or 175M (or set ENCODER_LAYERS, EMBED_DIM, ... yourself)" >&2; _L=12 _D=1024 _F=4096 _H=16 ;;
esac
ENCODER_LAYERS=${ENCODER_LAYERS:-$_L}
DECODER_LAYERS=${DECODER_LAYERS:-$_L}
EMBED_DIM=${EMBED_DIM:-$_D}
FFN_DIM=${FFN_DIM:-$_F}
HEADS=${HEADS:-$_H}
unset _L _D _F _H

# --- devices ----------------------------------------------------------------------------
CPU=${CPU:-0}                                    # 1: --cpu
FP16=${FP16:-auto}                               # 1 | 0 | auto (1 where nvidia-smi exists), decided on the node that runs
set +a

# --fp16 or nothing, for this node.
lslo_fp16_flag() {
  if [ "$FP16" = 1 ] || { [ "$FP16" = auto ] && [ "$CPU" != 1 ] && command -v nvidia-smi >/dev/null 2>&1; }; then
    echo --fp16
  fi
}

# Print a command (DRY_RUN=1) or run it.
lslo_run() {
  if [ "${DRY_RUN:-0}" = 1 ]; then printf '%q ' "$@"; echo; else "$@"; fi
}

# Run a command with stdout going to FILE through a temporary name (renamed only on success).
lslo_run_to() {
  local out=$1; shift
  if [ "${DRY_RUN:-0}" = 1 ]; then printf '%q ' "$@"; echo "> $(printf '%q' "$out")"; return; fi
  mkdir -p "$(dirname "$out")"
  "$@" > "$out.tmp.$$" && mv -f "$out.tmp.$$" "$out" || { local rc=$?; rm -f "$out.tmp.$$"; return $rc; }
}

# All directions of the language set (from the prepared data if present, else from the TSV).
lslo_all_pairs() {
  if [ -f "$DATA_DIR/lang_pairs.txt" ]; then cat "$DATA_DIR/lang_pairs.txt"
  else "$LSLO_PYTHON" -m lslo_data_prep.langsets "$LANGS_TSV" pairs; fi
}

# The architecture flags shared by every method (same dims for the plain and the LSLo model).
lslo_dim_flags() {
  echo --encoder-layers "$ENCODER_LAYERS" --decoder-layers "$DECODER_LAYERS" \
    --encoder-embed-dim "$EMBED_DIM" --decoder-embed-dim "$EMBED_DIM" \
    --encoder-ffn-embed-dim "$FFN_DIM" --decoder-ffn-embed-dim "$FFN_DIM" \
    --encoder-attention-heads "$HEADS" --decoder-attention-heads "$HEADS" \
    --encoder-normalize-before --decoder-normalize-before --share-all-embeddings
}
