#!/usr/bin/env bash
# GPU checks, for a machine with a CUDA device and a CUDA build of torch already installed
# (no network needed): build dgnet._C with its CUDA kernels for this GPU, then run what only a
# GPU can check. Logs go to $OUT (or ./gpu-logs).
#   bash scripts/gpu_check.sh build         # compile the extension for the local GPU's arch
#   bash scripts/gpu_check.sh tests         # pytest -m gpu tests
#   bash scripts/gpu_check.sh bench [FILES] # GPU benchmarks (pytest -m gpu benchmarks)
#   bash scripts/gpu_check.sh profile [ARGS] # host vs device time of a training iteration, per --fused variant
#   bash scripts/gpu_check.sh train-step    # s/iteration at the spec's size: plain, --fused, --fused --compile
#   bash scripts/gpu_check.sh dali WHEELDIR # install DALI (+ deps) from local wheels
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-logs}
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
case "${1:-}" in
  build)
    cap=$($py -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
    export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$cap}
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.txt"
    $py -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$out/gpu.txt"
    MAX_JOBS=$(nproc) DGNET_BUILD_CUDA=1 $py -m pip install -q --no-build-isolation --no-deps -e . 2>&1 \
      | tee "$out/build.log" | tail -20
    $py -c "import dgnet.ops; assert dgnet.ops._lib.cuda_kernels_built(); print('CUDA kernels built')"
    ;;
  tests)
    $py -m pytest -m gpu tests -p no:cacheprovider -q -rs 2>&1 | tee "$out/gpu-tests.log" | tail -40
    ;;
  bench)
    shift
    files=${*:-benchmarks}
    $py -m pytest -m gpu $files -p no:cacheprovider -q -s --benchmark-columns=min,median,mean,rounds \
      --benchmark-json="$out/bench.json" 2>&1 | tee "$out/gpu-bench.log" | tail -80
    ;;
  train-step)
    # plain, --fused (fold off and on) and --fused --compile (CUDA graphs), fp32 and bf16, 256x128, batch 8; each
    # variant's ratio to plain is printed (issue #17's target: --fused or compiled at least 1.5x plain)
    $py -m pytest -m gpu benchmarks/bench_train_step.py -k train_step_gpu -p no:cacheprovider -q -s \
      --benchmark-columns=min,median,mean,rounds --benchmark-json="$out/train-step.json" 2>&1 \
      | tee "$out/train-step.log" | grep -E "s/iteration|ratio|passed|failed|Error" | tail -40
    ;;
  profile)
    shift
    $py benchmarks/profile_step.py --device cuda --trace "$out/traces" "$@" 2>&1 | tee "$out/profile.log" | tail -150
    ;;
  dali)
    $py -m pip install -q --no-index --no-deps --no-compile "$2"/*.whl 2>&1 | tail -5
    $py -c "import nvidia.dali as d; print('DALI', d.__version__)"
    ;;
  *)
    echo "usage: $0 build|tests|bench [FILES]|train-step|profile [ARGS]|dali WHEELDIR" >&2; exit 2 ;;
esac
