#!/usr/bin/env bash
# Tidemark on PostgreSQL against raw PostgreSQL on the same cluster (fsync on),
# in the same run (issue 10). Needs Debian's postgresql package (pgbench).
# Usage: scripts/bench-postgres.sh TIDEMARK_BIN
set -u
BIN=/usr/lib/postgresql/15/bin
TM=${1:?usage: scripts/bench-postgres.sh TIDEMARK_BIN}
D=$(mktemp -d); chmod 755 $D; chown postgres:postgres $D
P="setpriv --reuid=postgres --regid=postgres --init-groups --"
$P $BIN/initdb -D $D/data -U postgres --auth=trust -E UTF8 >/dev/null
$P $BIN/postgres -D $D/data -p 15432 -k $D -c listen_addresses=127.0.0.1 -c fsync=on -c synchronous_commit=on -c shared_buffers=512MB -c max_connections=200 > $D/pg.log 2>&1 &
until $BIN/pg_isready -h 127.0.0.1 -p 15432 -U postgres >/dev/null 2>&1; do sleep 0.2; done
$BIN/createdb -h 127.0.0.1 -p 15432 -U postgres tm
URL=postgres://postgres@127.0.0.1:15432/tm
$TM server --store postgres --database-url $URL --listen 127.0.0.1:17272 > $D/tm.log 2>&1 &
until curl -sf http://127.0.0.1:17272/readyz >/dev/null; do sleep 0.2; done
echo "tidemark-pg load: $($TM bench load --db http://127.0.0.1:17272 --records 100000 --batch 1000 --json)"
echo "tidemark-pg reads cold: $($TM bench reads --target http://127.0.0.1:17272 --records 100000 --duration 8 --json)"
echo "tidemark-pg reads warm: $($TM bench reads --target http://127.0.0.1:17272 --records 100000 --duration 8 --json)"
# Raw PostgreSQL on the same cluster: batched upserts of 1,000 rows, primary-key selects.
psql="psql -h 127.0.0.1 -p 15432 -U postgres -d tm -qAt"
$psql -c "CREATE TABLE raw (k text PRIMARY KEY, plan text, credit_limit bigint)"
cat > $D/up.sql <<'SQL'
\set b random(0, 99)
INSERT INTO raw (k, plan, credit_limit) SELECT 'k' || (:b * 1000 + g), 'p', g FROM generate_series(1, 1000) g ON CONFLICT (k) DO UPDATE SET plan = excluded.plan, credit_limit = excluded.credit_limit;
SQL
cat > $D/sel.sql <<'SQL'
\set id random(1, 100000)
SELECT k, plan, credit_limit FROM raw WHERE k = 'k' || :id;
SQL
echo "raw upserts (batches of 1000, 2 clients): $($BIN/pgbench -h 127.0.0.1 -p 15432 -U postgres -n -f $D/up.sql -c 2 -j 2 -T 8 tm 2>/dev/null | grep -E '^tps')"
echo "raw pk selects (32 clients): $($BIN/pgbench -h 127.0.0.1 -p 15432 -U postgres -n -f $D/sel.sql -c 32 -j 2 -T 8 -M prepared tm 2>/dev/null | grep -E '^tps')"
pkill -f "listen 127.0.0.1:17272"; $P $BIN/pg_ctl stop -D $D/data -m fast >/dev/null
