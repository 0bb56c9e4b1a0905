#!/bin/bash
# A/B of issue 31's engine: jaxst's own encode rate on a4d7920 (before: git worktree add /tmp/base a4d7920) and on
# this tree (after), alternating processes, ROUNDS rounds per text set; then encode_speed.py's int8 run per side.
root=$(cd "$(dirname "$0")/.." && pwd); base=${BASE:-/tmp/base}  # BASE: a worktree of the commit before
. "$root/.venv/bin/activate"
for set in stsb long; do
  for round in $(seq 1 "${ROUNDS:-3}"); do
    for dir in "$base" "$root"; do
      PYTHONPATH=$dir python "$root/benchmarks/encode_rate.py" --set $set 2>&1 | grep "texts/s"
    done
  done
done
for dir in "$base" "$root"; do
  echo "=== int8: $dir"
  (cd "$dir" && PYTHONPATH=$dir python benchmarks/encode_speed.py --models all-MiniLM-L6-v2 --sets stsb long \
     --batch-sizes 32 --repeats 3 --no-cold-start --no-onnx --dtype int8 2>&1 | grep -v Warning)
done
