#!/usr/bin/env bash
# Shoal next to llama.cpp on one GGUF file, same threads, same machine, the two tools alternating so
# that a shared host's drifting bandwidth slows both alike:
#
#   tools/bench/vs_llamacpp.sh SHOAL LLAMA_BENCH MODEL.gguf [ROUNDS] [-- extra shoal bench args]
#
#   SHOAL        the shoal binary (build/bin/shoal)
#   LLAMA_BENCH  llama.cpp's llama-bench, built outside this repository (nothing of it is committed)
#   ROUNDS       Default: 2. Round r runs shoal then llama-bench when r is odd, the reverse when even.
#
# Environment (each shows its default): PROMPT=128 GEN=32 REPEAT=3 THREADS=2. Per round and tool it
# runs `shoal bench --prompt-tokens $PROMPT --gen-tokens $GEN --repeat $REPEAT --threads $THREADS`
# and `llama-bench -p $PROMPT -n $GEN -r $REPEAT -t $THREADS`, prints both tools' prefill and decode
# tokens/s (shoal: medians over its repeats; llama-bench: its mean) with shoal/llama.cpp ratios,
# shoal's decode fraction of its own read-bandwidth sample and peak RSS, then the ratio ranges.
set -euo pipefail
if [ $# -lt 3 ]; then
  sed -n '2,14p' "$0" >&2
  exit 2
fi
shoal="$1"; llama="$2"; model="$3"; shift 3
rounds=2
if [ $# -gt 0 ] && [ "$1" != "--" ]; then rounds="$1"; shift; fi
[ "${1:-}" = "--" ] && shift
for arg in "$@"; do
  # llama-bench runs one sequence: a batched shoal figure divided by it is no ratio.
  [ "$arg" = "--batch" ] && { echo "vs_llamacpp.sh: --batch has no llama-bench counterpart here" >&2; exit 2; }
done
prompt="${PROMPT:-128}"; gen="${GEN:-32}"; repeat="${REPEAT:-3}"; threads="${THREADS:-2}"
out=$(mktemp)
trap 'rm -f "$out"' EXIT

run_shoal() {
  "$shoal" bench --model "$model" --json --threads "$threads" --prompt-tokens "$prompt" \
      --gen-tokens "$gen" --repeat "$repeat" "$@" 2>/dev/null |
    python3 -c "
import json, sys
j = json.load(sys.stdin)
print('shoal', j['prefill_tokens_per_s'], j['decode_tokens_per_s'],
      j.get('decode_bandwidth_fraction_median', 0), j['peak_resident_kb'] / 1024)"
}

run_llama() {
  "$llama" -m "$model" -p "$prompt" -n "$gen" -r "$repeat" -t "$threads" -o json 2>/dev/null |
    python3 -c "
import json, sys
rows = json.load(sys.stdin)
pp = [r['avg_ts'] for r in rows if r['n_prompt'] > 0 and r['n_gen'] == 0]
tg = [r['avg_ts'] for r in rows if r['n_gen'] > 0 and r['n_prompt'] == 0]
print('llama', pp[0], tg[0], 0, 0)"
}

echo "model $model, threads $threads, prompt $prompt, gen $gen, repeat $repeat"
for r in $(seq 1 "$rounds"); do
  if [ $((r % 2)) -eq 1 ]; then order=(shoal llama); else order=(llama shoal); fi
  for side in "${order[@]}"; do
    if [ "$side" = shoal ]; then line=$(run_shoal "$@"); else line=$(run_llama); fi
    echo "$r $line" >> "$out"
  done
done

python3 - "$out" <<'PY'
import sys
runs = {}
for line in open(sys.argv[1]):
    r, side, p, d, frac, rss = line.split()
    runs.setdefault(int(r), {})[side] = (float(p), float(d), float(frac), float(rss))
print(f"{'round':>5} | {'shoal pp':>9} {'llama pp':>9} {'ratio':>6} | {'shoal tg':>9} {'llama tg':>9} {'ratio':>6} | {'bw frac':>7} {'peak MB':>8}")
pr, dr = [], []
for r in sorted(runs):
    s, l = runs[r]["shoal"], runs[r]["llama"]
    pr.append(s[0] / l[0]); dr.append(s[1] / l[1])
    print(f"{r:>5} | {s[0]:9.2f} {l[0]:9.2f} {pr[-1]:5.2f}x | {s[1]:9.2f} {l[1]:9.2f} {dr[-1]:5.2f}x | {100 * s[2]:6.1f}% {s[3]:8.0f}")
print(f"prefill shoal/llama.cpp {min(pr):.2f}x - {max(pr):.2f}x; decode {min(dr):.2f}x - {max(dr):.2f}x")
PY
