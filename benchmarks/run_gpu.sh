#!/usr/bin/env bash
# One GPU session in one command: CUDA correctness tests, a pipeline run on the GPU, and both benchmarks.
#
# Usage: benchmarks/run_gpu.sh OUT_DIR [STAGE ...]
#   stages (default: all, in this order): tests trainer quickstart unet mobilenet resnet train_step host kernels
#   KERNEL_ARGS   arguments of `python -m benchmarks.kernels` (default: all sizes and models, bool and packed
#                 masks; e.g. "--sizes 64M,1G --models resnet50 --ops l0_grad_mask,apply_masks")
#   STEP_ARGS     arguments of `python -m benchmarks.train_step` (e.g. --profile fused_finetune)
#   PYTHON        interpreter (default: python3)
# Each stage runs under its own time limit (seconds, env STAGE_LIMIT_<stage>) so that one stuck stage cannot
# use up the session. All stage logs go to OUT_DIR/session.log; the benchmark JSONs and the GPU pipeline run's
# report (quickstart-report.json) to OUT_DIR.
set -u
out=${1:?usage: benchmarks/run_gpu.sh OUT_DIR [STAGE ...]}
shift
stages=${*:-tests trainer quickstart unet mobilenet resnet train_step host kernels}
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 TRITON_INTERPRET=0 WANDB_MODE=disabled
mkdir -p "$out"

stage() {
  local name=$1 default_limit=$2
  shift 2
  local var="STAGE_LIMIT_$name" limit start rc
  limit=${!var:-$default_limit}
  echo "=== $name (limit ${limit}s): $*"
  start=$(date +%s)
  echo "=== $name: $*" >>"$out/session.log"
  timeout "$limit" "$@" >/tmp/stage.log 2>&1
  rc=$?
  cat /tmp/stage.log >>"$out/session.log"
  echo "=== $name: exit $rc after $(($(date +%s) - start)) s" | tee -a "$out/session.log"
  tail -n "${TAIL_LINES:-12}" /tmp/stage.log
}

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
$py -c 'import torch, triton, timm, deepspeed; print("torch", torch.__version__, "triton", triton.__version__,
"timm", timm.__version__, "deepspeed", deepspeed.__version__, torch.cuda.get_device_name())' 2>&1 | tail -n 1

for s in $stages; do
  case $s in
    tests) stage tests 360 $py -m pytest -q -m gpu -p no:cacheprovider tests/kernels ;;
    trainer) stage trainer 240 $py -m pytest -q -m gpu -p no:cacheprovider tests/core/test_gpu_trainer.py ;;
    quickstart) stage quickstart 120 $py -m sparsetrain run configs/quickstart.yaml train.device=cuda \
      tracking.mode=disabled out_dir=/tmp/quickstart-run
      cp /tmp/quickstart-run/report.json "$out/quickstart-report.json" ;;
    unet) stage unet 200 $py -m sparsetrain run configs/unet_synthetic.yaml train.device=cuda \
      tracking.mode=disabled out_dir=/tmp/unet-run
      cp /tmp/unet-run/report.json "$out/unet-report.json" ;;
    mobilenet) stage mobilenet 200 $py -m sparsetrain run configs/mobilenetv3_synthetic.yaml train.device=cuda \
      tracking.mode=disabled out_dir=/tmp/mobilenet-run
      cp /tmp/mobilenet-run/report.json "$out/mobilenet-report.json" ;;
    resnet)  # timm resnet18 recipe (bf16, ZeRO 2, fused kernel) on digits resampled to 32x32, a few epochs
      $py -m sparsetrain.data.make_npz digits /tmp/digits32.npz --size 32 >/dev/null
      stage resnet 200 $py -m sparsetrain run configs/resnet18_cifar.yaml data.source=npz data.path=/tmp/digits32.npz \
        data.num_workers=0 train.batch_size=128 optim.warmup_steps=20 phases.dense.epochs=6 phases.sparsify.epochs=6 \
        phases.finetune.epochs=3 deepspeed.zero_stage=2 regularizer.alpha0=2e-6 train.device=cuda \
        tracking.mode=disabled out_dir=/tmp/resnet-run
      cp /tmp/resnet-run/report.json "$out/resnet-report.json" ;;
    train_step) stage train_step 150 $py -m benchmarks.train_step ${STEP_ARGS:-} --out "$out" ;;
    host) stage host 60 $py -m benchmarks.host_overhead ;;
    # Default: l0_grad_mask_ with bool and packed masks (add --ops l0_grad_mask,apply_masks for both ops).
    kernels) stage kernels 700 $py -m benchmarks.kernels ${KERNEL_ARGS:-} --out "$out" ;;
    *) echo "unknown stage $s" >&2; exit 2 ;;
  esac
done
