#!/usr/bin/env bash
# The experiments launcher: E0, E2, E4 (and the Flow variants) over several training seeds on one
# LeRobot dataset, every checkpoint evaluated closed-loop on the same LIBERO initial states, one
# report with per-seed and pooled results.
# "fplus" (in this file's name and the default output folder) is the research notes' name for this set:
# their "Model F", the world-memory policy (E2), plus its baseline E0 and its variants E4 and Flow.
#
#   DATASET=runs/demo/data/libero_spatial SEEDS="0 1" scripts/run_fplus_experiments.sh
#
# Settings (environment variables):
#   DATASET           LeRobot v3 dataset root (required)
#   INSTRUCTION_KEY   where the instruction lives (default: task, as in LeRobot LIBERO data)
#   EXPERIMENTS       presets to run (default: "E0 E2 E4 E0-Flow E2-Flow")
#   SEEDS             training seeds (default: "0 1 2")
#   COC_JSONL         chain-of-causation annotations for E4 (default: $DATASET/coc.jsonl)
#   OUT               output folder (default: runs/fplus, "fplus" as above)
#   SUITE, TASKS, N_EPISODES, WORKERS   closed-loop evaluation (defaults: libero_spatial, all tasks,
#                                       all 50 initial states as in the public protocol, 2)
#   MAX_EPOCHS, BATCH_SIZE              training budget (defaults: 5, 8, as in the research notes)
#   TRAIN_ARGS, EVAL_ARGS               extra flags passed through
#   PY                python to use (default: the repository's .venv/bin/python, found next to this
#                     script, when it exists, else python3; no virtual environment needs to be active)
#   WORLD_MODALITY_TRACEBACK=1          a failed check shows its Python traceback, not just the one-line error
set -euo pipefail

die() { printf '\n*** ERROR: %s\n\n' "$*" >&2; exit 2; }

[ -n "${DATASET:-}" ] || die "set DATASET to a LeRobot dataset root (e.g. DATASET=runs/demo/data/libero_spatial)"
INSTRUCTION_KEY=${INSTRUCTION_KEY:-task}
EXPERIMENTS=${EXPERIMENTS:-"E0 E2 E4 E0-Flow E2-Flow"}
SEEDS=${SEEDS:-"0 1 2"}
COC_JSONL=${COC_JSONL:-$DATASET/coc.jsonl}
OUT=${OUT:-runs/fplus}
SUITE=${SUITE:-libero_spatial}
TASKS=${TASKS:-}
N_EPISODES=${N_EPISODES:-}
WORKERS=${WORKERS:-2}
MAX_EPOCHS=${MAX_EPOCHS:-5}
BATCH_SIZE=${BATCH_SIZE:-8}
TRAIN_ARGS=${TRAIN_ARGS:-}
EVAL_ARGS=${EVAL_ARGS:-}
if [ -z "${PY:-}" ]; then
  # The project's environment (`make setup` creates it), found from this script's own location, so the
  # launcher works from any folder and in a shell where the environment is not activated.
  root=$(CDPATH='' cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
  if [ -x "$root/.venv/bin/python" ]; then PY="$root/.venv/bin/python"; else PY=python3; fi
fi
use_project_python="set PY to the project's python (.venv/bin/python, which \`make setup\` creates)"
command -v "$PY" >/dev/null 2>&1 || die "PY=$PY cannot be run; $use_project_python"

# A dataset whose instruction is not under INSTRUCTION_KEY would train task-agnostic policies
# (0% success): check before anything trains. A bad dataset, or a python without the package, prints
# one line (and its traceback only with WORLD_MODALITY_TRACEBACK=1): exit 3 is the python, 2 the dataset.
set +e
check=$("$PY" - "$DATASET" "$INSTRUCTION_KEY" <<'PYCHECK'
import os
import sys

show_traceback = bool(os.environ.get("WORLD_MODALITY_TRACEBACK"))
try:
    from world_modality.errors import USER_ERRORS
    from world_modality.data.lerobot import load_dataset
except ImportError as e:
    if show_traceback:
        raise
    print(f"it cannot import the world_modality package ({e})")
    sys.exit(3)
root, key = sys.argv[1], sys.argv[2]
try:
    ds = load_dataset(root, instruction_key=key)
except USER_ERRORS as e:
    if show_traceback:
        raise
    print(" ".join(str(e).split()))
    sys.exit(2)
print(f"[launcher] {root}: {len(ds.episodes)} episodes, {len(set(ds.instructions))} instructions under {key!r}")
PYCHECK
)
rc=$?
set -e
case $rc in
  0) printf '%s\n' "$check";;
  3) die "PY=$PY: $check; $use_project_python";;
  *) die "dataset check failed for DATASET=$DATASET INSTRUCTION_KEY=$INSTRUCTION_KEY:" \
       "${check:-see the traceback above}";;
esac

case " $EXPERIMENTS " in
  *" E4 "*) [ -f "$COC_JSONL" ] || die "E4 needs chain-of-causation annotations: $COC_JSONL does not exist \
(set COC_JSONL or drop E4 from EXPERIMENTS)";;
esac

task_flag=()
[ -n "$TASKS" ] && task_flag=(--tasks "$TASKS")
[ -n "$N_EPISODES" ] && task_flag+=(--n_episodes "$N_EPISODES")
runs=()
for seed in $SEEDS; do
  for exp in $EXPERIMENTS; do
    run="$OUT/$exp-seed$seed"
    extra=()
    [ "$exp" = E4 ] && extra=(--coc_jsonl "$COC_JSONL")
    echo "[launcher] train $exp seed $seed -> $run"
    # shellcheck disable=SC2086
    "$PY" -m world_modality.train --preset "$exp" --dataset "$DATASET" --instruction_key "$INSTRUCTION_KEY" \
      --seed "$seed" --max_epochs "$MAX_EPOCHS" --batch_size "$BATCH_SIZE" --output_dir "$run" "${extra[@]}" $TRAIN_ARGS
    echo "[launcher] evaluate $exp seed $seed on $SUITE"
    # shellcheck disable=SC2086
    "$PY" -m world_modality.eval_libero --checkpoint "$run" --suite "$SUITE" \
      --workers "$WORKERS" "${task_flag[@]}" $EVAL_ARGS
    runs+=("$run")
  done
done

"$PY" -m world_modality.cli report "${runs[@]}" --out "$OUT/report"
