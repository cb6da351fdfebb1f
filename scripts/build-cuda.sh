#!/usr/bin/env bash
# Builds call-coach with Whisper on NVIDIA GPUs (`--features cuda`, run with
# DEVICE=cuda) on a machine without a system CUDA toolkit: installs CUDA 13.0's
# compiler, runtime and cuBLAS from the Python package registry into
# ~/.cache/call-coach/cuda13 (once), and builds for the GPU generations in
# CUDA_ARCHS (default 90: H100/H200; e.g. "80;86;89;90"). The binary links
# libcudart/libcublas dynamically: the GPU host needs the CUDA 13 runtime
# libraries (a CUDA toolkit or the same packages) and a driver for CUDA 13
# (580 or later). Compiling the GPU kernels takes about 55 minutes on 2 cores
# for one architecture.
# Usage: scripts/build-cuda.sh   -> target-cuda/release/call-coach
set -euo pipefail
cd "$(dirname "$0")/.."
C="$HOME/.cache/call-coach/cuda13"
T="$C/nvidia/cu13"
if [ ! -x "$T/bin/nvcc" ]; then
  echo "== installing the CUDA 13.0 compiler, runtime and cuBLAS into $C (once)"
  python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$C" \
    nvidia-cuda-nvcc==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cublas==13.0.2.14 \
    nvidia-cuda-cccl==13.0.85 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88
fi
# The layout CMake and the linker expect: unversioned libraries, lib64, and
# link-time stand-ins for the driver (libcuda, loaded from the driver at run
# time) and culibos (only needed by static CUDA libraries).
for l in cudart cublas cublasLt; do ln -sf "lib$l.so.13" "$T/lib/lib$l.so"; done
ln -sfn lib "$T/lib64"
mkdir -p "$T/lib/stubs"
if [ ! -f "$T/lib/stubs/libcuda.so" ]; then
  work=$(mktemp -d)
  for f in cuMemUnmap cuMemSetAccess cuMemRelease cuMemMap cuMemGetAllocationGranularity cuMemCreate \
           cuMemAddressReserve cuMemAddressFree cuGetErrorString cuDeviceGetAttribute cuDeviceGet \
           cuGetErrorName cuInit cuDriverGetVersion cuCtxGetCurrent; do
    echo "int $f(void) { return 0; }"
  done > "$work/cuda.c"
  cc -shared -fPIC -Wl,-soname,libcuda.so.1 "$work/cuda.c" -o "$T/lib/stubs/libcuda.so"
  echo 'void call_coach_culibos_stub(void) {}' > "$work/culibos.c"
  cc -c -fPIC "$work/culibos.c" -o "$work/culibos.o" && ar rcs "$T/lib/stubs/libculibos.a" "$work/culibos.o"
  rm -rf "$work"
fi
export PATH="$T/bin:$PATH" CUDACXX="$T/bin/nvcc" CMAKE_CUDA_COMPILER="$T/bin/nvcc" CUDAToolkit_ROOT="$T"
export CMAKE_CUDA_ARCHITECTURES="${CUDA_ARCHS:-90}" CMAKE_CUDA_HOST_COMPILER="${CXX:-g++}"
export RUSTFLAGS="${RUSTFLAGS:-} -L native=$T/lib -L native=$T/lib/stubs"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target-cuda}"
cargo build --release --locked --features cuda
echo "built $CARGO_TARGET_DIR/release/call-coach (DEVICE=cuda); on the GPU host: LD_LIBRARY_PATH=<CUDA 13 lib dir>"
