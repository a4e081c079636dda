#!/usr/bin/env bash
# Fuzz every target for RUNS executions (default 10 million) with cargo-fuzz on nightly.
#   scripts/fuzz.sh            # 10M executions per target, prints the time each took
#   scripts/fuzz.sh 100000     # a short run (CI's smoke)
# Seeds live in fuzz/corpus/<target> (small, in git); what libFuzzer finds goes to
# fuzz/work/<target> (ignored). A crash leaves its input in fuzz/artifacts/<target>.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
RUNS="${1:-10000000}"
if ! cargo +nightly --version >/dev/null 2>&1 || ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "fuzz: needs the nightly toolchain and cargo-fuzz (cargo install cargo-fuzz --locked)" >&2
  exit 2
fi
targets=(wire_frame icmp_packet stamp_packet dns_reply agent_config aggregator_config target_spec enroll_token)
cargo +nightly fuzz build -O 2>&1 | tail -1
pass=0; fail=0
for t in "${targets[@]}"; do
  mkdir -p "work/$t" "corpus/$t"
  start=$(date +%s)
  if cargo +nightly fuzz run -O "$t" "work/$t" "corpus/$t" -- -runs="$RUNS" -max_len=4096 \
       -print_final_stats=1 > "work/$t.log" 2>&1; then
    pass=$((pass + 1)); verdict=ok
  else
    fail=$((fail + 1)); verdict=CRASH
  fi
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "work/$t.log" | grep -o '[0-9]*$' || echo "?")
  echo "fuzz $t: $verdict, $execs executions in $(( $(date +%s) - start )) s"
  [ "$verdict" = ok ] || tail -40 "work/$t.log"
done
echo "fuzz: $pass of ${#targets[@]} targets without a crash"
[ "$fail" -eq 0 ]
