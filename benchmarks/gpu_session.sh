#!/usr/bin/env bash
# Every GPU measurement treeopt owes, on a lent H100/H200. A device call runs at most
# 10 minutes, so run it in two calls: `bash benchmarks/gpu_session.sh runtime` then
# `bash benchmarks/gpu_session.sh plan` (seed chart + roofline check).
# Results land in $OUT (device tool) or benchmarks/results/ (anywhere else).
#
# The GPU image has torch, transformers, typer, numpy and tqdm but not jsonschema;
# carry it as wheels (see benchmarks/README.md) in .whl/ and this script installs them.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-benchmarks/results}
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee "$out/device.txt"

part=${1:-all}
if [ "$part" = runtime ] || [ "$part" = all ]; then
# 1. Runtime: step latency vs tree size, plain decode vs HBM roofline (issue #4).
timeout 150 python3 benchmarks/decode_speed.py --measure-bandwidth \
    -o "$out/decode_speed_h100.json" 2>&1 | tail -25
timeout 300 python3 benchmarks/decode_speed.py --measure-bandwidth --compile --sizes 1,16,64 \
    -o "$out/decode_speed_h100_compile.json" 2>&1 | tail -25

fi
if [ "$part" = plan ] || [ "$part" = all ]; then
# 2. The seed's chart with MEASURED latency of random-weight 7B/13B/33B shapes (issue #6).
timeout 150 python3 benchmarks/seed_chart.py --device cuda \
    -o "$out/seed_chart_measured.json" 2>&1 | tail -15

# 3. Profiling throughput vs prefill, full Llama-7B shape (issue #5).
timeout 90 python3 benchmarks/profile_speed.py --device cuda --dtype bfloat16 \
    -o "$out/profile_speed_cuda.json" 2>&1 | tail -16

# 4. Roofline prediction vs measured step latency, Llama-7B shape (issue #9).
timeout 150 python3 benchmarks/roofline_vs_measured.py 2>&1 | tail -15
cp benchmarks/results/roofline_vs_measured_*.json "$out/" 2>/dev/null || true
fi
