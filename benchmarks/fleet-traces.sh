#!/bin/bash
# The full routing comparison: 8 simulated engines, both Mooncake traces (the first 180 s,
# three times faster), two cache sizes per engine (4,000 and 1,000 blocks of 512 tokens), the
# peers (installed once under $DATA_DIR/peers), and the fault scenario on the conversation
# trace. About an hour on the 2-core machine. Results, tables and plots land under $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-.warmroute/bench/fleet-traces}
DATA_DIR=${DATA_DIR:-.warmroute}
make venv >/dev/null
common=(--engines 8 --workload trace --window 180 --speedup 3 --max-output-tokens 8
        --sim-profile gpu --prefill-ms-per-token 0.03 --decode-ms-per-token 8
        --targets warmroute,warmroute-keyless,round-robin --peers --data-dir "$DATA_DIR"
        --no-progress)
run() {
    local name=$1; shift
    echo "=== $name ($(date +%T))"
    .venv/bin/warmroute bench fleet "${common[@]}" "$@" --out "$OUT/$name"
}
run conversation-4000 --trace conversation --cache-blocks 128000 --fault
run conversation-1000 --trace conversation --cache-blocks 32000
run synthetic-4000 --trace synthetic --cache-blocks 128000
run synthetic-1000 --trace synthetic --cache-blocks 32000
