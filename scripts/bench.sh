#!/usr/bin/env bash
# make bench: measures OpenCustody's speed and memory figures on this
# machine and prints them as one table. Every ratio in it is computed from
# figures measured in the same run, on the same machine load.
#
#   scripts/bench.sh              every figure (about two minutes on 2 cores)
#   BENCHTIME=3s scripts/bench.sh longer Go benchmarks
#   OPENCUSTODY_BENCH_PROFILE=DIR scripts/bench.sh
#                                 also writes the scale hsmd's CPU and memory
#                                 profiles to DIR (go tool pprof)
set -euo pipefail
benchtime=${BENCHTIME:-1s}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

echo "bench: PSBT size (Analyse and Sign, 1000 against 100 inputs)" >&2
go test -run '^$' -bench 'Scaling$' -benchtime "$benchtime" ./hsm/bitcoin >"$out/psbt" 2>&1 || { cat "$out/psbt" >&2; exit 1; }
echo "bench: signing through the key store against a direct PKCS#11 loop" >&2
go test -run '^$' -bench 'SignOverhead' -benchtime "$benchtime" ./hsm >"$out/store" 2>&1 || { cat "$out/store" >&2; exit 1; }
echo "bench: the approval pipeline, and one hsmd with 1,000 devices and 10,000 pending requests" >&2
OPENCUSTODY_BENCH=1 go test -count=1 -v -timeout 30m -run '^TestBenchReport' ./hsm/hsmd >"$out/hsmd" 2>&1 || { cat "$out/hsmd" >&2; exit 1; }

row() { printf '| %-52s | %-32s | %-10s | %-6s |\n' "$1" "$2" "$3" "$4"; }
metric() { # metric FILE BENCHMARK UNIT: the value reported in UNIT
  awk -v b="$2" -v u="$3" '$1 ~ "^"b"(-[0-9]+)?$" { for (i = 2; i < NF; i++) if ($(i+1) == u) { print $i; exit } }' "$1"
}
verdict() { awk -v v="$1" -v m="$2" 'BEGIN { print (v + 0 <= m + 0) ? "holds" : "MISSED" }'; }

echo
row "figure" "value" "target" "status"
row "----------------------------------------------------" "--------------------------------" "----------" "------"
for alg in ecdsa-secp256k1 ecdsa-p256 ed25519; do
  r=$(metric "$out/store" "BenchmarkSignOverhead/$alg" overhead-ratio)
  row "key store / direct PKCS#11 signing, $alg" "${r}x" "" ""
done
sed -n 's/^BENCH | //p' "$out/hsmd" | while IFS='|' read -r figure value target status; do
  row "$(echo $figure)" "$(echo $value)" "$(echo $target)" "$(echo $status)"
done
for b in Analyse Sign; do
  r=$(metric "$out/psbt" "Benchmark${b}Scaling" ratio)
  row "PSBT $b: 1,000 inputs / 100 inputs" "${r}x" "<= 11x" "$(verdict "$r" 11)"
done
