#!/usr/bin/env bash
# The GPU comparison on the lent machine (../shared/gpu/README.md), in three moves:
#
#   bench/gpu.sh pack        here: wheels the device lacks, tiny.en, base and the audio, split into .gpu/parts/p1..pN
#   bash .gpu/parts/pN/unpack.sh    on the device, one call per part, back to back (carry [.gpu/parts/pN])
#   bench/gpu.sh run         on the device: `python -m bench gpu` (tiny.en, base, random large-v3-turbo and
#                            large-v3 built there; beam 5 then greedy; S1 and engine-level S2 at 1/8/32/64 threads),
#                            results in $OUT (JSON + markdown after every step); BUDGET_S (default 420) seconds
#                            after this script starts, what is left is skipped and listed as skipped.
set -euo pipefail
start=$(date +%s)
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

pack() {
  local py=.venv/bin/python stage=.gpu/stage
  grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
  rm -rf .gpu/in "$stage"
  mkdir -p .gpu/in "$stage/audio/long"
  # the versions this checkout runs, for CPython 3.12 (the device's python); the device has numpy, tokenizers,
  # huggingface_hub and onnxruntime already
  local pins=()
  for name in ctranslate2 faster-whisper av pydantic pydantic-core pydantic-settings annotated-types \
    typing-inspection typing-extensions python-dotenv jiwer rapidfuzz click; do
    pins+=("$name==$($py -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")")
  done
  $py -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .gpu/in "${pins[@]}"
  cp -r "$($py -c 'from koe.model_files import resolve; from koe.config import default_cache_dir as d; print(resolve("tiny.en", d()))')" "$stage/tiny.en"
  cp -r "$($py -c 'from koe.model_files import resolve; from koe.config import default_cache_dir as d; print(resolve("base", d()))')" "$stage/base"
  local audio=${KOE_BENCH_AUDIO:-../shared/audio}
  cp "$audio/MANIFEST.tsv" "$stage/audio/"
  cp -r "$audio/en" "$stage/audio/en"
  cp "$audio"/long/en_read_speech_concat.* "$audio"/long/en_asterisk_prompts_even.* "$stage/audio/long/"
  bash ../shared/gpu/pack.sh .gpu/parts .gpu/in/*.whl "$stage/tiny.en" "$stage/base" "$stage/audio"
}

run() {
  # shellcheck disable=SC1091
  source /tmp/gpu/env.sh
  export KOE_BENCH_AUDIO=/tmp/gpu/audio PYTHONPATH="$root/src:$root:${PYTHONPATH:-}"
  nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader || true
  python3 -m bench gpu --started "$start" --budget-s "${BUDGET_S:-420}" \
    --model tiny.en=/tmp/gpu/tiny.en --model base=/tmp/gpu/base --work /tmp/gpu/random \
    --out "${OUT:-bench/results}" "$@"
}

case ${1:-} in
  pack) shift; pack "$@" ;;
  run) shift; run "$@" ;;
  *) echo "usage: bench/gpu.sh pack | run [python -m bench gpu options]" >&2; exit 2 ;;
esac
