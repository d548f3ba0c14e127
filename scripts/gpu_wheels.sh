#!/usr/bin/env bash
# Run HERE (a machine with PyPI access), in the repo root, before scripts/gpu_check.sh goes to a lent GPU:
# downloads the Python 3.12 wheels the GPU image lacks (diffusers, soundfile and their missing needs) into
# .whl/ (git-ignored through .git/info/exclude). The device call then names .whl in `carry`.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> "$(git rev-parse --git-common-dir)/info/exclude"
mkdir -p .whl
for spec in diffusers==0.42.1 importlib_metadata==8.7.0 soundfile==0.14.0 cffi==2.0.0 pycparser==2.23; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d .whl "$spec"
done
ls -l .whl
