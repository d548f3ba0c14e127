#!/usr/bin/env bash
# Issue 15 GPU check, ONE run on a lent H100/H200 (about 5 minutes; give it timeout_s=540):
#   1. tests/test_cuda.py (bf16 + float32 generation, graph mode == eager mode, fixed buffers, training on GPU);
#   2. eval.bench on cuda, graph and eager interleaved, bf16 then float32, at 4/8/50 steps (4 s clips, 2 repeats);
#   3. eval.bench graph mode bf16 at the floor's settings (10 s clips, 3 repeats): RTF at 4 steps <= 0.05 and
#      median ratio_50_over_4 >= 11 (issue 15's GPU floors; printed under floors_passed).
# Output: runs/gpu_check/<UTC stamp>/ (env.txt, test_cuda.log, bench.log, bench_*.json, summary.txt: 7 files), copied to
# $OUT when set (the device tool brings $OUT back: copy it into runs/ of your checkout and commit what you cite).
# Before the call, HERE: scripts/gpu_wheels.sh (the GPU image lacks diffusers and soundfile); the call:
#   run(command="bash scripts/gpu_check.sh", carry=[".whl"], timeout_s=540)
set -u -o pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
DEST=runs/gpu_check/$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$DEST"
{ date -u; nvidia-smi; git rev-parse HEAD 2>/dev/null; python3 -c "import torch, sys; print(sys.version); \
print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"; } > "$DEST/env.txt" 2>&1
cat "$DEST/env.txt"
timeout 150 python3 -m pytest tests/test_cuda.py -q -x -rs 2>&1 | tee "$DEST/test_cuda.log"
echo "test_cuda exit: $?" | tee -a "$DEST/summary.txt"
for dtype in bfloat16 float32; do
  timeout 150 python3 -m eval.bench --device cuda --dtype "$dtype" --variants graph eager --steps 4 8 50 \
    --seconds 4 --repeats 2 --skip-rss --json "$DEST/bench_${dtype}.json" 2>&1 | tee -a "$DEST/bench.log"
  echo "bench $dtype exit: $?" | tee -a "$DEST/summary.txt"
done
timeout 120 python3 -m eval.bench --device cuda --dtype bfloat16 --variants graph --steps 4 50 --seconds 10 \
  --repeats 3 --skip-rss --json "$DEST/bench_floor.json" 2>&1 | tee -a "$DEST/bench.log"
echo "bench floor exit: $?" | tee -a "$DEST/summary.txt"
python3 - "$DEST" <<'PY' | tee -a "$DEST/summary.txt"
import json, pathlib, sys
for f in sorted(pathlib.Path(sys.argv[1]).glob("bench_*.json")):
    r = json.loads(f.read_text())
    for name, v in (r.get("variants") or {r["variant"]: r}).items():
        print(f"{f.name} {name}: device {v['device']} dtype {v['dtype']} mode {v['mode']} rtf {v['rtf']} "
              f"ratio_50_over_4 median {v.get('ratio_50_over_4')} per repeat {v.get('ratio_50_over_4_per_repeat')}")
    print(f"{f.name} floors_passed {r['floors_passed']} uncertain {r.get('floors_uncertain')} (gpu {r['hardware'].get('gpu')})")
PY
if [ -n "${OUT:-}" ]; then cp "$DEST"/* "$OUT"/; fi
echo "output in $DEST"
