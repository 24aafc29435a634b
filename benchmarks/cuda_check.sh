#!/usr/bin/env bash
# fs2mini's CUDA paths, checked end to end on a GPU machine (CI has none, so this is run by hand):
#
#     bash benchmarks/cuda_check.sh [OUT_DIR]   # stages 1-3: ~4 min on an H200; stage 4 not yet timed
#
# 1. trains the default model on CUDA (bf16 autocast, the default there) with BLEU validation;
# 2. translates (beam 4) and evaluates that run on CUDA through `Translator.from_run`;
# 3. trains the same config again with --trainer.compile (torch.compile on CUDA) to compare tok/s;
# 4. runs `benchmarks/bench.py --device cuda`: training tok/s and MFU for SMALL, BASE and
#    dense_600m vs plain nn.Transformer and HF M2M100, generation sentences/s vs HF generate.
# Each stage runs even when an earlier one failed; the script exits non-zero if any did.
# STEPS and DEVICE (default 1500, cuda) let the script be smoke-tested elsewhere.
set -uo pipefail
out=${1:-runs/cuda_check}
py=${PYTHON:-python3}
steps=${STEPS:-1500}
device=${DEVICE:-cuda}
mkdir -p "$out"
failed=()

stage() {  # stage NAME COMMAND...: run it, time it, remember a failure
    local name=$1
    shift
    echo "=== $name: $*"
    local start=$SECONDS
    "$@" || failed+=("$name (exit $?)")
    echo "=== $name took $((SECONDS - start)) s"
}

$py -c 'import torch; print("torch", torch.__version__, "| cuda", torch.version.cuda, "|",
        torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU")'

common=(--trainer.device "$device" --trainer.max-steps "$steps" --trainer.validate-every $((steps / 3))
        --trainer.checkpoint-every $((steps / 3)) --trainer.progress lines)
stage train "$py" -m fs2mini.train --output-dir "$out/eager" "${common[@]}"
stage translate bash -c "printf '%s\n' 'In the beginning God created the heaven and the earth.' \
    'And God said, Let there be light: and there was light.' \
    | $py -m fs2mini.translate '$out/eager' --device $device --beam-size 4"
stage evaluate "$py" -m fs2mini.evaluate "$out/eager" --split test --device "$device"
stage train-compiled "$py" -m fs2mini.train --output-dir "$out/compiled" "${common[@]}" --trainer.compile
for run in eager compiled; do  # median train tok/s over the second half of each run (after compilation)
    $py - "$out/$run/metrics.jsonl" "$run" <<'EOF'
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
train = [r for r in rows if r["split"] == "train"]
late = [r["tokens_per_s"] for r in train[len(train) // 2 :]]
valid = [r for r in rows if r["split"] == "valid"]
print(f"{sys.argv[2]}: median {statistics.median(late):,.0f} tok/s over steps {train[len(train) // 2]['step']}-"
      f"{train[-1]['step']}; valid loss {valid[0]['loss']:.3f} -> {valid[-1]['loss']:.3f}, "
      f"BLEU {valid[-1].get('bleu', float('nan')):.1f}")
EOF
done
if [ "$device" = cuda ]; then
    stage bench "$py" benchmarks/bench.py --device cuda --repeats 1 --output "$out/bench_cuda.json"
fi

if [ ${#failed[@]} -gt 0 ]; then
    echo "FAILED: ${failed[*]}"
    exit 1
fi
echo "all CUDA checks passed"
