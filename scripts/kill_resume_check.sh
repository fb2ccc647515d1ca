#!/usr/bin/env bash
# kill -9 guarantees (docs/reliability.md#kill-and-resume-guarantees), checked with real processes:
#   1. train a tiny run straight; train it again and `kill -9` it in the middle of an epoch; resume it
#      with --resume: the final weights must equal the straight run's (prints max |diff|, expect 0);
#   2. `kill -9` a running `protloc predict`: no output file may appear.
# Usage: bash scripts/kill_resume_check.sh [WORKDIR]   (about 1-3 minutes on 2 CPU cores)
set -u
HERE=$(cd "$(dirname "$0")/.." && pwd)
W=${1:-$(mktemp -d)}
mkdir -p "$W" && cd "$W" || exit 1
rm -rf data straight resumed cache sub.csv
export PROTLOC_CACHE_DIR="$W/cache" PYTHONPATH="$HERE/src:$HERE/tests${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python}
PROTLOC=("$PY" -c "import sys; from protloc.cli import main; sys.exit(main(sys.argv[1:]))")  # $! is its PID
$PY -c "from helpers import make_tiny_dataset; make_tiny_dataset('data', n=60, size=32)"
ARGS="--csv data/train.csv --images data/train --model test_resnet --pretrained none --size 32 --epochs 4
      --batch-size 8 --threads 1 --quiet --no-near-dup"
"${PROTLOC[@]}" train $ARGS --out straight > straight.log 2>&1 || { echo "straight run failed"; exit 1; }
"${PROTLOC[@]}" train $ARGS --out resumed > killed.log 2>&1 &
pid=$!
metrics=resumed/folds/fold0/metrics.csv
for _ in $(seq 1 1500); do  # wait for two finished epochs, then kill inside the third
  if [ -f $metrics ] && [ "$(wc -l < $metrics)" -ge 3 ]; then break; fi
  sleep 0.2
done
sleep 0.3
kill -9 $pid; wait $pid 2>/dev/null
echo "train killed with -9 after $(($(wc -l < $metrics) - 1)) finished epochs (models written: $(ls resumed/models 2>/dev/null | wc -l))"
"${PROTLOC[@]}" train $ARGS --out resumed --resume > resumed.log 2>&1 || { echo "resume failed"; exit 1; }
$PY - <<'PY'
import torch
a = torch.load("straight/models/fold0.pt", weights_only=True)["state_dict"]
b = torch.load("resumed/models/fold0.pt", weights_only=True)["state_dict"]
print("resumed vs straight: max |diff| of the final weights =", max(float((a[k].float() - b[k].float()).abs().max()) for k in a))
PY
"${PROTLOC[@]}" predict straight --images data/train --out sub.csv --tta d4 --batch-size 1 --no-progress \
    > predict.log 2>&1 &
pid=$!
sleep 8
kill -9 $pid; wait $pid 2>/dev/null
if grep -q "^wrote" predict.log; then
  echo "predict finished before the kill: rerun on a slower machine or a larger set"
else
  echo "predict killed with -9 while predicting: $(ls -a | grep -c 'sub\.csv') files named like sub.csv (expect 0)"
fi
