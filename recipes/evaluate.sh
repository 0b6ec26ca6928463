#!/usr/bin/env bash
# Decode every direction (beam 5) and score spBLEU + chrF++ per direction.
#   CKPT=...             checkpoint (default EVAL_CHECKPOINT of common.sh: checkpoint_best.pt, PRESET=paper: _last)
#   EVAL_PAIRS=en-fr,... directions (default: all of the language set)
#   EVAL_STAGE=all|generate|score
#   SCORE_SPM_MODEL=FILE spBLEU with a local SentencePiece model (no download by sacrebleu);
#                        e.g. MODEL_DIR/sentencepiece.bpe.model on an offline node
# Outputs: EVAL_DIR/gen/{src}-{tgt}.gen, EVAL_DIR/scores.tsv, scores.md, heatmap.png
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

CKPT=${CKPT:-$EVAL_CHECKPOINT}
BEAM=${BEAM:-5}
GEN_SUBSET=${GEN_SUBSET:-test}
GEN_MAX_TOKENS=${GEN_MAX_TOKENS:-8000}
EVAL_STAGE=${EVAL_STAGE:-all}
SCORE_SPM_MODEL=${SCORE_SPM_MODEL:-}
EVAL_PAIRS=${EVAL_PAIRS:-$(lslo_all_pairs)}

if [ "$EVAL_STAGE" != score ]; then
  if [ "${DRY_RUN:-0}" != 1 ] && [ ! -f "$CKPT" ]; then
    echo "evaluate.sh: checkpoint $CKPT is missing (CKPT)" >&2; exit 2
  fi
  flags=()
  [ "$CPU" = 1 ] && flags+=(--cpu)
  flags+=($(lslo_fp16_flag))
  for pair in ${EVAL_PAIRS//,/ }; do
    out=$EVAL_DIR/gen/$pair.gen
    if [ -s "$out" ] && [ "${DRY_RUN:-0}" != 1 ]; then echo "evaluate.sh: $out exists, skipped" >&2; continue; fi
    # shellcheck disable=SC2086
    lslo_run_to "$out" "$LSLO_PYTHON" -m fairseq_cli.generate "$DATA_DIR" --user-dir "$USER_DIR" \
      --task translation_multi_simple_epoch --lang-pairs "$pair" --lang-dict "$DATA_DIR/lang_dict.txt" \
      --encoder-langtok src --decoder-langtok -s "${pair%-*}" -t "${pair#*-}" \
      --path "$CKPT" --gen-subset "$GEN_SUBSET" --beam "$BEAM" --remove-bpe sentencepiece \
      --max-tokens "$GEN_MAX_TOKENS" --required-batch-size-multiple 1 "${flags[@]}" ${EXTRA_GEN_ARGS:-}
  done
fi

if [ "$EVAL_STAGE" != generate ]; then
  score=("$LSLO_PYTHON" -m data_prep.score --data "$DATA_DIR" --raw "$RAW_DIR" --gen-dir "$EVAL_DIR/gen"
    --out-dir "$EVAL_DIR" --pairs "$EVAL_PAIRS")
  [ -n "$SCORE_SPM_MODEL" ] && score+=(--spm-model "$SCORE_SPM_MODEL")
  lslo_run "${score[@]}"
fi
