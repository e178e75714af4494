#!/usr/bin/env bash
# Every GPU figure treeopt owes, in ONE device call of at most 7 minutes (issue #18).
#
#   bash benchmarks/gpu_session.sh                  # on the GPU: results in $OUT (device tool)
#   bash benchmarks/gpu_session.sh --out DIR        # anywhere else: results in DIR
#   bash benchmarks/gpu_session.sh --dry-run --out DIR   # CPU rehearsal, tiny shapes, < 2 min
#
# Other options go to benchmarks/gpu_session.py (--no-compile, --parts, --cap-scale; see its
# --help). Carried wheels in .whl/ (jsonschema, ...) are installed first when present; the
# measurements need none of them. The output is also logged to DIR/gpu_session.log.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-}
args=()
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        --out) out=${2:-}; shift ;;
        *) args+=("$1") ;;
    esac
    shift
done
if [ -z "$out" ]; then
    echo "error: give --out DIR (the device tool's \$OUT is used when set)" >&2
    exit 2
fi
mkdir -p "$out" || exit 2
python=${PYTHON:-python3}
if compgen -G ".whl/*.whl" >/dev/null; then
    $python -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
{
    # First line: what runs where (versions by metadata: no CUDA set up in this shell).
    device=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)
    $python -c "import sys; from importlib.metadata import version as v
print(f'== treeopt gpu session: torch {v(\"torch\")}, transformers {v(\"transformers\")}, '
      f'python {sys.version.split()[0]}, device {sys.argv[1]}')" "${device:-cpu}"
    command -v nvidia-smi >/dev/null && \
        nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv
    $python benchmarks/gpu_session.py --out "$out" ${args[@]+"${args[@]}"}
} 2>&1 | tee -a "$out/gpu_session.log"
exit "${PIPESTATUS[0]}"
