#!/usr/bin/env bash
# The GPU figures in one prepared run (under 8 minutes on one H100/H200):
#
#   scripts/device_check.sh fetch   # here, with PyPI: what the GPU image lacks -> .whl/
#   scripts/device_check.sh         # there (carry .whl): the gpu tests, then
#                                   # scripts/bench_device.py on the first GPU; the JSON
#                                   # of figures goes to $OUT/device_check.json
#
# The GPU image has torch, numpy, pandas, pyarrow, scikit-learn, typer, rich, safetensors
# and matplotlib but not zarr, deltalake or jsonschema, and nothing can be fetched there:
# `fetch` packs those for its Python 3.12 into .whl/site.tar.xz (git-ignored, ~45 MB).
# Extra arguments go to bench_device.py (e.g. --conv-epochs 1).
set -euo pipefail
cd "$(dirname "$0")/.."
MISSING="zarr==3.1.6 numcodecs==0.16.6 donfig google-crc32c deltalake==1.6.6 arro3-core deprecated
jsonschema jsonschema-specifications referencing rpds-py attrs"

if [[ "${1:-}" == "fetch" ]]; then
    # wheels for the GPU image's Python 3.12, unpacked into one site folder and packed with
    # xz: deltalake's wheel alone is 52 MB, over what a device call carries (64 MiB)
    rm -rf .whl /tmp/bnnctl-wheels /tmp/bnnctl-site && mkdir -p .whl /tmp/bnnctl-site
    for pkg in $MISSING; do
        python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
            --implementation cp --platform manylinux_2_28_x86_64 \
            --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            --platform any -d /tmp/bnnctl-wheels "$pkg"
    done
    for w in /tmp/bnnctl-wheels/*.whl; do unzip -q -o "$w" -d /tmp/bnnctl-site; done
    tar -C /tmp/bnnctl-site -cf - . | xz -6 -T0 > .whl/site.tar.xz
    ls -l .whl
    exit 0
fi

if [[ -f .whl/site.tar.xz ]]; then
    mkdir -p /tmp/site && tar -C /tmp/site -xJf .whl/site.tar.xz
    export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
# the GPU tests (marked gpu) first: a wrong answer matters more than a slow one
python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_device.py || echo "gpu tests FAILED"
python3 scripts/bench_device.py --device "${DEVICE:-cuda}" \
    ${OUT:+--out "$OUT/device_check.json"} "$@"
