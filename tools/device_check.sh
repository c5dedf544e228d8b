#!/usr/bin/env bash
# The GPU checks, for a lent device machine (no network there; Python 3.12 with CUDA torch):
#   1. examples/device_parity.py --device cuda: every source's statistics and weight, CPU against CUDA
#   2. examples/mujoco_cost.py --device cuda: per-env-step wall time of the benchmark's cells, networks on the GPU
# The packages torch's image lacks travel as wheels in .whl (carry it): see docs/contributing.md.
#   bash tools/device_check.sh OUT_DIR [STEPS]        (DEVICE=cpu runs the same on a machine without a GPU)
set -uo pipefail
out=${1:?usage: tools/device_check.sh OUT_DIR [STEPS]}
steps=${2:-10240}
device=${DEVICE:-cuda}
mkdir -p "$out"
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
fi
# the repo's two packages without installing them: hybrid_pg as it is, envs/ under its import name
mkdir -p /tmp/pkgs && ln -sfn "$PWD/envs" /tmp/pkgs/hybrid_pg_envs
export PYTHONPATH="$PWD:/tmp/pkgs:/tmp/site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 MUJOCO_GL=egl
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.txt" 2>&1
python3 examples/device_parity.py --device "$device" --out "$out/parity.txt" 2>&1 | tee "$out/parity.log"
parity=${PIPESTATUS[0]}
python3 examples/mujoco_cost.py --device "$device" --steps "$steps" --repeats 2 --cells ppo reinforce hybrid hybrid_mujoco 2>&1 | tee "$out/cost_$device.txt"
[ "$device" = cpu ] || python3 examples/mujoco_cost.py --device cpu --steps "$steps" --repeats 2 --cells ppo reinforce hybrid hybrid_mujoco 2>&1 | tee "$out/cost_cpu.txt"
exit "$parity"
