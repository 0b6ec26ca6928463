# Sourced by the sbatch scripts.  SLURM runs a copy of the batch script, so the repository
# comes from LSLO_REPO (exported by flores_chain.sh) or the submission directory.
LSLO_REPO=${LSLO_REPO:-${SLURM_SUBMIT_DIR:-$PWD}}
source "$LSLO_REPO/recipes/common.sh"

# Run "$@" in the background; on SIGUSR1 (sbatch --signal=B:USR1@120, sent before the time
# limit or on preemption) stop it and requeue this job, which resumes from checkpoint_last.pt
# (fairseq restores --save-dir/checkpoint_last.pt before it considers --finetune-from-model).
lslo_requeueable() {
  # own process group (setsid), so that the signal reaches fairseq and not only its parent shell
  if command -v setsid >/dev/null 2>&1; then setsid "$@" & else "$@" & fi
  LSLO_CHILD=$!
  trap lslo_requeue USR1
  local rc=0
  wait "$LSLO_CHILD" || rc=$?
  while [ "$rc" -gt 128 ] && kill -0 "$LSLO_CHILD" 2>/dev/null; do rc=0; wait "$LSLO_CHILD" || rc=$?; done
  return "$rc"
}

lslo_requeue() {
  echo "$(date -u +%FT%TZ) SIGUSR1: stopping the run and requeueing job ${SLURM_JOB_ID:-?}" >&2
  kill -TERM -- "-$LSLO_CHILD" 2>/dev/null || kill -TERM "$LSLO_CHILD" 2>/dev/null || true
  wait "$LSLO_CHILD" 2>/dev/null || true
  if scontrol requeue "${SLURM_JOB_ID:?}"; then exit 0; fi
  echo "scontrol requeue failed: resubmit this job; it resumes from checkpoint_last.pt" >&2
  exit 99
}
