#!/usr/bin/env bash
# Every GPU figure the project cares about, in one run of under 8 minutes on one GPU, with one summary:
# training throughput of ResNet-56 against a plain DataLoader loop (AMP and channels_last on and off),
# fine-tuning the SR-GKP model against the dense and L1 ones, grouped against dense latency at batch 256
# (ResNet-56, VGG-16, ResNet-50),
# a 10,000-image paper-cifar evaluation of ResNet-56, PGD through the Python API on an SR-GKP ResNet-20
# against the dense and L1 ones, SR-GKP's search on the GPU (ResNet-56, checked against
# the CPU's selection, and VGG-16), what PGD-AT and the training-time methods add to an epoch, and the peak
# GPU memory of training and evaluation; then the tests marked gpu. Put its output in your note.
#
#   bash benchmarks/gpu_check.sh               # on the GPU
#   bash benchmarks/gpu_check.sh --cpu-smoke   # tiny sizes on the CPU: checks that the script runs
#
# A step that fails is reported (FAILED in the summary) and the next one runs; the script then exits 1.
# Output is unbuffered, so a run cut short keeps what it printed; with $OUT set, the log is kept there too.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" PYTHONUNBUFFERED=1
PYTHON="${PYTHON:-python3}"
if [ "${1:-}" = "--cpu-smoke" ]; then
    device=cpu; images=64; eval_images=32; batches=4; epochs=1; rounds=1; arch=resnet8; workers=0; full=
    latency_archs=resnet8; search_archs=resnet8; search_reference=0; api_arch=resnet8; api_steps=2
else  # AMP and channels_last also each off on its own
    device=cuda; images=20000; eval_images=10000; batches=256; epochs=2; rounds=3; arch=resnet56; workers=4; full=1
    latency_archs=resnet56,vgg16,resnet50; search_archs=resnet56; search_reference=16; api_arch=resnet20; api_steps=10
fi
if [ -n "${OUT:-}" ]; then
    log="$OUT/gpu_check.log"
else
    log="$(mktemp)"
    trap 'rm -f "$log"' EXIT
fi
failed=0
run() {
    echo "== $*" | tee -a "$log"
    if ! "$PYTHON" "$@" 2>&1 | sed -u '/^[[:space:]]*$/d' | tee -a "$log"; then
        echo "FAILED: $*" | tee -a "$log"
        failed=1
    fi
}
"$PYTHON" -c "import torch; print('torch', torch.__version__, '| cuda', torch.cuda.is_available(), '|', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')" | tee -a "$log"
run benchmarks/bench_train.py --arch "$arch" --device "$device" --images "$images" --epochs "$epochs" --workers "$workers"
for variant in "--amp off --channels-last off" ${full:+"--amp off" "--channels-last off"}; do
    # shellcheck disable=SC2086  # the variant's flags are words
    run benchmarks/bench_train.py --arch "$arch" --device "$device" --images "$images" --epochs "$epochs" --workers "$workers" $variant --no-pruned
done
run benchmarks/bench_grouped.py --archs "$latency_archs" --device "$device" --batches "$batches" --repeats "$rounds" --timing-cost
run benchmarks/bench_eval.py --arch "$arch" --device "$device" --images "$eval_images"
run benchmarks/bench_api.py --arch "$api_arch" --device "$device" --images "$eval_images" --batch-size "$batches" --steps "$api_steps"
run benchmarks/bench_srgkp.py --archs "$search_archs" --device "$device" --reference-channels "$search_reference" --compare-cpu
${full:+run benchmarks/bench_srgkp.py --archs vgg16 --device "$device" --reference-channels 0 --repeats 1}
run benchmarks/bench_training_time.py --arch "$arch" --device "$device" --images "$((images / 4))" --rounds "$rounds" --steps 3
${full:+run -m pytest -q -p no:cacheprovider -m gpu tests}
echo
echo "== summary"
grep -E "ratio|step time|paper-cifar evaluation|hooks|of a plain|PGD-|peak GPU memory|^torch|select \+ surgery|same selection| passed| failed|FAILED" "$log"
exit "$failed"
