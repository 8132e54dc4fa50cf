#!/usr/bin/env bash
# The GPU acceptance check: one command, one table.
#
#   benchmarks/gpu_check.sh OUT_DIR              # one H100/H200-class GPU; aims at < 8 minutes
#   benchmarks/gpu_check.sh OUT_DIR --cpu-smoke  # the same pieces at tiny sizes on CPU, 3 steps (~3.5 min on 2 cores)
#
# Written and smoke-tested on CPU only: it has not yet run on a GPU. Its GPU time is an estimate (8 fits of
# ~30-90 s, two cold compilations, the GPU tests, the backbone benchmark); if it runs long, lower MATRIX/STEPS.
#
# It runs, in order:
#   1. the GPU-marked tests (pytest -m gpu; all skip without CUDA);
#   2. `mot fit` of the +speech setting (configs/speech/{mot,dense}.yaml) at the 443M preset
#      (configs/model/chameleon-443m.yaml, --data.seq_len 4096), bf16-mixed, STEPS steps, under one device
#      (configs/trainer/gpu.yaml), FSDP2 (configs/trainer/fsdp2.yaml on 1 device) and FSDP1
#      (configs/trainer/fsdp1.yaml on 1 device), each with model.compile off and on;
#   3. the backbone benchmark at 443M, bf16: dense vs MoT (per-tower loop) vs MoT (one torch._grouped_mm)
#      vs the tutorial's mask routing; then the 7B MoT built under FSDP2 on the meta device, sharded and
#      materialised on the GPU (no step): time and memory (benchmarks/meta_build.py, OUT_DIR/meta_build.json);
#   4. the summary: OUT_DIR/gpu_check.md (step time, tokens/s, MFU, peak memory, loss after the last step).
#
# Every run's log is OUT_DIR/runs/<name>.log, its measurements OUT_DIR/runs/<name>.json (written by the
# StepProbe callback of benchmarks/gpu_check.py), its exit status OUT_DIR/runs/<name>.status.
# A failed run is a row marked FAILED in the table, not the end of the check.
#
# Knobs (environment): MATRIX=core|full (core: dense+MoT on one device, MoT alone under FSDP2 and FSDP1;
# full: both settings everywhere, 12 runs), STEPS (30), SKIP (first steps left out of the median step time:
# compilation, warm-up; 5), BATCH (rows of SEQ tokens per step; 8), SEQ (4096),
# WORKERS (data loader processes; 8), RUN_TIMEOUT (seconds per run; 240), PEAK_TFLOPS (MFU denominator
# for a GPU the table in mot_lightning/callbacks/throughput.py does not know).
set -uo pipefail

OUT=${1:?usage: benchmarks/gpu_check.sh OUT_DIR [--cpu-smoke]}
MODE=${2:-gpu}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$OUT/runs"
OUT=$(cd "$OUT" && pwd)
cd "$ROOT"
export PYTHONPATH="$ROOT/benchmarks${PYTHONPATH:+:$PYTHONPATH}"  # StepProbe for --trainer.callbacks
START=$(date +%s)
stamp() { echo "[gpu_check +$(( $(date +%s) - START ))s] $*"; }

if [ "$MODE" = "--cpu-smoke" ]; then
  STEPS=${STEPS:-3}; SKIP=${SKIP:-1}; BATCH=${BATCH:-2}; SEQ=${SEQ:-256}; WORKERS=${WORKERS:-0}
  SIZE=(--model.backbone.dim 32 --model.backbone.n_layers 2 --model.backbone.n_heads 4)
  DEVICE=(--trainer.accelerator cpu --trainer.devices 1 --trainer.precision bf16-mixed)
  BACKBONE=(--quick --steps 3 --dtype fp32)
else
  STEPS=${STEPS:-30}; SKIP=${SKIP:-5}; BATCH=${BATCH:-8}; SEQ=${SEQ:-4096}; WORKERS=${WORKERS:-8}
  SIZE=(--config configs/model/chameleon-443m.yaml)
  DEVICE=(--trainer.accelerator gpu --trainer.devices 1 --trainer.precision bf16-mixed)
  BACKBONE=(--device cuda --dtype bf16 --preset chameleon-443m --seq-len 4096 --batch 4 --steps 10 --warmup 2)
  python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device: use --cpu-smoke'" || exit 1
fi
MATRIX=${MATRIX:-core}
RUN_TIMEOUT=${RUN_TIMEOUT:-240}
DATA=(--data.demo.dir "$OUT/data/demo" --data.tokenizer_files.dir "$OUT/data/tokenizers")

{ python -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__,
'cuda', torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"
  command -v nvidia-smi >/dev/null && nvidia-smi; } > "$OUT/env.txt" 2>&1
stamp "$(head -1 "$OUT/env.txt")"

# 0. demo corpus and fitted tokenizers for every run (on CPU, in the background while the tests run)
stamp "demo corpus and tokenizers (background)"
python -m mot_lightning.commands fit --config configs/speech/mot.yaml --trainer.accelerator cpu --trainer.devices 1 \
  --trainer.precision 32-true --trainer.max_steps 1 --trainer.limit_val_batches 0 --trainer.num_sanity_val_steps 0 \
  --model.backbone.dim 32 --model.backbone.n_layers 1 --data.loader.num_workers 0 \
  --checkpoint.save_last false --checkpoint.save_top_k 0 \
  --trainer.logger.init_args.save_dir "$OUT/data/prep_run" "${DATA[@]}" > "$OUT/data_prep.log" 2>&1 &
PREP=$!

# 1. GPU-marked tests
stamp "GPU-marked tests"
python -m pytest -q -p no:cacheprovider -m gpu tests > "$OUT/gpu_tests.log" 2>&1
stamp "$(tail -1 "$OUT/gpu_tests.log")"

# 2. training runs
wait $PREP || { stamp "data preparation failed: $OUT/data_prep.log"; exit 1; }

fit() {  # fit NAME SETTING STRATEGY_ARGS... : one bf16 run, STEPS steps, no validation, no checkpoint files
  local name=$1 setting=$2; shift 2
  stamp "fit $name"
  timeout "$RUN_TIMEOUT" python -m mot_lightning.commands fit --config "configs/speech/$setting.yaml" "${SIZE[@]}" \
    "${DEVICE[@]}" "$@" --data.seq_len "$SEQ" --data.batch_size "$BATCH" --data.loader.num_workers "$WORKERS" \
    --trainer.max_steps "$STEPS" --trainer.limit_val_batches 0 --trainer.num_sanity_val_steps 0 \
    --trainer.log_every_n_steps 1 --trainer.enable_progress_bar false \
    --checkpoint.save_last false --checkpoint.save_top_k 0 \
    --trainer.logger.init_args.save_dir "$OUT/runs/$name" "${DATA[@]}" \
    "--trainer.callbacks+={\"class_path\": \"gpu_check.StepProbe\", \"init_args\": {\"out_file\": \"$OUT/runs/$name.json\", \"skip_steps\": $SKIP}}" \
    > "$OUT/runs/$name.log" 2>&1
  local rc=$?
  if [ $rc -eq 0 ]; then echo ok; elif [ $rc -eq 124 ]; then echo "TIMEOUT ${RUN_TIMEOUT}s"; else echo "FAILED rc=$rc"; fi \
    > "$OUT/runs/$name.status"
  stamp "  $name: $(cat "$OUT/runs/$name.status")"
}

# the trainer YAMLs adapted to one device (DEVICE after each --config: later arguments win)
SINGLE=(--config configs/trainer/gpu.yaml "${DEVICE[@]}")
FSDP2=(--config configs/trainer/fsdp2.yaml "${DEVICE[@]}" --trainer.strategy.init_args.data_parallel_size 1)
FSDP1=(--config configs/trainer/fsdp1.yaml "${DEVICE[@]}")
SETTINGS_FSDP=(mot); [ "$MATRIX" = full ] && SETTINGS_FSDP=(mot dense)
for compile in eager compile; do
  flag=(--model.compile "$([ $compile = compile ] && echo true || echo false)")
  for setting in mot dense; do fit "${setting}_single_$compile" "$setting" "${SINGLE[@]}" "${flag[@]}"; done
  for setting in "${SETTINGS_FSDP[@]}"; do
    fit "${setting}_fsdp2_$compile" "$setting" "${FSDP2[@]}" "${flag[@]}"
    if [ "$MODE" = "--cpu-smoke" ]; then
      echo "skipped: FSDP1 needs CUDA" > "$OUT/runs/${setting}_fsdp1_$compile.status"  # Lightning refuses CPU
    else
      fit "${setting}_fsdp1_$compile" "$setting" "${FSDP1[@]}" "${flag[@]}"
    fi
  done
done

# 3. backbone benchmark: dense vs MoT (loop) vs MoT (grouped_mm) vs tutorial routing
stamp "backbone benchmark"
if python benchmarks/backbone.py "${BACKBONE[@]}" --cases dense,mot,mot_grouped_mm,tutorial \
    --out "$OUT/backbone.json" > "$OUT/backbone.log" 2>&1; then echo ok; else echo "FAILED rc=$?"; fi \
  > "$OUT/backbone.status"
stamp "  backbone: $(cat "$OUT/backbone.status")"

# 3b. the 7B preset as a 3-modality MoT (19.9B parameters) built as FSDP2 builds it: on the meta device,
# sharded (one rank), materialised on the GPU (benchmarks/meta_build.py; fp32 where it fits, else bf16); no step
stamp "7B MoT build: meta device, fully_shard, materialise"
if [ "$MODE" = "--cpu-smoke" ]; then BUILD=(--preset cpu-small --device cpu); else
  BUILD=(--preset chameleon-7b --modalities 3 --device cuda); fi
if timeout "${BUILD_TIMEOUT:-480}" python benchmarks/meta_build.py "${BUILD[@]}" --out "$OUT/meta_build.json" \
    > "$OUT/meta_build.log" 2>&1; then echo ok; else echo "FAILED rc=$?"; fi > "$OUT/meta_build.status"
stamp "  meta build: $(cat "$OUT/meta_build.status")"

# 4. one table (meta_build.json ends without a newline: echo one before the closing fence)
stamp "summary"
python benchmarks/gpu_check.py summarize "$OUT"
{ echo; echo "## Meta-device build ($(cat "$OUT/meta_build.status"))"; echo; echo '```'
  cat "$OUT/meta_build.json" 2>/dev/null; echo; echo '```'; } >> "$OUT/gpu_check.md"
stamp "done; table in $OUT/gpu_check.md"
