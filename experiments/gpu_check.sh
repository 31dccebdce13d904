#!/usr/bin/env bash
# One call for a machine with a CUDA GPU: the GPU parity cases, the float32/float64 parity tables, a
# benchmark of every preset against PyTorch on the GPU, the CPU's data-parallel scaling from 1 to 16
# workers (and MPI ranks, when mpi4py is installed), and one epoch of cnn-bn trained with `cnnx train --device gpu`. Everything it prints also goes to files under OUT_DIR.
#
#   experiments/gpu_check.sh [OUT_DIR] [DATA_DIR]
#
# OUT_DIR defaults to gpu-check/ (or $OUT when set); DATA_DIR (the four Fashion-MNIST IDX files)
# defaults to the usual search order. Needs cnnx installed with CuPy, and a CUDA build of PyTorch for
# the comparison. Keep CUPY_TF32 unset: cnnx's float32 bounds assume full float32 products.
set -u -o pipefail
out=${1:-${OUT:-gpu-check}}
data=${2:-}
mkdir -p "$out"
python=${PYTHON:-python}
status=0
step() {  # step NAME COMMAND...: run it, keep its output in $out/NAME.txt, remember a failure
    local name=$1
    shift
    echo "== $name: $*" | tee "$out/$name.txt"
    "$@" 2>&1 | tee -a "$out/$name.txt"
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc" | tee -a "$out/$name.txt"
    [ "$rc" -eq 0 ] || status=1
}
unset CUPY_TF32
step info "$python" -m cnnx info
step gpu-tests "$python" -m pytest tests -m gpu -rs -q --durations=10 -p no:cacheprovider
step parity-tables "$python" tests/test_parity.py
for model in seed mlp seed-dropout cnn-bn vgg-bn resnet gru; do
    step "bench-$model" "$python" -m cnnx bench --device gpu --model "$model" --batch-size 128 \
        --compare torch --steps 30 --warmup 5 --repeats 3
done
# The CPU's cores, for the data-parallel scaling table (issue 24): cnnx's workers and PyTorch's threads
# follow OPENBLAS_NUM_THREADS / OMP_NUM_THREADS.
for workers in 1 2 4 8 16; do
    step "cpu-workers-$workers" env OPENBLAS_NUM_THREADS="$workers" OMP_NUM_THREADS="$workers" \
        "$python" -m cnnx bench --batch-size 128,512 --compare torch --steps 20 --repeats 3
done
# One model on MPI ranks (issue 25), where mpi4py and an mpiexec are installed (the device image has
# neither: carry their wheels and `pip install --no-index --find-links WHEELS mpi4py mpich`). Each rank
# takes its share of the cores (16 / ranks BLAS threads); 1 rank is one process with its forked workers.
if "$python" -c "import mpi4py" 2>/dev/null && command -v mpiexec >/dev/null; then
    for ranks in 1 2 4 8 16; do
        step "mpi-ranks-$ranks" mpiexec -n "$ranks" "$python" -m cnnx bench --batch-size 512 --steps 20 \
            --repeats 3
    done
    # Two ranks on the GPU (both on device 0 when there is one): the device path of the MPI group.
    mpi_gpu=(mpiexec -n 2 "$python" -m cnnx train --device gpu --model cnn-bn --epochs 1 --limit 6000
             --out "$out/cnn-bn-mpi-gpu")
    [ -n "$data" ] && mpi_gpu+=(--data-dir "$data")
    step train-cnn-bn-mpi-gpu "${mpi_gpu[@]}"
fi
train=("$python" -m cnnx train --device gpu --model cnn-bn --epochs 1 --seed 0 --out "$out/cnn-bn-gpu")
[ -n "$data" ] && train+=(--data-dir "$data")
step train-cnn-bn "${train[@]}"
exit $status
