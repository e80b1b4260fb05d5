#!/usr/bin/env bash
# The experiments launcher: E0, E2, E4 (and the Flow variants) over several training seeds on one
# LeRobot dataset, every checkpoint evaluated closed-loop on the same LIBERO initial states, one
# report with per-seed and pooled results.
#
#   DATASET=runs/demo/data/libero_spatial SEEDS="0 1" scripts/run_fplus_experiments.sh
#
# Settings (environment variables):
#   DATASET           LeRobot v3 dataset root (required)
#   INSTRUCTION_KEY   where the instruction lives (default: task, as in LeRobot LIBERO data)
#   EXPERIMENTS       presets to run (default: "E0 E2 E4 E0-Flow E2-Flow")
#   SEEDS             training seeds (default: "0 1 2")
#   COC_JSONL         chain-of-causation annotations for E4 (default: $DATASET/coc.jsonl)
#   OUT               output folder (default: runs/fplus)
#   SUITE, TASKS, N_EPISODES, WORKERS   closed-loop evaluation (defaults: libero_spatial, all tasks,
#                                       all 50 initial states as in the public protocol, 2)
#   MAX_EPOCHS, BATCH_SIZE              training budget (defaults: 5, 8, as in the research notes)
#   TRAIN_ARGS, EVAL_ARGS               extra flags passed through
#   PY                python to use (default: python)
set -euo pipefail

: "${DATASET:?set DATASET to a LeRobot dataset root}"
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
PY=${PY:-python}

die() { printf '\n*** ERROR: %s\n\n' "$*" >&2; exit 2; }

# A dataset whose instruction is not under INSTRUCTION_KEY would train task-agnostic policies
# (0% success): check before anything trains.
"$PY" - "$DATASET" "$INSTRUCTION_KEY" <<'PYCHECK' || die "dataset check failed for DATASET=$DATASET INSTRUCTION_KEY=$INSTRUCTION_KEY (see above)"
import sys
from world_modality.data.lerobot import load_dataset
ds = load_dataset(sys.argv[1], instruction_key=sys.argv[2])
print(f"[launcher] {sys.argv[1]}: {len(ds.episodes)} episodes, {len(set(ds.instructions))} instructions under {sys.argv[2]!r}")
PYCHECK

case " $EXPERIMENTS " in
  *" E4 "*) [ -f "$COC_JSONL" ] || die "E4 needs chain-of-causation annotations: $COC_JSONL does not exist (set COC_JSONL or drop E4 from EXPERIMENTS)";;
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
