#!/usr/bin/env bash
# The figures of the layout change (issue 9): bench load, DB-server reads
# (cold, then warm), service-server cache hits, for one tidemark binary.
# Usage: scripts/bench-layout.sh TIDEMARK_BIN LABEL [RECORDS]
# Run it for two builds in alternation to compare them.
set -u
BIN=$1; LABEL=$2; REC=${3:-300000}
D=$(mktemp -d)
$BIN server --data-dir $D/data --listen 127.0.0.1:17070 > $D/db.log 2>&1 &
DBP=$!
until curl -sf http://127.0.0.1:17070/readyz >/dev/null; do sleep 0.2; done
L=$($BIN bench load --db http://127.0.0.1:17070 --records $REC --batch 1000 --json)
C=$($BIN bench reads --target http://127.0.0.1:17070 --records $REC --connections 32 --duration 8 --json)
W=$($BIN bench reads --target http://127.0.0.1:17070 --records $REC --connections 32 --duration 8 --json)
$BIN service --db http://127.0.0.1:17070 --id svc-b --policy latest-only --listen 127.0.0.1:17080 > $D/svc.log 2>&1 &
SP=$!
until curl -sf http://127.0.0.1:17080/readyz >/dev/null; do sleep 0.2; done
$BIN bench reads --target http://127.0.0.1:17080 --hot 100000 --records $REC --connections 32 --duration 4 --json >/dev/null
S=$($BIN bench reads --target http://127.0.0.1:17080 --hot 100000 --records $REC --connections 32 --duration 8 --json)
kill $SP $DBP; wait 2>/dev/null
echo "$LABEL load=$L"
echo "$LABEL db_cold=$C"
echo "$LABEL db_warm=$W"
echo "$LABEL svc=$S"
rm -rf $D
