#!/usr/bin/env bash
# The CUDA checks and the GPU figures of the benches, for a machine with a GPU (about 10 minutes).
# Run from the repository root after `make install`:  bash benchmarks/gpu_check.sh
# Prints the device, the host-device syncs of one training step, `refdet bench --preset seed --preset fast`
# at 640 px (fast resolves to bf16 + compile + fused AdamW on CUDA) with the projected epoch of the original's
# workload, and the inference bench on the GPU (torch fp32 and bf16, onnxruntime with CUDA's provider where the
# installed onnxruntime has it: the JSON's "providers" says which ran) with a checkpoint of a short training run.
set -euo pipefail
PY=${PY:-.venv/bin/python}
OUT=${OUT:-outputs/gpu_check}
DATA=${DATA:-data/gpu_demo}
mkdir -p "$OUT"
$PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0), 'torch', torch.__version__, 'bf16', torch.cuda.is_bf16_supported())"
[ -f "$DATA/splits.json" ] || $PY -m refdet_core.cli data demo "$DATA" --videos 8 --frames 150
$PY -m pytest -q -p no:randomly tests/test_sync.py tests/test_trainer.py::test_resume_continues_exactly
timeout 120 $PY benchmarks/cuda_sync_check.py "$DATA" | tee "$OUT/sync.txt"
printf 'data_root: %s\nimg_size: 640\ndevice: cuda\n' "$DATA" > "$OUT/bench_params.yaml"
timeout 360 $PY -m refdet_core.cli bench --preset seed --preset fast -p "$OUT/bench_params.yaml" --episodes 20 --repeats 3 --json \
  | tee "$OUT/bench.json"
$PY - "$OUT/bench.json" <<'PYEOF'
import json, sys
r = json.load(open(sys.argv[1]))
for name, p in r["presets"].items():
    print(f"{name}: {p['episodes_per_s']:.2f} episodes/s, original's epoch projected {p['epoch_s_projected']:.0f} s, "
          f"{r['speedup'].get(name, float('nan')):.1f}x seed")
PYEOF
# whole-video inference on the GPU: a short training of the demo recipe gives the checkpoint (its ST-IoU says
# nothing; the frames/s and the difference from torch fp32 do)
sed -e "s#^data_root:.*#data_root: $DATA#" -e 's/^epochs:.*/epochs: 1/' -e 's/^episodes_per_epoch:.*/episodes_per_epoch: 8/' \
  -e 's/^support_variants:.*/support_variants: 1/' -e 's/^warmup_steps:.*/warmup_steps: 2/' \
  params/demo/05_train_stage2.yaml > "$OUT/train_params.yaml"
printf 'device: cuda\n' >> "$OUT/train_params.yaml"
timeout 300 $PY -m refdet_core.cli train -p "$OUT/train_params.yaml" -o "$OUT/train" --force > "$OUT/train.log" 2>&1
timeout 300 $PY -m refdet_core.cli bench --inference --ckpt "$OUT/train/checkpoint" --data "$DATA" --device cuda \
  --backend torch --backend torch-bf16 --backend onnxruntime --detect-every 1 --detect-every 2 --json | tee "$OUT/inference.json"
