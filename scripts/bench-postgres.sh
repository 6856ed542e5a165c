#!/usr/bin/env bash
# Tidemark on PostgreSQL against raw PostgreSQL on the same cluster (fsync on),
# in the same run (issue 10). Needs Debian's postgresql package (pgbench).
# Every figure is for N records (default 1,000,000), generated here.
#
# Usage: scripts/bench-postgres.sh TIDEMARK_BIN [N] [FLAG_KEYS]
#   orders    Tidemark `bench load` (batches of 1,000, 2 writers) vs raw
#             PostgreSQL batched upserts of the same rows (same columns and
#             values, 1,000 rows per statement, 2 connections), and vs the
#             data model's ceiling: those upserts plus their change-log rows
#             in plain SQL, one transaction per 1,000, no Tidemark
#   reads     Tidemark point reads (cold: first pass; warm) vs raw PK SELECTs
#             (32 connections each)
#   backup    `tidemark backup create` vs `pg_dump -Fc` of the same database
#   restore   `tidemark restore --store postgres` vs `pg_restore`
#   rss       the DB server's RSS after loading and reading N records
#   flagging  FLAG_KEYS keys (default N) flagged by `POST /v1/recovery/schedule`
#             in chunks of 50,000 in the N-record store after the restore
#
# PARTS (default "raw backup flagging") picks what runs besides the orders,
# reads and RSS: `PARTS= scripts/bench-postgres.sh BIN 10000000` loads 10M
# records and measures reads and RSS only (flagging in a 10M store without
# a 10M restore: `tidemark bench recovery --store postgres`).
set -u
PARTS=${PARTS-raw backup flagging}
part() { [[ " $PARTS " == *" $1 "* ]]; }
BIN=/usr/lib/postgresql/15/bin
TM=${1:?usage: scripts/bench-postgres.sh TIDEMARK_BIN [N] [FLAG_KEYS]}
N=${2:-1000000}
FLAG=${3:-$N}
PORT=15432 LISTEN=127.0.0.1:17272
D=$(mktemp -d); chmod 755 $D; chown postgres:postgres $D
P="setpriv --reuid=postgres --regid=postgres --init-groups --"
psql() { $BIN/psql -h 127.0.0.1 -p $PORT -U postgres -qAt "$@"; }
now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc; }
mb() { echo "scale=1; $1 / 1048576" | bc; }
rate() { echo "scale=1; $1 / $2" | bc; }
cleanup() {
  [ -n "${TMPID:-}" ] && kill "$TMPID" 2>/dev/null
  $P $BIN/pg_ctl stop -D $D/data -m fast >/dev/null 2>&1
  rm -rf "$D"
}
trap cleanup EXIT
$P $BIN/initdb -D $D/data -U postgres --auth=trust -E UTF8 >/dev/null
$P $BIN/postgres -D $D/data -p $PORT -k $D -c listen_addresses=127.0.0.1 -c fsync=on -c synchronous_commit=on -c shared_buffers=512MB -c max_wal_size=4GB -c max_connections=200 > $D/pg.log 2>&1 &
until $BIN/pg_isready -h 127.0.0.1 -p $PORT -U postgres >/dev/null 2>&1; do sleep 0.2; done
$BIN/createdb -h 127.0.0.1 -p $PORT -U postgres tm
URL=postgres://postgres@127.0.0.1:$PORT/tm
start_server() {
  $TM server --store postgres --database-url $URL --listen $LISTEN >> $D/tm.log 2>&1 &
  TMPID=$!
  until curl -sf http://$LISTEN/readyz >/dev/null; do sleep 0.2; done
}
stop_server() { kill $TMPID; wait $TMPID 2>/dev/null; TMPID=; }
rss() { echo "$(( $(ps -o rss= -p $TMPID) / 1024 )) MB"; }
echo "records: $N"

# Orders.
start_server
echo "tidemark-pg orders: $($TM bench load --db http://$LISTEN --records $N --batch 1000 --writers 2 --json)"
echo "tidemark-pg RSS after load: $(rss)"
echo "tidemark-pg reads cold: $($TM bench reads --target http://$LISTEN --records $N --duration 8 --json)"
echo "tidemark-pg reads warm: $($TM bench reads --target http://$LISTEN --records $N --duration 8 --json)"
echo "tidemark-pg RSS after reads: $(rss)"

if part raw; then
# Raw PostgreSQL, same cluster: the rows `bench load` writes (same columns,
# same values), 1,000 per statement, over 2 connections; then PK selects.
psql -d tm -c "CREATE TABLE raw (k text PRIMARY KEY, plan text, status text, services jsonb, roaming boolean, credit_limit bigint); CREATE SEQUENCE raw_batch START 0 MINVALUE 0"
cat > $D/up.sql <<'SQL'
SELECT nextval('raw_batch') AS b \gset
INSERT INTO raw (k, plan, status, services, roaming, credit_limit) SELECT '+8130' || lpad((:b * 1000 + g)::text, 8, '0'), (ARRAY['basic','gold','platinum'])[(:b * 1000 + g) % 3 + 1], 'active', jsonb_build_object('voice', true, 'sms', (:b * 1000 + g) % 2 = 0), (:b * 1000 + g) % 5 = 0, ((:b * 1000 + g) % 100) * 1000 FROM generate_series(0, 999) g ON CONFLICT (k) DO UPDATE SET plan = excluded.plan, status = excluded.status, services = excluded.services, roaming = excluded.roaming, credit_limit = excluded.credit_limit;
SQL
cat > $D/sel.sql <<SQL
\\set id random(0, $((N - 1)))
SELECT k, plan, status, services, roaming, credit_limit FROM raw WHERE k = '+8130' || lpad(:id::text, 8, '0');
SQL
T=$((N / 1000 / 2))
t0=$(now); $BIN/pgbench -h 127.0.0.1 -p $PORT -U postgres -n -f $D/up.sql -c 2 -j 2 -t $T tm >/dev/null 2>&1; t1=$(now)
echo "raw upserts: $((T * 2 * 1000)) rows in $(secs $t0 $t1) s = $(rate $((T * 2 * 1000)) $(secs $t0 $t1)) rows/s (batches of 1000, 2 connections)"
# The ceiling of Tidemark's data model, with no Tidemark in the loop: the same
# upsert plus one change-log row per order (jsonb record, source, seq,
# digest; the change log's two indexes), one transaction per 1,000 rows,
# 2 connections. Tidemark cannot beat this ratio to the raw upserts.
psql -d tm -c "CREATE TABLE model (tm_key text PRIMARY KEY, tm_epoch bigint NOT NULL, tm_seq bigint NOT NULL, plan text, status text, services jsonb, roaming boolean, credit_limit bigint); CREATE TABLE model_log (seq bigint PRIMARY KEY, epoch bigint NOT NULL, tbl text NOT NULL, key text NOT NULL, fields jsonb, source text NOT NULL, source_seq bigint NOT NULL, digest text NOT NULL, cleared boolean NOT NULL DEFAULT false); CREATE INDEX ON model_log (source, source_seq); CREATE SEQUENCE model_batch START 0 MINVALUE 0"
cat > $D/model.sql <<'SQL'
SELECT nextval('model_batch') AS b \gset
BEGIN;
INSERT INTO model (tm_key, tm_epoch, tm_seq, plan, status, services, roaming, credit_limit) SELECT '+8130' || lpad((:b * 1000 + g)::text, 8, '0'), 1, :b * 1000 + g, (ARRAY['basic','gold','platinum'])[(:b * 1000 + g) % 3 + 1], 'active', jsonb_build_object('voice', true, 'sms', (:b * 1000 + g) % 2 = 0), (:b * 1000 + g) % 5 = 0, ((:b * 1000 + g) % 100) * 1000 FROM generate_series(0, 999) g ON CONFLICT (tm_key) DO UPDATE SET tm_epoch = excluded.tm_epoch, tm_seq = excluded.tm_seq, plan = excluded.plan, status = excluded.status, services = excluded.services, roaming = excluded.roaming, credit_limit = excluded.credit_limit RETURNING tm_key, plan, status, services, roaming, credit_limit;
INSERT INTO model_log (seq, epoch, tbl, key, fields, source, source_seq, digest) SELECT :b * 1000 + g, 1, 'subscriber', '+8130' || lpad((:b * 1000 + g)::text, 8, '0'), jsonb_build_object('plan', (ARRAY['basic','gold','platinum'])[(:b * 1000 + g) % 3 + 1], 'status', 'active', 'services', jsonb_build_object('voice', true, 'sms', (:b * 1000 + g) % 2 = 0), 'roaming', (:b * 1000 + g) % 5 = 0, 'credit_limit', ((:b * 1000 + g) % 100) * 1000), 'bench-load-' || (:b % 2), :b * 1000 + g + 1, md5(g::text) || md5((:b * 1000 + g)::text) FROM generate_series(0, 999) g;
UPDATE tm_meta_model SET value = (:b * 1000 + 999)::text WHERE name = 'seq' AND value::bigint < :b * 1000 + 999;
COMMIT;
SQL
psql -d tm -c "CREATE TABLE tm_meta_model (name text PRIMARY KEY, value text NOT NULL); INSERT INTO tm_meta_model VALUES ('seq', '0')"
t0=$(now); $BIN/pgbench -h 127.0.0.1 -p $PORT -U postgres -n -f $D/model.sql -c 2 -j 2 -t $T tm >/dev/null 2>&1; t1=$(now)
echo "data-model ceiling (the upserts plus their change-log rows, plain SQL, no Tidemark): $((T * 2 * 1000)) rows in $(secs $t0 $t1) s = $(rate $((T * 2 * 1000)) $(secs $t0 $t1)) rows/s (batches of 1000, 2 connections)"
psql -d tm -c "DROP TABLE model, model_log, tm_meta_model; DROP SEQUENCE model_batch"
psql -d tm -c "CHECKPOINT"
echo "raw pk selects (32 connections): $($BIN/pgbench -h 127.0.0.1 -p $PORT -U postgres -n -f $D/sel.sql -c 32 -j 2 -T 8 -M prepared tm 2>/dev/null | grep -E '^tps')"
psql -d tm -c "DROP TABLE raw; DROP SEQUENCE raw_batch"
fi

if ! part backup; then stop_server; exit 0; fi
# Backup: Tidemark (online, through the server) vs pg_dump -Fc.
SIZE=$(psql -d tm -c "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'tidemark' AND c.relkind = 'r'")
echo "database: tidemark schema $(mb $SIZE) MB in PostgreSQL"
t0=$(now); $TM backup create --to $D/b1 --server http://$LISTEN >/dev/null || echo "backup failed"; t1=$(now)
echo "tidemark backup: $(secs $t0 $t1) s, $(mb $(du -sb $D/b1 | cut -f1)) MB written, $(rate $(mb $SIZE) $(secs $t0 $t1)) MB/s of database"
# The read side's floor: every table of the schema through COPY TO STDOUT
# (binary) into /dev/null; if the backup takes far longer, COPY would not
# speed it up (the snapshot file's writer is the bottleneck).
t0=$(now)
for t in $(psql -d tm -c "SELECT tablename FROM pg_tables WHERE schemaname = 'tidemark'"); do
  psql -d tm -c "COPY tidemark.\"$t\" TO STDOUT (FORMAT binary)" > /dev/null
done
t1=$(now)
echo "COPY TO STDOUT of every table (read floor): $(secs $t0 $t1) s"
t0=$(now); $BIN/pg_dump -h 127.0.0.1 -p $PORT -U postgres -Fc -n tidemark -f $D/dump.fc tm; t1=$(now)
echo "pg_dump -Fc: $(secs $t0 $t1) s, $(mb $(stat -c %s $D/dump.fc)) MB written, $(rate $(mb $SIZE) $(secs $t0 $t1)) MB/s of database"
stop_server

# Restore: Tidemark (with its safety backup) vs pg_restore into a fresh database.
t0=$(now); $TM restore --from $D/b1 --store postgres --database-url $URL --data-dir $D/tmdata --no-safety-backup >/dev/null 2>$D/restore.err || { echo "restore failed:"; cat $D/restore.err; }; t1=$(now)
echo "tidemark restore: $(secs $t0 $t1) s, $(rate $(mb $SIZE) $(secs $t0 $t1)) MB/s of database (--no-safety-backup, as pg_restore takes none)"
$BIN/createdb -h 127.0.0.1 -p $PORT -U postgres tm2
t0=$(now); $BIN/pg_restore -h 127.0.0.1 -p $PORT -U postgres -d tm2 $D/dump.fc; t1=$(now)
echo "pg_restore: $(secs $t0 $t1) s, $(rate $(mb $SIZE) $(secs $t0 $t1)) MB/s of database"
$BIN/dropdb -h 127.0.0.1 -p $PORT -U postgres tm2
rm -rf $D/b1 $D/dump.fc

if ! part flagging; then exit 0; fi
# Flagging after the restore: the schedule list for FLAG keys, 50,000 a request.
start_server
SRC=bench-load-0
HW=$(curl -sf http://$LISTEN/v1/sources | python3 -c "import json,sys; print(json.load(sys.stdin)['$SRC'])")
python3 - "$D/chunks" "$FLAG" "$SRC" "$HW" <<'PY'
import json, os, sys
out, n, src, hw = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
os.makedirs(out)
step = 50000
for c, lo in enumerate(range(0, n, step)):
    entries = [{"table": "subscriber", "key": "+8130%08d" % i, "through_seq": hw + 1} for i in range(lo, min(n, lo + step))]
    with open(os.path.join(out, "%06d.json" % c), "w") as f:
        json.dump({"source": src, "entries": entries, "final": False}, f)
PY
t0=$(now)
for f in $D/chunks/*.json; do
  curl -sf -X POST -H 'content-type: application/json' --data-binary @$f http://$LISTEN/v1/recovery/schedule >/dev/null || echo "schedule chunk $f failed"
done
t1=$(now)
echo "flagging: $FLAG keys in a $N-record store in $(secs $t0 $t1) s ($(curl -sf http://$LISTEN/v1/recovery | python3 -c 'import json,sys; print(json.load(sys.stdin)["flagged"])') flagged)"
echo "tidemark-pg RSS at the end: $(rss)"
stop_server
