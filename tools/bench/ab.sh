#!/usr/bin/env bash
# Side-by-side speed of two shoal binaries on one model, alternating the sides so that a shared,
# noisy host slows both alike:
#   tools/bench/ab.sh OLD_SHOAL NEW_SHOAL MODEL [ROUNDS] [-- extra shoal bench args]
# Each round runs `shoal bench` with OLD then NEW (the order flips every round); prints every run's
# prefill and decode tokens/s, then per side the median and NEW/OLD as a ratio of medians.
set -euo pipefail
old="$1"; new="$2"; model="$3"; rounds="${4:-4}"
shift $(( $# >= 4 ? 4 : 3 ))
[ "${1:-}" = "--" ] && shift
args=(--threads 2 --prompt-tokens 128 --gen-tokens 32 --repeat 3 --skip-bandwidth "$@")
out=$(mktemp)
for r in $(seq 1 "$rounds"); do
  if [ $((r % 2)) -eq 1 ]; then order=(old new); else order=(new old); fi
  for side in "${order[@]}"; do
    bin=$old; [ "$side" = new ] && bin=$new
    "$bin" bench --model "$model" --json "${args[@]}" 2>/dev/null |
      python3 -c "import json,sys; j=json.load(sys.stdin); print('$side', j['prefill_tokens_per_s'], j['decode_tokens_per_s'])" | tee -a "$out"
  done
done
python3 - "$out" <<'PY'
import statistics, sys
runs = {"old": [], "new": []}
for line in open(sys.argv[1]):
    side, p, d = line.split()
    runs[side].append((float(p), float(d)))
med = {s: (statistics.median(x[0] for x in v), statistics.median(x[1] for x in v)) for s, v in runs.items()}
for s in ("old", "new"):
    print(f"{s}: prefill {med[s][0]:.2f} tok/s, decode {med[s][1]:.2f} tok/s (medians of {len(runs[s])} runs)")
print(f"new/old: prefill {med['new'][0] / med['old'][0]:.3f}x, decode {med['new'][1] / med['old'][1]:.3f}x")
PY
rm -f "$out"
