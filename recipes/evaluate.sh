#!/usr/bin/env bash
# Decode every direction with one model load (lslo-evaluate, beam 5) and score spBLEU + chrF++ per direction.
#   CKPT=...             checkpoint (default EVAL_CHECKPOINT of common.sh: checkpoint_last.pt for METHOD=lslo_prune
#                        and PRESET=paper, else checkpoint_best.pt); the log and scores.md name it
#   EVAL_PAIRS=en-fr,... directions (default: all of the language set)
#   EVAL_STAGE=all|generate|score
#   EVAL_SHARD=I/N       decode only share I (0-based) of N of the directions (generate; SLURM array tasks)
#   SCORE_SPM_MODEL=FILE spBLEU with a local SentencePiece model (no download by sacrebleu);
#                        e.g. MODEL_DIR/sentencepiece.bpe.model on an offline node
# Outputs: EVAL_DIR/gen/{src}-{tgt}.gen (+ .gen.json: the checkpoint and settings that produced it),
#          EVAL_DIR/scores.tsv, scores.md, heatmap.png.  A rerun decodes only what is missing.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

CKPT=${CKPT:-$EVAL_CHECKPOINT}
BEAM=${BEAM:-5}
GEN_SUBSET=${GEN_SUBSET:-test}
GEN_MAX_TOKENS=${GEN_MAX_TOKENS:-8000}
EVAL_STAGE=${EVAL_STAGE:-all}
EVAL_SHARD=${EVAL_SHARD:-}
SCORE_SPM_MODEL=${SCORE_SPM_MODEL:-}
ALL_PAIRS=$(lslo_all_pairs)
EVAL_PAIRS=${EVAL_PAIRS:-$ALL_PAIRS}

case "$(basename "$CKPT")" in
  checkpoint_last.pt) _why="the last checkpoint$([ "$METHOD" = lslo_prune ] && echo ": the model at its final sparsity, as the reference evaluates pruning runs")" ;;
  checkpoint_best.pt) _why="the best checkpoint on the valid set" ;;
  *) _why="CKPT / EVAL_CHECKPOINT as given" ;;
esac
echo "evaluate.sh: evaluating $CKPT ($_why)" >&2

case "$EVAL_STAGE" in
  all|generate)
    if [ "${DRY_RUN:-0}" != 1 ] && [ ! -f "$CKPT" ]; then
      echo "evaluate.sh: checkpoint $CKPT is missing (CKPT)" >&2; exit 2
    fi
    cmd=("$LSLO_PYTHON" -m fairseq_lslo.cli.evaluate "$DATA_DIR" --user-dir "$USER_DIR"
      --task translation_multi_simple_epoch --lang-pairs "$ALL_PAIRS" --lang-dict "$DATA_DIR/lang_dict.txt"
      --encoder-langtok src --decoder-langtok --directions "$EVAL_PAIRS"
      --path "$CKPT" --gen-subset "$GEN_SUBSET" --beam "$BEAM" --remove-bpe sentencepiece
      --max-tokens "$GEN_MAX_TOKENS" --required-batch-size-multiple 1 --out-dir "$EVAL_DIR" --raw "$RAW_DIR")
    [ "$CPU" = 1 ] && cmd+=(--cpu)
    cmd+=($(lslo_fp16_flag))
    [ -n "$SCORE_SPM_MODEL" ] && cmd+=(--spm-model "$SCORE_SPM_MODEL")
    [ -n "$EVAL_SHARD" ] && cmd+=(--shard "$EVAL_SHARD")
    [ "$EVAL_STAGE" = generate ] && cmd+=(--no-score)
    # shellcheck disable=SC2086
    lslo_run "${cmd[@]}" ${EXTRA_GEN_ARGS:-}
    ;;
  score)
    # every direction decoded (e.g. by the shards of a SLURM array), all from CKPT: the table
    score=("$LSLO_PYTHON" -m lslo_data_prep.score --data "$DATA_DIR" --raw "$RAW_DIR" --gen-dir "$EVAL_DIR/gen"
      --out-dir "$EVAL_DIR" --pairs "$EVAL_PAIRS" --split "$GEN_SUBSET" --checkpoint "$CKPT")
    [ -n "$SCORE_SPM_MODEL" ] && score+=(--spm-model "$SCORE_SPM_MODEL")
    lslo_run "${score[@]}"
    ;;
  *) echo "evaluate.sh: EVAL_STAGE=$EVAL_STAGE: expected all, generate or score" >&2; exit 2 ;;
esac
