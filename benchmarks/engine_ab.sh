#!/bin/bash
# A/B of issue 31's engine: encode_speed.py on a4d7920 (git worktree add /tmp/base a4d7920) and on this tree, alternating
root=$(cd "$(dirname "$0")/.." && pwd); base=${BASE:-/tmp/base}  # BASE: a worktree of the commit before
. "$root/.venv/bin/activate"
ARGS="--models all-MiniLM-L6-v2 --sets stsb long --batch-sizes 32 --repeats 3 --no-cold-start --no-onnx"
for round in 1 2; do
  for side in before after; do
    if [ $side = before ]; then dir=$base; else dir=$root; fi
    echo "=== round $round: $side ($dir)"
    (cd $dir && PYTHONPATH=$dir python -c "import jaxst; print('jaxst from', jaxst.__file__)" && PYTHONPATH=$dir python benchmarks/encode_speed.py $ARGS 2>&1 | grep -v Warning)
  done
done
for side in before after; do
  if [ $side = before ]; then dir=$base; else dir=$root; fi
  echo "=== int8: $side ($dir)"
  (cd $dir && PYTHONPATH=$dir python benchmarks/encode_speed.py --models all-MiniLM-L6-v2 --sets stsb long --batch-sizes 32 --repeats 3 --no-cold-start --no-onnx --dtype int8 2>&1 | grep -v Warning)
done
