#!/usr/bin/env bash
# Failover benchmark: a local cluster with 2 gateways and 2 workers (`loadtest up`), the fanout scenario
# (2 000 subscribers over both gateways, 50 writes/s for 40 s), and one worker SIGKILLed 12 s into the
# writes. The report shows the latency this costs and that nothing was lost, doubled or reordered.
# Run from anywhere after `cargo build --release --workspace --bins`.
set -u
cd "$(dirname "$0")/../.."
L=target/release/loadtest
pkill -f "loadtest up --port 18055" 2>/dev/null
$L up --gateways 2 --workers 2 --port 18055 > /tmp/failover-up.log 2>&1 &
UP=$!
for i in $(seq 1 90); do grep -q "Realtime cluster is up" /tmp/failover-up.log && break; sleep 1; done
DB=$(grep -oE "postgres://[^ ]+" /tmp/failover-up.log | head -1)
GW2=$(grep -oE "gateway 1: +ws://[^ ]+" /tmp/failover-up.log | grep -oE "ws://[^ ]+")
echo "db=$DB gw2=$GW2"
$L run --url ws://127.0.0.1:18055/websocket --url $GW2 --db $DB --token admin-static-token \
   --scenario fanout --connections 2000 --rate 50 --duration 40 --out loadtest/bench-results/failover-worker-kill > /tmp/failover-run.log 2>&1 &
RUN=$!
# Writes start after connect + idle; kill one worker well inside the write phase.
for i in $(seq 1 120); do grep -q "\] write" /tmp/failover-run.log && break; sleep 0.5; done
sleep 12
W=$(pgrep -f "target/release/fanout-worker" | head -1)
echo "killing worker pid $W at $(date +%T.%N)"
kill -9 $W
wait $RUN
kill -INT $UP; wait $UP
grep -E "PASSED|FAILED|delivered:|latency commit" /tmp/failover-run.log
