#!/usr/bin/env bash
# Side-by-side figures (not a test): agent CPU per probe against fping on the same 1,000
# loopback targets, agent memory with 10,000 targets, and time to alert against
# blackbox_exporter + Prometheus + Alertmanager, and a connection-churn soak of the
# aggregator. Run as root (ICMP, fping -p, namespaces).
#   scripts/bench.sh            # prints each figure, its peer's and the ratio
#   scripts/bench.sh cpu        # only section 1, the agent's CPU per probe against fping
#   scripts/bench.sh mem        # only section 2, the agent's memory (MEM_STEADY_S=0 skips the 6 min wait)
#   scripts/bench.sh ingest     # only section 4 (LOADGEN_DURATION_S=30 LOADGEN_SCRAPE_S=0 by default;
#                               # LOADGEN_DURATION_S=600 LOADGEN_SCRAPE_S=15 as Prometheus would see it;
#                               # LOADGEN_SAMPLES=1 for 1 probe/s a path instead of 5)
#   scripts/bench.sh soak       # only the soak (SOAK_AGENTS=1000 SOAK_MINUTES=10 SOAK_WARMUP_S=10 by default;
#                               # SOAK_WARMUP_S=330 measures once the windows are full)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
tmp="$(mktemp -d)"; trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$tmp"' EXIT
hz=$(getconf CLK_TCK)

targets() { # N FIRST_OCTET -> TOML targets list and a plain list
  python3 - "$1" "$2" "$tmp" <<'PY'
import sys
n, o, d = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
t = ['127.%d.%d.%d' % (o + i // 62500, (i // 250) % 250, 1 + i % 250) for i in range(n)]
open(f'{d}/t{n}.toml', 'w').write('targets = [' + ','.join('"%s"' % x for x in t) + ']\n')
open(f'{d}/t{n}.txt', 'w').write('\n'.join(t) + '\n')
PY
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
metric_sum() { # URL NAME
  python3 -c "import urllib.request,sys; t=urllib.request.urlopen(sys.argv[1]).read().decode(); print(int(sum(float(l.split()[-1]) for l in t.splitlines() if l.startswith(sys.argv[2]+'{'))))" "$1" "$2"
}

soak() {
  local agents="${SOAK_AGENTS:-1000}" minutes="${SOAK_MINUTES:-10}"
  echo "== 6. Soak: $agents simulated agents connecting and disconnecting for $minutes min, 3 real agents alongside"
  cargo build --release --locked -q -p pathpulse-aggregator -p pathpulse-agent -p pathpulse-tests --bins
  local st="$tmp/soak" agg real=(soak-a soak-b soak-c) i
  target/release/pathpulse-aggregator run --listen 127.0.0.1:25470 --http 127.0.0.1:29471 \
    --state-dir "$st" 2>"$tmp/soak-agg.log" & agg=$!
  sleep 2
  for i in 0 1 2; do
    target/release/pathpulse-aggregator cert issue --name "${real[$i]}" \
      --out "$tmp/${real[$i]}/identity" --state-dir "$st" >/dev/null
    target/release/pathpulse-agent run --name "${real[$i]}" --aggregator 127.0.0.1:25470 \
      --state-dir "$tmp/${real[$i]}" --target tcp:127.0.0.1:29471 --interval 1s \
      --report-interval 5s --metrics-listen "127.0.0.1:1990$i" 2>"$tmp/${real[$i]}.log" &
  done
  # The real agents' spools, sampled: more than one report waiting means a late ack.
  ( while sleep 10; do for i in 0 1 2; do
      metric_sum "http://127.0.0.1:1990$i/metrics" pathpulse_spool_reports 2>/dev/null || echo 0
    done; done >"$tmp/spools" ) & local sampler=$!
  # Each simulated agent reconnects every 10 s on average (under the default registration
  # limit of 10 a minute), with one report of 10 paths per connection.
  target/release/pathpulse-loadgen --state-dir "$st" --aggregator 127.0.0.1:25470 \
    --agents "$agents" --paths 10 --churn-ms 10000 --warmup-s "${SOAK_WARMUP_S:-10}" \
    --duration-s $((minutes * 60)) --pid "$agg" --rss-every-s 30 | tee "$tmp/soak-loadgen.out"
  kill "$sampler" 2>/dev/null || true
  sleep 12  # the real agents' last reports
  for i in 0 1 2; do
    local own at_agg
    own=$(metric_sum "http://127.0.0.1:1990$i/metrics" pathpulse_probes_sent_total)
    at_agg=$(python3 -c "import urllib.request,sys; t=urllib.request.urlopen('http://127.0.0.1:29471/metrics').read().decode(); print(int(sum(float(l.split()[-1]) for l in t.splitlines() if l.startswith('pathpulse_probes_sent_total{') and 'src=\"${real[$i]}\"' in l)))")
    echo "${real[$i]}: probes sent $own, at the aggregator $at_agg (equal within one report: 5)"
  done
  echo "real agents' spools over the soak (sampled every 10 s): max $(sort -n "$tmp/spools" | tail -1), samples $(wc -l <"$tmp/spools")"
  echo "aggregator refusals by reason (pathpulse_ingest_refused_total, nonzero):"
  python3 -c "import urllib.request; t=urllib.request.urlopen('http://127.0.0.1:29471/metrics').read().decode(); print('\n'.join('  '+l for l in t.splitlines() if l.startswith('pathpulse_ingest_refused_total{') and not l.endswith(' 0')) or '  none')"
  echo "aggregator warnings in its log: $(grep -c WARN "$tmp/soak-agg.log" || true)"
  grep WARN "$tmp/soak-agg.log" | sed -E 's/^[^ ]+ +//' | cut -c1-160 | sort | uniq -c | sort -rn | head -5 || true
  # A soak whose churned sessions were mostly refused measured refusals, not churn (the
  # loadgen's certificates once expired mid-run): more than 1% refused fails it.
  local refused conns
  refused=$(python3 -c "import urllib.request; t=urllib.request.urlopen('http://127.0.0.1:29471/metrics').read().decode(); print(int(sum(float(l.split()[-1]) for l in t.splitlines() if l.startswith('pathpulse_ingest_refused_total{'))))")
  conns=$(sed -nE 's/.*connections: ([0-9]+).*/\1/p' "$tmp/soak-loadgen.out" | tail -1)
  kill "$agg" $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true
  if (( ${conns:-0} == 0 || refused * 100 > ${conns:-0} )); then
    echo "SOAK INVALID: $refused refusals for ${conns:-0} churned connections (more than 1%)"
    return 1
  fi
}

if [[ "${1:-}" == soak ]]; then soak; exit; fi

cargo build --release --locked -q -p pathpulse-agent
# BENCH_AGENT=PATH measures another build (another branch's, side by side).
AGENT=${BENCH_AGENT:-${CARGO_TARGET_DIR:-target}/release/pathpulse-agent}

mem() { # section 2 alone: scripts/bench.sh mem
  echo "== 2. Memory: 10,000 loopback targets at 1 probe/s, standalone /metrics, after 30 s and after 6 min"
  # The windows fill for 5 to 6 minutes (5 s slots for the last minute, 1 min slots before),
  # so the RSS after 6 minutes is the steady state; MEM_STEADY_S=0 skips that wait.
  targets 10000 20
  "$AGENT" run --config "$tmp/t10000.toml" --name mem --interval 1s --metrics-listen 127.0.0.1:19891 2>"$tmp/mem.log" & pid=$!
  sleep 30
  rss30=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
  echo "pathpulse-agent RSS after 30 s: $((rss30 / 1024)) MiB for 10,000 targets (goal <= 40 MB; network_exporter documents 50-100 MB + 1-3 KB per target)"
  steady=${MEM_STEADY_S:-330}
  if [ "$steady" -gt 0 ]; then
    sleep "$steady"
    rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
    echo "pathpulse-agent RSS after $((30 + steady)) s (windows full): $((rss / 1024)) MiB"
  fi
  # Then as a deployment sees it: scraped every 15 s for 2 minutes with Prometheus's Accept
  # header (OpenMetrics; the text of 10,000 paths is about 73 MB, streamed in chunks); the
  # RSS 15 s after each scrape, the peak during the scrapes (VmHWM, reset to the RSS before
  # them) and each scrape's time (render and transfer). Then one scrape in the classic format
  # (curl, promtool) and one in protobuf (what Prometheus asks for with native histograms),
  # each with its own peak.
  om='application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.1'
  pb="application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.7,$om"
  scrape() { # ACCEPT -> bytes and seconds
    python3 -c "import sys,time,urllib.request as u; t=time.monotonic(); n=len(u.urlopen(u.Request('http://127.0.0.1:19891/metrics', headers={'Accept': sys.argv[1]})).read()); print(n, round(time.monotonic()-t, 2))" "$1"
  }
  kib() { awk -v k="$1:" '$1 == k {print $2}' "/proc/$pid/status"; }
  echo 5 >"/proc/$pid/clear_refs"   # VmHWM := VmRSS
  between=(); took=()
  for _ in 1 2 3 4 5 6 7 8; do
    read -r size secs < <(scrape "$om")
    took+=("$secs")
    sleep 15
    between+=("$(($(kib VmRSS) / 1024))")
  done
  echo "pathpulse-agent scraped every 15 s for 2 min (OpenMetrics, exposition $((size / 1000000)) MB): RSS 15 s after each scrape ${between[*]} MiB, peak (VmHWM) $(($(kib VmHWM) / 1024)) MiB; each scrape took ${took[*]} s"
  for f in "classic:text/plain" "protobuf:$pb"; do
    echo 5 >"/proc/$pid/clear_refs"
    read -r size secs < <(scrape "${f#*:}")
    echo "one ${f%%:*} scrape: $((size / 1000000)) MB in $secs s, peak (VmHWM) $(($(kib VmHWM) / 1024)) MiB, RSS right after $(($(kib VmRSS) / 1024)) MiB"
  done
  kill $pid; wait $pid 2>/dev/null || true
}

if [[ "${1:-}" == mem ]]; then mem; exit; fi

ingest() { # section 4 alone: scripts/bench.sh ingest
  echo "== 4. Aggregator ingest: 1,000 simulated agents x 100 paths at 1 report/s over real QUIC + mTLS"
  cargo build --release --locked -q -p pathpulse-aggregator -p pathpulse-tests --bins
  local agg_state="$tmp/agg" agg scraper=""
  # The loadgen reads the aggregator's receive-to-applied histogram from /metrics before and
  # after; a path budget keeps those reads small (100,000 paths' series are about 1 GB of
  # text). Roll-ups and everything else are as without it.
  printf 'path_budget = 10\n' >"$tmp/agg.toml"
  target/release/pathpulse-aggregator run --config "$tmp/agg.toml" --listen 127.0.0.1:24470 \
    --http 127.0.0.1:29470 --state-dir "$agg_state" 2>"$tmp/agg.log" & agg=$!
  sleep 2
  # LOADGEN_SCRAPE_S=15 scrapes /metrics that often meanwhile, as Prometheus would: each
  # scrape's time and the aggregator's RSS after it.
  if (( ${LOADGEN_SCRAPE_S:-0} > 0 )); then
    ( while sleep "$LOADGEN_SCRAPE_S"; do
        t=$(python3 -c "import time,urllib.request as u; t=time.monotonic(); u.urlopen('http://127.0.0.1:29470/metrics').read(); print(round(time.monotonic()-t, 2))" 2>/dev/null) || continue
        echo "scrape: $t s, aggregator RSS $(($(awk '/VmRSS/ {print $2}' "/proc/$agg/status") / 1024)) MiB"
      done ) & scraper=$!
  fi
  target/release/pathpulse-loadgen --state-dir "$agg_state" --aggregator 127.0.0.1:24470 \
    --agents "${LOADGEN_AGENTS:-1000}" --paths "${LOADGEN_PATHS:-100}" \
    --samples "${LOADGEN_SAMPLES:-5}" \
    --duration-s "${LOADGEN_DURATION_S:-30}" --rss-every-s 60 --pid "$agg" \
    --metrics http://127.0.0.1:29470/metrics
  [[ -n "$scraper" ]] && kill "$scraper" 2>/dev/null
  echo "agents whose QUIC connection timed out: $(grep -c 'reason=timed out' "$tmp/agg.log" || true)"
  kill "$agg"; wait "$agg" 2>/dev/null || true
}
if [[ "${1:-}" == ingest ]]; then ingest; exit; fi

cpu() { # section 1 alone: scripts/bench.sh cpu
  echo "== 1. CPU per probe: 1,000 loopback targets at 10 probes/s each, 30 s"
  targets 1000 10
  "$AGENT" run --config "$tmp/t1000.toml" --name bench --interval 100ms --report-interval 1s \
    --metrics-listen 127.0.0.1:19890 2>"$tmp/agent.log" & pid=$!
  sleep 3
  s0=$(metric_sum http://127.0.0.1:19890/metrics pathpulse_probes_sent_total); c0=$(cpu_ticks $pid)
  sleep 30
  s1=$(metric_sum http://127.0.0.1:19890/metrics pathpulse_probes_sent_total); c1=$(cpu_ticks $pid)
  kill $pid; wait $pid 2>/dev/null || true
  agent_us=$(python3 -c "print(($c1-$c0)/$hz*1e6/($s1-$s0))")
  echo "pathpulse-agent: $((s1 - s0)) probes, $(python3 -c "print(($c1-$c0)/$hz)") s CPU, ${agent_us} us/probe"
  fping_out=$( { /usr/bin/time -f "%U %S" fping -C 300 -p 100 -i 0.1 -q -f "$tmp/t1000.txt" >/dev/null 2>"$tmp/fping.err"; } 2>&1 || true)
  fping_cpu=$(tail -1 "$tmp/fping.err" | awk '{print $1 + $2}')
  fping_us=$(python3 -c "print($fping_cpu*1e6/300000)")
  echo "fping:           300000 probes, ${fping_cpu} s CPU, ${fping_us} us/probe"
  echo "ratio pathpulse/fping per probe: $(python3 -c "print(round($agent_us/$fping_us, 2))")  (goal <= 0.7)"
}
if [[ "${1:-}" == cpu ]]; then cpu; exit; fi

cpu

mem

echo "== 3. Accuracy against the lab's truth, pathpulse and fping/ping side by side (lab tests, root)"
# The lab scenarios are tests (they assert the bounds); here they run for their figures.
cargo test --locked -q -p pathpulse-tests --test e2e -- --nocapture --test-threads=1 \
  lab_delay_quantiles lab_idle_link lab_loss_rates lab_duplicates 2>&1 |
  sed -E 's/^test [^ ]+ \.\.\. //' |
  grep -E "^(p0\.|per-probe|idle link|loss|jitter|RTT samples)" || true

ingest

echo "== 5. Time to alert: pathpulse vs blackbox_exporter + Prometheus + Alertmanager (about 25 minutes)"
# The peer's exporter is needed only here.
dpkg-query -W -f='${Status}' prometheus-blackbox-exporter 2>/dev/null | grep -q "install ok installed" || {
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus-blackbox-exporter >/dev/null
}
cargo build --workspace --bins --locked -q
cargo test -p pathpulse-tests --test e2e --locked -q -- --ignored --nocapture --exact \
  alert_bench::alert_benchmark_against_blackbox_exporter 2>&1 | grep -E '^(trial|common|==|pathpulse|blackbox|ratio)|panicked'

soak
