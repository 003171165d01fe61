#!/usr/bin/env bash
# Coverage-guided fuzzing (cargo-fuzz, libFuzzer, AddressSanitizer; nightly toolchain)
# of the targets in fuzzing/src/lib.rs. Runs each target for a time or a number of
# executions, adds what it finds to fuzzing/corpus/<target>/, and reports executions,
# speed and crashes per target. Exits 1 if any target crashed (the crashing input is
# kept under $PETREL_FUZZ_ARTIFACTS, outside the clone, and printed).
#
#   scripts/fuzz.sh                         every target, 60 s each
#   scripts/fuzz.sh --seconds 10            every target, 10 s each (the test command's run)
#   scripts/fuzz.sh --runs 10000000 token   one target, ten million executions
#   scripts/fuzz.sh --scratch --seconds 10  new inputs go to a scratch dir, not the corpus
#   scripts/fuzz.sh --list                  the targets
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; }
seconds=60
runs=""
scratch=""
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --scratch) scratch=1; shift ;;
    --list) ls fuzzing/fuzz/fuzz_targets | sed 's/\.rs$//'; exit 0 ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "fuzz.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    *) targets+=("$1"); shift ;;
  esac
done
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(ls fuzzing/fuzz/fuzz_targets | sed 's/\.rs$//')
fi
for t in "${targets[@]}"; do
  [ -f "fuzzing/fuzz/fuzz_targets/$t.rs" ] || { echo "fuzz.sh: no target $t (see --list)" >&2; exit 2; }
done
if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz.sh: needs the nightly toolchain (rustup toolchain list); cargo-fuzz builds with -Zsanitizer" >&2
  exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: needs cargo-fuzz: cargo install cargo-fuzz --locked" >&2
  exit 2
fi

# Outside the clone, like every build (the fuzz build is its own: nightly, sanitized).
fuzz_target_dir="${PETREL_FUZZ_TARGET_DIR:-$HOME/.cache/petrel/fuzz-target}"
artifacts="${PETREL_FUZZ_ARTIFACTS:-$HOME/.cache/petrel/fuzz-artifacts}"
mkdir -p "$artifacts"
echo "== building the fuzz targets (nightly, AddressSanitizer) in $fuzz_target_dir"
(cd fuzzing && cargo +nightly fuzz build --fuzz-dir fuzz --target-dir "$fuzz_target_dir")

limit=(-max_total_time="$seconds")
[ -n "$runs" ] && limit=(-runs="$runs")
failed=0
printf '%-16s %14s %10s %9s %8s %s\n' target executions execs/s seconds corpus result
for t in "${targets[@]}"; do
  corpus="fuzzing/corpus/$t"
  mkdir -p "$corpus"
  # libFuzzer writes new inputs to the first directory and reads the others.
  dirs=("corpus/$t")
  if [ -n "$scratch" ]; then
    work=$(mktemp -d)
    dirs=("$work" "corpus/$t")
  fi
  log=$(mktemp)
  start=$(date +%s)
  set +e
  (cd fuzzing && cargo +nightly fuzz run --fuzz-dir fuzz --target-dir "$fuzz_target_dir" "$t" "${dirs[@]}" -- \
     "${limit[@]}" -print_final_stats=1 -max_len=4096 -timeout=10 \
     -artifact_prefix="$artifacts/$t-" >"$log" 2>&1)
  rc=$?
  set -e
  took=$(( $(date +%s) - start ))
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  speed=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  files=$(find "$corpus" -type f | wc -l)
  if [ $rc -eq 0 ]; then
    result=ok
  else
    result="CRASH (exit $rc): $(grep -o "$artifacts/$t-[^ ]*" "$log" | tail -1)"
    failed=1
    grep -E 'panicked|ERROR: AddressSanitizer|SUMMARY' "$log" | head -5 >&2 || true
  fi
  printf '%-16s %14s %10s %9s %8s %s\n' "$t" "${execs:-?}" "${speed:-?}" "$took" "$files" "$result"
  rm -f "$log"
  [ -n "$scratch" ] && rm -rf "$work"
done
exit $failed
