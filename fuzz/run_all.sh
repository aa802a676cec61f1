#!/usr/bin/env bash
# Runs every klinegate fuzz target for SECONDS each and prints, per target, the
# executions libFuzzer reports and whether it found anything.
#
#   fuzz/run_all.sh SECONDS [TARGET...]
#
# Environment: JOBS=2 runs two targets at a time (default 1: the machines have
# 2 cores); FUZZ_BUILD=0 skips the build step. Needs cargo-fuzz
# (`cargo install cargo-fuzz`); uses RUSTC_BOOTSTRAP=1 so the stable toolchain
# accepts the sanitizer-coverage flags cargo-fuzz passes.
# Exits non-zero when any target crashed, timed out or ran out of memory;
# the reproducer is then in fuzz/artifacts/<target>/.
set -u
cd "$(dirname "$0")"
secs="${1:?usage: run_all.sh SECONDS [TARGET...]}"
shift
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(binance_frame client_message journal http_request engine_ops dns_response ws_frames)
jobs="${JOBS:-1}"
export RUSTC_BOOTSTRAP=1
# -s none: the crate is safe Rust, so AddressSanitizer costs speed for little;
# -a: debug assertions and overflow checks on, so arithmetic overflow is a finding.
build_flags=(-s none -a)
mkdir -p logs

if [ "${FUZZ_BUILD:-1}" != 0 ]; then
  start=$(date +%s)
  cargo fuzz build "${build_flags[@]}" || { echo "fuzz build failed"; exit 2; }
  echo "fuzz build: $(( $(date +%s) - start )) s"
fi

run_one() {
  local t="$1" dict="" maxlen=4096
  case "$t" in
    http_request) dict="-dict=http.dict" ;;
    engine_ops) ;;
    dns_response) maxlen=1024 ;;
    ws_frames) ;;
    journal) dict="-dict=json.dict"; maxlen=16384 ;;
    *) dict="-dict=json.dict" ;;
  esac
  mkdir -p "corpus/$t"
  local seeds=()
  [ -d "seeds/$t" ] && seeds=("seeds/$t")
  cargo fuzz run "${build_flags[@]}" "$t" "corpus/$t" "${seeds[@]}" -- \
    -max_total_time="$secs" -print_final_stats=1 -timeout=20 -rss_limit_mb=2048 \
    -max_len="$maxlen" $dict > "logs/$t.log" 2>&1
  echo $? > "logs/$t.rc"
}

running=0
for t in "${targets[@]}"; do
  run_one "$t" &
  running=$((running + 1))
  if [ "$running" -ge "$jobs" ]; then
    wait -n
    running=$((running - 1))
  fi
done
wait

failed=0
printf '%-16s %14s %8s %s\n' target executions exec/s result
for t in "${targets[@]}"; do
  log="logs/$t.log"
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$')
  [ -z "$execs" ] && execs=$(grep -o '^#[0-9]*' "$log" | tail -1 | tr -d '#')
  rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$')
  rc=$(cat "logs/$t.rc" 2>/dev/null || echo "?")
  if [ "$rc" = 0 ]; then
    result="ok (corpus $(ls "corpus/$t" | wc -l) inputs)"
  else
    failed=1
    kind=$(grep -o -m1 -E 'deadly signal|panicked at [^:]*:[0-9]+|ERROR: libFuzzer: [a-z-]+' "$log" | head -1)
    result="FINDING rc=$rc: ${kind:-see $log}; $(grep -o -m1 'artifacts/[^ ]*' "$log" | head -1)"
  fi
  printf '%-16s %14s %8s %s\n' "$t" "${execs:-?}" "${rate:-?}" "$result"
done
exit $failed
