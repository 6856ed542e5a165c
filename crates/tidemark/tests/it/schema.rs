//! Schema publication (S1, S2, S9, S10): stage, plan, publish to the DB
//! server and to service servers that adopt it live, orders on the new
//! column, refusals, rollback, and a crash at every step of a publish.

use crate::harness::*;
use serde_json::{json, Value};
use std::path::Path;

/// The default schema plus `extra` columns of `subscriber`, `indexes` on
/// it, and `more` tables.
fn document(extra: Value, indexes: Value, more: Value) -> Value {
    let mut cols = json!([
        {"name": "plan", "type": "string"}, {"name": "status", "type": "string"},
        {"name": "services", "type": "json"}, {"name": "roaming", "type": "boolean"},
        {"name": "credit_limit", "type": "integer"}
    ]);
    cols.as_array_mut()
        .unwrap()
        .extend(extra.as_array().unwrap().iter().cloned());
    let mut tables = json!({"subscriber": {"columns": cols, "indexes": indexes}});
    for (k, v) in more.as_object().unwrap() {
        tables[k] = v.clone();
    }
    json!({"tables": tables})
}

/// The document of the test's publish: a column, an index, a table.
fn v2_document() -> Value {
    document(
        json!([{"name": "tier", "type": "integer"}]),
        json!([{"columns": ["plan"]}]),
        json!({"device": {"columns": [{"name": "model", "type": "string"}]}}),
    )
}

/// `tidemark schema ARGS`; returns (success, stdout, stderr).
fn schema_cmd(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let mut all = vec!["schema"];
    all.extend_from_slice(args);
    let out = run(dir, &all, None, &[]);
    let mut err = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        // How it ended (a signal leaves no line), for the failure message.
        err.push_str(&format!(" [{}]", out.status));
    }
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        err,
    )
}

/// Stages `doc` from a file; returns (success, stderr).
fn stage(dir: &Path, db: &str, doc: &Value) -> (bool, String) {
    let file = dir.join("schema.json");
    std::fs::write(&file, serde_json::to_vec_pretty(doc).unwrap()).unwrap();
    let (ok, _, err) = schema_cmd(dir, &["stage", "--server", db, file.to_str().unwrap()]);
    (ok, err)
}

async fn schema_version(url: &str) -> u64 {
    get_json(&format!("{url}/v1/schema")).await.1["version"]
        .as_u64()
        .expect("version in /v1/schema")
}

async fn versions(db: &str) -> Vec<u64> {
    let (_, v) = get_json(&format!("{db}/v1/schema/versions")).await;
    v["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .map(|e| e["version"].as_u64().unwrap())
        .collect()
}

async fn field(url: &str, table: &str, key: &str, name: &str) -> Option<Value> {
    let (status, body) = get_json(&format!("{url}/v1/records/{table}/{key}")).await;
    (status == 200).then(|| body["fields"].get(name).cloned())?
}

fn order(seq: u64, table: &str, key: &str, fields: Value) -> Value {
    json!({"orders": [{"source": "t", "seq": seq, "table": table, "key": key, "op": "upsert", "fields": fields}]})
}

#[tokio::test(flavor = "multi_thread")]
async fn a_schema_is_staged_planned_published_and_served_live() {
    for engine in engines("a_schema_is_staged_planned_published_and_served_live") {
        a_schema_is_staged_planned_published_and_served_live_on(engine).await;
    }
}

async fn a_schema_is_staged_planned_published_and_served_live_on(engine: Engine) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let db = db_server_on(dir, engine, &[]).await;
    let svc_a = service(dir, "svc-a", &db.url, "latest-only", &[]).await;
    let svc_b = service(dir, "svc-b", &db.url, "accept-stale", &[]).await;
    let orders = format!("{}/v1/orders", db.url);

    // A record cached by both service servers before the publish.
    let (s, _) = post_raw(
        &orders,
        order(1, "subscriber", "k1", json!({"plan": "gold"})).to_string(),
    )
    .await;
    assert_eq!(s, 200);
    for svc in [&svc_a, &svc_b] {
        assert_eq!(
            field(&svc.url, "subscriber", "k1", "plan").await,
            Some(json!("gold"))
        );
        assert_eq!(field(&svc.url, "subscriber", "k1", "tier").await, None);
    }
    assert_eq!(versions(&db.url).await, vec![1]);

    // Unsafe changes are refused, each with its own code.
    let dropped =
        json!({"tables": {"subscriber": {"columns": [{"name": "plan", "type": "string"}]}}});
    let retyped = document(json!([]), json!([]), json!({}));
    let mut retyped = retyped;
    retyped["tables"]["subscriber"]["columns"][4]["type"] = json!("string");
    let mut renamed = document(json!([]), json!([]), json!({}));
    renamed["tables"]["subscriber"]["columns"][0]["name"] = json!("tariff");
    for (doc, code) in [
        (dropped, "schema_drop_refused"),
        (retyped, "schema_type_change_refused"),
        (renamed, "schema_rename_refused"),
        (
            document(json!([]), json!([]), json!({})),
            "schema_unchanged",
        ),
    ] {
        let (ok, err) = stage(dir, &db.url, &doc);
        assert!(!ok && err.contains(code), "{code}: {err}");
    }
    let (s, _) = get_json(&format!("{}/v1/schema/pending", db.url)).await;
    assert_eq!(s, 409, "nothing was staged by the refusals");

    // Stage version 2.
    let (ok, err) = stage(dir, &db.url, &v2_document());
    assert!(ok, "{err}");
    let (ok, out, err) = schema_cmd(dir, &["show", "--server", &db.url, "--pending"]);
    assert!(ok && err.contains("staged schema version 2"), "{err}");
    // The schema document alone (CONTRACT.md: `schema stage` takes it).
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        doc.get("version").is_none()
            && doc["tables"]["subscriber"].to_string().contains("\"tier\""),
        "{out}"
    );
    let (ok, out, _) = schema_cmd(dir, &["show", "--server", &db.url]);
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        ok && doc.get("version").is_none() && doc.get("tables").is_some(),
        "{out}"
    );

    // An order naming the staged column is refused, naming the version.
    let (s, body) = post_raw(
        &orders,
        order(2, "subscriber", "k1", json!({"tier": 3})).to_string(),
    )
    .await;
    assert_eq!(s, 400, "{body}");
    assert_eq!(body["error"]["code"], "unknown_column");
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(msg.contains("pending schema version 2"), "{msg}");

    // The OpS, which validates against the schema in force, says the same.
    let journal = dir.join("journal");
    let line = json!({"table": "subscriber", "key": "k2", "op": "upsert", "fields": {"tier": 1}})
        .to_string();
    let out = run(
        dir,
        &[
            "ops",
            "submit",
            "--db",
            &db.url,
            "--journal",
            journal.to_str().unwrap(),
            "-",
        ],
        Some(line.as_bytes()),
        &[],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("pending schema version 2"),
        "{err}"
    );

    // The plan: S1's five parts and the engine's DDL.
    let (ok, out, err) = schema_cmd(dir, &["plan", "--server", &db.url, "--json"]);
    assert!(ok, "{err}");
    let plan: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (plan["from_version"].as_u64(), plan["to_version"].as_u64()),
        (Some(1), Some(2))
    );
    assert_eq!(
        plan["new_columns"],
        json!([{"table": "subscriber", "name": "tier", "type": "integer"}])
    );
    assert_eq!(plan["new_tables"], json!(["device"]));
    assert!(plan["tables"]["subscriber"]["columns"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["name"] == "tier"));
    assert_eq!(plan["indexes"][0]["columns"], json!(["plan"]));
    assert_eq!(plan["indexes"][0]["new"], json!(true));
    assert_eq!(plan["changes"].as_array().unwrap().len(), 3, "{plan}");
    let ddl: Vec<&str> = plan["ddl"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    // PostgreSQL's DDL is resumable (IF NOT EXISTS): a publish a crash cut
    // short is finished by running it again.
    let add_column = match engine {
        Engine::Sqlite => "ALTER TABLE \"subscriber\" ADD COLUMN \"tier\" INTEGER",
        Engine::Postgres => "ALTER TABLE \"subscriber\" ADD COLUMN IF NOT EXISTS \"tier\" bigint",
    };
    assert!(ddl.contains(&add_column), "{ddl:?}");
    assert!(
        ddl.iter().any(|d| d.starts_with("CREATE TABLE \"device\"")),
        "{ddl:?}"
    );
    assert!(ddl.iter().any(|d| d.starts_with("CREATE INDEX")), "{ddl:?}");
    // PostgreSQL builds the index on the existing table concurrently,
    // before the transaction; the plan says which statements run there.
    let before = plan["ddl_before_transaction"].as_u64().unwrap() as usize;
    match engine {
        Engine::Sqlite => assert_eq!(before, 0, "{plan}"),
        Engine::Postgres => {
            assert!(
                ddl[..before].iter().all(|d| !d.starts_with("CREATE TABLE")),
                "{ddl:?}"
            );
            assert!(
                ddl[..before].iter().any(|d| d.contains("CONCURRENTLY")),
                "{ddl:?}"
            );
            assert!(
                ddl[before..].iter().all(|d| !d.contains("CONCURRENTLY")),
                "{ddl:?}"
            );
        }
    }
    let (ok, text, _) = schema_cmd(dir, &["plan", "--server", &db.url]);
    assert!(
        ok && text.contains("5. new tables") && text.contains("ADD COLUMN"),
        "{text}"
    );
    assert_eq!(
        text.contains("before the transaction"),
        engine == Engine::Postgres,
        "{text}"
    );
    assert_eq!(schema_version(&db.url).await, 1, "planning changes nothing");

    // A script reading the watch stream, which reports no version: a
    // publish is not kept waiting for it (before, it failed after --wait).
    let mut raw = reqwest::get(format!("{}/v1/watch?subscriber=raw-watcher", db.url))
        .await
        .unwrap();
    assert_eq!(raw.status(), 200);

    // Publish: exits 0 once the DB server and both service servers run it.
    let (ok, out, err) = schema_cmd(dir, &["publish", "--server", &db.url, "--wait", "30"]);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("svc-a runs version 2") && out.contains("svc-b runs version 2"),
        "{out}"
    );
    let mut seen = String::new();
    while !seen.contains("event: schema") {
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(10), raw.chunk())
            .await
            .expect("the schema event in time")
            .unwrap()
            .expect("the stream stays open");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    let (_, st) = get_json(&format!("{}/v1/schema/publish", db.url)).await;
    assert_eq!(st["complete"], true, "{st}");
    let listed = st["servers"].as_array().unwrap();
    assert!(
        listed
            .iter()
            .any(|s| s["name"] == "raw-watcher" && s["kind"] == "watch_stream"),
        "{st}"
    );
    assert!(
        listed
            .iter()
            .any(|s| s["name"] == "svc-a" && s["kind"] == "service_server"),
        "{st}"
    );
    drop(raw);
    assert_eq!(schema_version(&db.url).await, 2);
    for svc in [&svc_a, &svc_b] {
        let (_, st) = get_json(&format!("{}/v1/state", svc.url)).await;
        assert_eq!(st["schema_version"], 2, "{st}");
    }
    let (_, reg) = get_json(&format!("{}/v1/schema/versions", db.url)).await;
    assert_eq!(reg["current"], 2);
    assert_eq!(reg["versions"][1]["published_by"], "local");
    assert!(reg["versions"][1]["published_at"].is_string());
    assert_eq!(
        reg["versions"][1]["schema"]["tables"]["subscriber"]["indexes"],
        json!([{"columns": ["plan"]}])
    );
    let (s, _) = get_json(&format!("{}/v1/schema/pending", db.url)).await;
    assert_eq!(s, 409, "the pending version is gone once published");

    // Old records read the new column as null, through every server.
    assert_eq!(
        field(&db.url, "subscriber", "k1", "tier").await,
        Some(Value::Null)
    );
    for svc in [&svc_a, &svc_b] {
        assert_eq!(
            field(&svc.url, "subscriber", "k1", "tier").await,
            Some(Value::Null),
            "{} serves the new column of an old record",
            svc.name
        );
    }
    // Orders on the new column and the new table are accepted and pushed.
    let (s, body) = post_raw(
        &orders,
        order(2, "subscriber", "k1", json!({"tier": 3})).to_string(),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    let (s, body) = post_raw(
        &orders,
        order(3, "device", "d1", json!({"model": "x1"})).to_string(),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    for svc in [&svc_a, &svc_b] {
        let url = svc.url.clone();
        eventually(
            10,
            "the new column's value to reach the service server",
            || {
                let url = url.clone();
                async move {
                    (field(&url, "subscriber", "k1", "tier").await == Some(json!(3))).then_some(())
                }
            },
        )
        .await;
        assert_eq!(
            field(&svc.url, "device", "d1", "model").await,
            Some(json!("x1"))
        );
    }

    // The OpS fetches the schema per run: it now accepts the column.
    ops_submit(dir, &db.url, &format!("{line}\n"), &[]);
    assert_eq!(
        field(&db.url, "subscriber", "k2", "tier").await,
        Some(json!(1))
    );

    // Rollback of version 2 is refused: its column holds data.
    let (ok, _, err) = schema_cmd(dir, &["rollback", "--server", &db.url]);
    assert!(
        !ok && err.contains("rollback_refused") && err.contains("holds data"),
        "{err}"
    );
    assert_eq!(
        err.matches("rollback refused").count(),
        1,
        "said once: {err}"
    );
    assert_eq!(schema_version(&db.url).await, 2);

    // Version 3 adds an empty column; its rollback is version 4.
    let doc3 = document(
        json!([{"name": "tier", "type": "integer"}, {"name": "note", "type": "string"}]),
        json!([{"columns": ["plan"]}]),
        json!({"device": {"columns": [{"name": "model", "type": "string"}]}}),
    );
    let (ok, err) = stage(dir, &db.url, &doc3);
    assert!(ok, "{err}");
    let (ok, out, err) = schema_cmd(dir, &["publish", "--server", &db.url, "--wait", "30"]);
    assert!(ok, "{out}{err}");
    assert_eq!(
        field(&db.url, "subscriber", "k1", "note").await,
        Some(Value::Null)
    );
    // A schema staged meanwhile is discarded by the rollback, which says
    // so (it was silent).
    let staged = document(
        json!([{"name": "tier", "type": "integer"}, {"name": "note", "type": "string"}, {"name": "later", "type": "string"}]),
        json!([{"columns": ["plan"]}]),
        json!({"device": {"columns": [{"name": "model", "type": "string"}]}}),
    );
    let (ok, err) = stage(dir, &db.url, &staged);
    assert!(ok, "{err}");
    let (ok, out, err) = schema_cmd(dir, &["rollback", "--server", &db.url, "--wait", "30"]);
    assert!(ok, "{out}{err}");
    assert!(
        err.contains("discarded the schema that was staged"),
        "{err}"
    );
    assert_eq!(schema_version(&db.url).await, 4);
    assert_eq!(versions(&db.url).await, vec![1, 2, 3, 4]);
    assert_eq!(field(&db.url, "subscriber", "k1", "note").await, None);
    assert_eq!(
        field(&db.url, "subscriber", "k1", "tier").await,
        Some(json!(3))
    );
    for svc in [&svc_a, &svc_b] {
        let (_, st) = get_json(&format!("{}/v1/state", svc.url)).await;
        assert_eq!(st["schema_version"], 4, "{st}");
    }
    let (s, body) = post_raw(
        &orders,
        order(4, "subscriber", "k1", json!({"note": "x"})).to_string(),
    )
    .await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (400, Some("unknown_column"))
    );

    let (ok, out, _) = schema_cmd(dir, &["status", "--server", &db.url]);
    assert!(ok && out.contains("complete"), "{out}");
    let (_, audit) = get_json(&format!("{}/v1/audit", db.url)).await;
    let actions: Vec<&str> = audit
        .as_array()
        .expect("audit entries")
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for a in ["schema_stage", "schema_publish", "schema_rollback"] {
        assert!(actions.contains(&a), "{a} in {actions:?}");
    }

    // A second rollback goes on back, to version 1's tables (refused: the
    // tier column holds data); before, it brought version 3's note back.
    let (ok, _, err) = schema_cmd(dir, &["rollback", "--server", &db.url]);
    assert!(
        !ok && err.contains("rollback_refused") && err.contains("holds data"),
        "{err}"
    );
    assert_eq!(schema_version(&db.url).await, 4);
}

/// The steps of a publish a crash can hit, in order.
const STEPS: &[&str] = &[
    "schema.publish.after_job",
    "schema.publish.before_apply",
    "schema.ddl.before_commit",
    "schema.publish.after_apply",
    "schema.publish.after_announce",
];

#[tokio::test(flavor = "multi_thread")]
async fn a_crash_at_any_step_of_a_publish_ends_on_exactly_one_version() {
    for engine in engines("a_crash_at_any_step_of_a_publish_ends_on_exactly_one_version") {
        for step in STEPS {
            a_crash_during_publish_on(engine, step).await;
        }
    }
}

async fn a_crash_during_publish_on(engine: Engine, step: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let spec = format!("{step}=1");
    let mut db = db_server_on(dir, engine, &[("TIDEMARK_FAILPOINTS", &spec)]).await;
    let (s, _) = post_raw(
        &format!("{}/v1/orders", db.url),
        order(1, "subscriber", "k1", json!({"plan": "gold"})).to_string(),
    )
    .await;
    assert_eq!(s, 200);
    let (ok, err) = stage(dir, &db.url, &v2_document());
    assert!(ok, "{err}");
    // The publish request dies with the server (or, at the last step, is
    // answered just before the announcement kills it).
    let _ = reqwest::Client::new()
        .post(format!("{}/v1/schema/publish", db.url))
        .send()
        .await;
    let child = db.child.as_mut().expect("running");
    let status = tokio::task::block_in_place(|| child.wait()).expect("wait for the crash");
    assert!(!status.success(), "{step}: the server must have crashed");
    assert!(
        db.log_text().contains(&format!("failpoint {step} hit")),
        "{step}: {}",
        db.log_text()
    );
    db.child = None;

    // Restarted, it resumes the job: before it serves (the embedded
    // engine), or once it holds the lease (PostgreSQL: the dead process's
    // lease expires first).
    let args = server_args(dir, engine);
    let db2 = Proc::start("db2", dir, &strs(&args), &[]);
    db2.wait_ok("/readyz").await;
    if engine == Engine::Sqlite {
        assert_eq!(schema_version(&db2.url).await, 2, "{step}");
    }
    let url = db2.url.clone();
    eventually(30, "the restarted server to finish the publish", || {
        let url = url.clone();
        async move {
            let (_, st) = get_json(&format!("{url}/v1/schema/publish")).await;
            (st["current_version"] == 2 && st["job"]["step"] == "done").then_some(())
        }
    })
    .await;
    assert_eq!(
        versions(&db2.url).await,
        vec![1, 2],
        "{step}: exactly one new version"
    );
    let (_, st) = get_json(&format!("{}/v1/schema/publish", db2.url)).await;
    assert_eq!(st["job"]["step"], "done", "{step}: {st}");
    assert!(st["job"]["resumed"].as_u64().unwrap() >= 1, "{step}: {st}");
    assert!(st["pending_version"].is_null(), "{step}: {st}");
    let (s, body) = post_raw(
        &format!("{}/v1/orders", db2.url),
        order(2, "subscriber", "k1", json!({"tier": 7})).to_string(),
    )
    .await;
    assert_eq!(s, 200, "{step}: {body}");
    assert_eq!(
        field(&db2.url, "subscriber", "k1", "tier").await,
        Some(json!(7))
    );
    assert_eq!(
        field(&db2.url, "subscriber", "k1", "plan").await,
        Some(json!("gold"))
    );
    let (s, _) = post_raw(
        &format!("{}/v1/orders", db2.url),
        order(3, "device", "d1", json!({"model": "m"})).to_string(),
    )
    .await;
    assert_eq!(s, 200, "{step}: the new table exists");
}

/// A stand-in DB server whose schema has a column type this build does
/// not know; every other request is answered 503.
async fn newer_db_server() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let n = sock.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]);
                let (status, body) = if req.starts_with("GET /v1/schema ") {
                    ("200 OK", json!({"version": 9, "tables": {"subscriber": {"columns": [
                        {"name": "plan", "type": "string"}, {"name": "price", "type": "decimal"}]}}}).to_string())
                } else {
                    (
                        "503 Service Unavailable",
                        json!({"error": {"code": "not_ready", "message": "stand-in"}}).to_string(),
                    )
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_server_refuses_a_schema_it_cannot_understand_unless_told_to_ignore_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let db = newer_db_server().await;
    let args = [
        "service",
        "--db",
        &db,
        "--id",
        "svc-old",
        "--policy",
        "accept-stale",
        "--listen",
        "127.0.0.1:0",
    ];
    let out = run(dir, &args, None, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("refused to start")
            && err.contains("subscriber.price")
            && err.contains("--ignore-schema-skew"),
        "{err}"
    );
    // With the explicit override it runs.
    let svc = Proc::start(
        "svc-override",
        dir,
        &[
            "service",
            "--db",
            &db,
            "--id",
            "svc-old",
            "--policy",
            "accept-stale",
            "--ignore-schema-skew",
        ],
        &[],
    );
    svc.wait_ok("/healthz").await;
    assert!(
        svc.log_text().contains("schema skew ignored"),
        "{}",
        svc.log_text()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restore_keeps_the_schema_growing_and_service_servers_adopt_it() {
    for engine in engines("a_restore_keeps_the_schema_growing_and_service_servers_adopt_it") {
        a_restore_keeps_the_schema_growing_on(engine).await;
    }
}

fn manifest_schema_version(backup: &Path) -> u64 {
    let text = std::fs::read_to_string(backup.join("manifest.json")).expect("a manifest");
    let json_part = &text[..text.rfind('}').unwrap() + 1];
    let m: Value = serde_json::from_str(json_part).unwrap_or_else(|e| panic!("{e}: {text}"));
    m["schema_version"]
        .as_u64()
        .expect("schema_version in the manifest")
}

async fn svc_schema_version(svc: &str, want: u64, what: &str) {
    let url = svc.to_owned();
    eventually(20, what, || {
        let url = url.clone();
        async move {
            let (_, st) = get_json(&format!("{url}/v1/state")).await;
            (st["schema_version"] == want).then_some(())
        }
    })
    .await;
}

/// `GET /v1/schema/publish` once it has warnings.
async fn publish_warnings(db: &str, what: &str) -> Value {
    let url = db.to_owned();
    eventually(20, what, || {
        let url = url.clone();
        async move {
            let (_, st) = get_json(&format!("{url}/v1/schema/publish")).await;
            st["warnings"]
                .as_array()
                .is_some_and(|w| !w.is_empty())
                .then_some(st)
        }
    })
    .await
}

async fn a_restore_keeps_the_schema_growing_on(engine: Engine) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut db = db_server_on(dir, engine, &[]).await;
    let addr = db.url.trim_start_matches("http://").to_owned();
    let svc = service(dir, "svc-a", &db.url, "accept-stale", &[]).await;
    let (s, _) = post_raw(
        &format!("{}/v1/orders", db.url),
        order(1, "subscriber", "k1", json!({"plan": "gold"})).to_string(),
    )
    .await;
    assert_eq!(s, 200);
    let b1 = backup_to(dir, &db.url, "b1");
    assert_eq!(manifest_schema_version(&b1), 1);
    let (ok, err) = stage(dir, &db.url, &v2_document());
    assert!(ok, "{err}");
    let (ok, out, err) = schema_cmd(dir, &["publish", "--server", &db.url, "--wait", "20"]);
    assert!(ok, "{out}{err}");
    let b2 = backup_to(dir, &db.url, "b2");
    assert_eq!(
        manifest_schema_version(&b2),
        2,
        "a backup carries the schema version"
    );

    // Restoring the older backup over the live store keeps version 2: the
    // version only grows, and the OpS can replay orders on its columns.
    db.terminate();
    let out = run(dir, &strs(&restore_args(dir, engine, &b1)), None, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("published again"), "{stdout}");
    let mut db = Proc::start_at("db-restored", dir, &strs(&server_args(dir, engine)), &addr);
    db.wait_ok("/readyz").await;
    assert_eq!(schema_version(&db.url).await, 2);
    assert_eq!(versions(&db.url).await, vec![1, 2]);
    let (_, schema) = get_json(&format!("{}/v1/schema", db.url)).await;
    assert_eq!(
        schema["tables"]["subscriber"]["indexes"],
        json!([{"columns": ["plan"]}])
    );
    assert!(schema["tables"]["device"].is_object());

    // Disaster: the store is lost; the newer backup brings its schema
    // back, and the connected service server adopts it on `epoch`.
    let (ok, err) = stage(
        dir,
        &db.url,
        &document(
            json!([{"name": "tier", "type": "integer"}, {"name": "note", "type": "string"}]),
            json!([{"columns": ["plan"]}]),
            json!({"device": {"columns": [{"name": "model", "type": "string"}]}}),
        ),
    );
    assert!(ok, "{err}");
    let (ok, out, err) = schema_cmd(dir, &["publish", "--server", &db.url, "--wait", "20"]);
    assert!(ok, "{out}{err}");
    svc_schema_version(&svc.url, 3, "the service server to run version 3").await;
    db.kill9();
    lose_data(dir, engine).await;
    let out = run(dir, &strs(&restore_args(dir, engine, &b2)), None, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut db = Proc::start_at(
        "db-restored-2",
        dir,
        &strs(&server_args(dir, engine)),
        &addr,
    );
    db.wait_ok("/readyz").await;
    assert_eq!(schema_version(&db.url).await, 2);
    svc_schema_version(
        &svc.url,
        2,
        "the service server to adopt the restored schema",
    )
    .await;
    // The schema went back (no live store to carry version 3 from): the
    // DB server learns it from the service server, and says so with the
    // fix in `schema status` and in the refusal of an order naming a
    // column of the lost version.
    let fix = "stage and publish the newer schema again";
    let st = publish_warnings(&db.url, "schema status to warn that the schema went back").await;
    let w = st["warnings"][0].as_str().unwrap();
    assert!(
        w.contains("'svc-a' ran schema version 3") && w.contains(fix),
        "{w}"
    );
    let (ok, out, _) = schema_cmd(dir, &["status", "--server", &db.url]);
    assert!(ok && out.contains("WARNING") && out.contains(fix), "{out}");
    let (s, body) = post_raw(
        &format!("{}/v1/orders", db.url),
        order(2, "subscriber", "k1", json!({"note": "n"})).to_string(),
    )
    .await;
    assert_eq!(s, 400, "{body}");
    assert_eq!(body["error"]["code"], "unknown_column", "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains(fix),
        "{body}"
    );
    assert!(
        svc.log_text().contains("went back from version 3 to 2"),
        "{}",
        svc.log_text()
    );
    // The warning lives in the DB server's memory: a restart loses it, and
    // the service server, reporting again on its new stream, brings it
    // back (it says so at every report until the version is 3 again).
    db.terminate();
    let db = Proc::start_at("db-restarted", dir, &strs(&server_args(dir, engine)), &addr);
    db.wait_ok("/readyz").await;
    let st = publish_warnings(&db.url, "the warning back after a restart").await;
    assert!(
        st["warnings"][0]
            .as_str()
            .unwrap()
            .contains("'svc-a' ran schema version 3"),
        "{st}"
    );
}

/// S9 over PostgreSQL with two instances: the primary dies at a step of a
/// publish; the standby takes over, finishes the job, and both instances
/// (the dead one restarted) and the service server end on one version.
#[tokio::test(flavor = "multi_thread")]
async fn the_next_primary_finishes_a_publish_the_dead_one_left() {
    let Some(pg) = tidemark_testkit::postgres::PgCluster::shared("schema_ha") else {
        eprintln!("skipped: no PostgreSQL");
        return;
    };
    for (i, step) in [
        "schema.publish.before_apply",
        "schema.ddl.before_commit",
        "schema.publish.after_apply",
        "schema.publish.after_announce",
    ]
    .into_iter()
    .enumerate()
    {
        let url = pg.database(&format!("schema_ha_{i}")).expect("a database");
        the_next_primary_finishes_at(&url, step).await;
    }
}

fn instance_args(url: &str) -> Vec<&str> {
    vec![
        "server",
        "--store",
        "postgres",
        "--database-url",
        url,
        "--lease-ttl-ms",
        "600",
        "--failover-wait",
        "15",
    ]
}

async fn role(url: &str) -> Option<String> {
    let (s, st) = get_json(&format!("{url}/v1/state")).await;
    (s == 200).then(|| st["role"].as_str().map(str::to_owned))?
}

async fn the_next_primary_finishes_at(url: &str, step: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let spec = format!("{step}=1");
    let mut a = Proc::start(
        "a",
        dir,
        &instance_args(url),
        &[("TIDEMARK_FAILPOINTS", &spec)],
    );
    a.wait_ok("/readyz").await;
    let a_url = a.url.clone();
    eventually(20, "the first instance to be primary", || {
        let u = a_url.clone();
        async move { (role(&u).await.as_deref() == Some("primary")).then_some(()) }
    })
    .await;
    let b = Proc::start("b", dir, &instance_args(url), &[]);
    b.wait_ok("/readyz").await;
    let svc = service(
        dir,
        "svc-a",
        &format!("{},{}", a.url, b.url),
        "accept-stale",
        &[],
    )
    .await;
    let (s, body) = post_raw(
        &format!("{}/v1/orders", b.url),
        order(1, "subscriber", "k1", json!({"plan": "gold"})).to_string(),
    )
    .await;
    assert_eq!(s, 200, "{step}: {body}");
    // Staged through the standby: forwarded to the primary.
    let (ok, err) = stage(dir, &b.url, &v2_document());
    assert!(ok, "{step}: {err}");
    // Published through the standby, which forwards it to the primary:
    // the primary dies with the request, so the answer is lost.
    let (cli_dir, b_for_cli) = (dir.to_path_buf(), b.url.clone());
    let publish = tokio::task::spawn_blocking(move || {
        schema_cmd(
            &cli_dir,
            &["publish", "--server", &b_for_cli, "--wait", "30"],
        )
    });
    let child = a.child.as_mut().expect("running");
    let status = tokio::task::block_in_place(|| child.wait()).expect("wait for the crash");
    assert!(!status.success(), "{step}: the primary must have crashed");
    assert!(
        a.log_text().contains(&format!("failpoint {step} hit")),
        "{step}"
    );
    a.child = None;

    // The standby takes over and finishes the job.
    let b_url = b.url.clone();
    eventually(
        30,
        "the standby to take over and finish the publish",
        || {
            let u = b_url.clone();
            async move {
                let (_, st) = get_json(&format!("{u}/v1/schema/publish")).await;
                (role(&u).await.as_deref() == Some("primary")
                    && st["current_version"] == 2
                    && st["job"]["step"] == "done")
                    .then_some(())
            }
        },
    )
    .await;
    assert_eq!(
        versions(&b.url).await,
        vec![1, 2],
        "{step}: exactly one new version"
    );
    let (_, st) = get_json(&format!("{}/v1/schema/publish", b.url)).await;
    assert!(st["job"]["resumed"].as_u64().unwrap() >= 1, "{step}: {st}");
    // The command tells the publish happened, though its answer was lost
    // (before, it said "publish refused" and failed). Past `after_apply`
    // the answer is sent while the announcing runs in the background, so
    // it may leave before the crash: then it is an ordinary success.
    let (ok, out, err) = publish.await.unwrap();
    assert!(ok, "{step}: {out} {err}");
    let answered = step == "schema.publish.after_announce"
        && out.contains("schema version 2 is in force on the DB server");
    assert!(
        answered || err.contains("the answer to the publish was lost"),
        "{step}: {out} {err}"
    );
    assert!(
        b.log_text()
            .contains("resuming a schema job left unfinished"),
        "{step}: the new primary resumed it"
    );
    let (s, body) = post_raw(
        &format!("{}/v1/orders", b.url),
        order(2, "subscriber", "k1", json!({"tier": 7})).to_string(),
    )
    .await;
    assert_eq!(s, 200, "{step}: {body}");

    // The dead instance, restarted, is a standby on the same version.
    let a2 = Proc::start("a2", dir, &instance_args(url), &[]);
    a2.wait_ok("/readyz").await;
    assert_eq!(schema_version(&a2.url).await, 2, "{step}");
    assert_eq!(
        field(&a2.url, "subscriber", "k1", "tier").await,
        Some(json!(7)),
        "{step}"
    );
    svc_schema_version(&svc.url, 2, "the service server to run version 2").await;
    let svc_url = svc.url.clone();
    eventually(10, "the service server to serve the new column", || {
        let u = svc_url.clone();
        async move { (field(&u, "subscriber", "k1", "tier").await == Some(json!(7))).then_some(()) }
    })
    .await;
}

/// Over PostgreSQL with two instances: a publish on the primary reaches a
/// service server that watches only the standby, and the publish waits
/// for the standby to run the new version.
#[tokio::test(flavor = "multi_thread")]
async fn a_standby_adopts_a_publish_and_tells_its_service_servers() {
    let Some(pg) = tidemark_testkit::postgres::PgCluster::shared("schema_standby") else {
        eprintln!("skipped: no PostgreSQL");
        return;
    };
    let url = pg.database("schema_standby").expect("a database");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let a = Proc::start("a", dir, &instance_args(&url), &[]);
    a.wait_ok("/readyz").await;
    let a_url = a.url.clone();
    eventually(20, "the first instance to be primary", || {
        let u = a_url.clone();
        async move { (role(&u).await.as_deref() == Some("primary")).then_some(()) }
    })
    .await;
    let b = Proc::start("b", dir, &instance_args(&url), &[]);
    b.wait_ok("/readyz").await;
    // The primary knows the standby (by its heartbeat) before the publish.
    eventually(20, "the primary to list both instances", || {
        let u = a_url.clone();
        async move {
            let (_, st) = get_json(&format!("{u}/v1/state")).await;
            (st["members"].as_array().map(Vec::len) == Some(2)).then_some(())
        }
    })
    .await;
    let svc = service(dir, "svc-b", &b.url, "accept-stale", &[]).await;
    let (s, _) = post_raw(
        &format!("{}/v1/orders", a.url),
        order(1, "subscriber", "k1", json!({"plan": "gold"})).to_string(),
    )
    .await;
    assert_eq!(s, 200);
    let svc_url = svc.url.clone();
    eventually(10, "the record to reach the service server", || {
        let u = svc_url.clone();
        async move { (field(&u, "subscriber", "k1", "plan").await == Some(json!("gold"))).then_some(()) }
    })
    .await;
    assert_eq!(field(&svc.url, "subscriber", "k1", "tier").await, None);

    let (ok, err) = stage(dir, &a.url, &v2_document());
    assert!(ok, "{err}");
    let (ok, out, err) = schema_cmd(dir, &["publish", "--server", &a.url, "--wait", "30"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains(&format!("{} runs version 2", b.url)), "{out}");
    assert_eq!(schema_version(&b.url).await, 2);
    svc_schema_version(&svc.url, 2, "the standby's service server to run version 2").await;
    assert_eq!(
        field(&svc.url, "subscriber", "k1", "tier").await,
        Some(Value::Null),
        "the cached record is revalidated and reads the new column as null"
    );
    assert!(
        b.log_text()
            .contains("schema version published by the primary adopted"),
        "{}",
        b.log_text()
    );
    // The primary counts the standby's service server as connected (by the
    // standby's heartbeat), running version 2; before, it only had the
    // forwarded report and never waited for it.
    let a_url = a.url.clone();
    eventually(
        20,
        "the primary to see svc-b connected, at version 2",
        || {
            let u = a_url.clone();
            async move {
                let (_, st) = get_json(&format!("{u}/v1/schema/publish")).await;
                let servers = st["servers"].as_array()?.clone();
                servers
                    .iter()
                    .any(|s| s["name"] == "svc-b" && s["connected"] == true && s["version"] == 2)
                    .then_some(())
            }
        },
    )
    .await;
    // Published through the standby, it completes once svc-b runs the new
    // version: before, the standby held no report of it (they went to the
    // primary) and waited for good.
    let mut v3 = v2_document();
    v3["tables"]["device"]["columns"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "maker", "type": "string"}));
    let (ok, err) = stage(dir, &b.url, &v3);
    assert!(ok, "{err}");
    let (ok, out, err) = schema_cmd(dir, &["publish", "--server", &b.url, "--wait", "30"]);
    assert!(ok, "{out}{err}");
    // It exits 0 only once the standby it was sent to, and the service
    // server watching that standby, run version 3 (it used to exit as soon
    // as the standby's own, older, view looked complete).
    assert!(
        out.contains("every connected service server run schema version 3"),
        "{out}"
    );
    assert_eq!(schema_version(&b.url).await, 3, "{out}");
    let (_, st) = get_json(&format!("{}/v1/state", svc.url)).await;
    assert_eq!(st["schema_version"], 3, "{out}");
}

/// POSTs `path` until it is not refused `publish_in_progress` (the last
/// job is still announcing); returns the answer.
async fn post_when_idle(db: &str, path: &str) -> (u16, Value) {
    let url = format!("{db}{path}");
    eventually(30, "the last schema job to finish", || {
        let url = url.clone();
        async move {
            let (s, body) = post_raw(&url, "{}").await;
            (body["error"]["code"] != "publish_in_progress").then_some((s, body))
        }
    })
    .await
}

/// Stages `doc` over HTTP and publishes it; panics unless both succeed.
async fn publish_doc(db: &str, doc: &Value) {
    let url = format!("{db}/v1/schema/pending");
    eventually(30, "the schema to be staged", || {
        let (url, doc) = (url.clone(), doc.clone());
        async move {
            let r = reqwest::Client::new()
                .put(&url)
                .json(&doc)
                .send()
                .await
                .unwrap();
            let ok = r.status().is_success();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            assert!(
                ok || body["error"]["code"] == "publish_in_progress",
                "stage: {body}"
            );
            ok.then_some(())
        }
    })
    .await;
    let (s, body) = post_when_idle(db, "/v1/schema/publish").await;
    assert_eq!(s, 200, "publish: {body}");
}

/// Sends one order naming `tier` until it gets `want` (200, or 400
/// `unknown_column`); a 500 fails the test.
async fn probe_tier(db: &str, want: u16) {
    eventually(
        30,
        "an order naming the column to be answered as expected",
        || {
            let db = db.to_owned();
            async move {
                let (s, body) = post_raw(
                &format!("{db}/v1/orders"),
                json!({"orders": [{"source": "probe", "seq": next_probe(), "table": "subscriber",
                    "key": "p", "op": "upsert", "fields": {"tier": null}}]})
                .to_string(),
            )
            .await;
                assert!(s < 500, "{s} {body}");
                if s == 400 {
                    assert_eq!(body["error"]["code"], "unknown_column", "{body}");
                }
                (s == want).then_some(())
            }
        },
    )
    .await;
}

/// Orders checked against a catalog that a rollback or a publish replaces
/// under them (S9): each is applied, or refused `unknown_column` (400);
/// never a 500. Reads racing the same changes never fail either.
#[tokio::test(flavor = "multi_thread")]
async fn orders_racing_a_rollback_are_applied_or_refused_unknown_column_never_500() {
    for engine in
        engines("orders_racing_a_rollback_are_applied_or_refused_unknown_column_never_500")
    {
        orders_racing_a_rollback_on(engine).await;
    }
}

async fn orders_racing_a_rollback_on(engine: Engine) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let db = db_server_on(dir, engine, &[]).await;
    let with_tier = document(
        json!([{"name": "tier", "type": "integer"}]),
        json!([]),
        json!({}),
    );
    publish_doc(&db.url, &with_tier).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..6u64 {
        let (url, stop) = (db.url.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut seen = Vec::new();
            let mut seq = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                seq += 1;
                // `tier` stays null, so the column stays empty and the
                // rollback may drop it.
                let body = json!({"orders": [{"source": format!("race-{w}"), "seq": seq,
                    "table": "subscriber", "key": format!("k{}", seq % 50), "op": "upsert",
                    "fields": {"plan": "gold", "tier": null}}]});
                let r = client
                    .post(format!("{url}/v1/orders"))
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                let status = r.status().as_u16();
                let body: Value = r.json().await.unwrap_or(Value::Null);
                seen.push((
                    status,
                    body["error"]["code"].as_str().unwrap_or("").to_owned(),
                ));
                let (s, body) =
                    get_json(&format!("{url}/v1/records/subscriber/k{}", seq % 50)).await;
                assert!(s == 200 || s == 404, "a read during the race: {s} {body}");
            }
            seen
        }));
    }
    for _ in 0..4 {
        probe_tier(&db.url, 200).await;
        let (s, body) = post_when_idle(&db.url, "/v1/schema/rollback").await;
        assert_eq!(s, 200, "rollback: {body}");
        probe_tier(&db.url, 400).await;
        publish_doc(&db.url, &with_tier).await;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut seen = Vec::new();
    for t in tasks {
        seen.extend(t.await.unwrap());
    }
    let bad: Vec<_> = seen
        .iter()
        .filter(|(s, code)| !(*s == 200 || (*s == 400 && code == "unknown_column")))
        .collect();
    assert!(
        bad.is_empty(),
        "{engine:?}: answers other than 200 or 400 unknown_column: {bad:?}"
    );
    assert!(
        seen.iter().any(|(s, _)| *s == 200),
        "{engine:?}: no order was applied"
    );
    assert_eq!(
        schema_version(&db.url).await,
        10,
        "{engine:?}: 1 + 1 publish + 4 x (rollback, publish)"
    );
}

/// A fresh seq for the probe source.
fn next_probe() -> u64 {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    N.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1
}

/// Whether index `name` exists in Tidemark's schema, and is valid.
async fn pg_index(dir: &Path, name: &str) -> Option<bool> {
    let url = std::fs::read_to_string(dir.join("pg-url")).expect("the test database");
    let client = pg_client(&url).await;
    client
        .query_opt(
            "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'tidemark' AND c.relname = $1",
            &[&name],
        )
        .await
        .unwrap()
        .map(|r| r.get(0))
}

/// PostgreSQL builds an index a publish adds to an existing table with
/// `CREATE INDEX CONCURRENTLY` (writes go on), before the catalog
/// transaction, as a resumable step (S9): a crash between the build and
/// the commit leaves the old version in force; the restarted server drops
/// an INVALID leftover of an interrupted build, builds the index again,
/// commits, and ends on exactly one new version.
#[tokio::test(flavor = "multi_thread")]
async fn an_index_is_built_concurrently_and_a_crash_before_the_commit_is_resumed() {
    let pg = engines("an_index_is_built_concurrently_and_a_crash_before_the_commit_is_resumed");
    if !pg.contains(&Engine::Postgres) {
        eprintln!("skipped: no PostgreSQL server binaries");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let name = "tm_ix_subscriber__status";
    let mut db = db_server_on(
        dir,
        Engine::Postgres,
        &[("TIDEMARK_FAILPOINTS", "schema.ddl.after_indexes=1")],
    )
    .await;
    for seq in 1..=20u64 {
        let (s, body) = post_raw(
            &format!("{}/v1/orders", db.url),
            order(
                seq,
                "subscriber",
                &format!("k{seq}"),
                json!({"status": "active"}),
            )
            .to_string(),
        )
        .await;
        assert_eq!(s, 200, "{body}");
    }
    // An interrupted build leaves an INVALID index under the name the
    // publish uses (here: a unique build that failed on duplicates).
    {
        let url = std::fs::read_to_string(dir.join("pg-url")).unwrap();
        let client = pg_client(&url).await;
        let e = client
            .batch_execute(&format!(
                "CREATE UNIQUE INDEX CONCURRENTLY \"{name}\" ON tidemark.subscriber (status)"
            ))
            .await;
        assert!(e.is_err(), "the unique build must fail on duplicates");
    }
    assert_eq!(
        pg_index(dir, name).await,
        Some(false),
        "an INVALID leftover"
    );

    let doc = document(json!([]), json!([{"columns": ["status"]}]), json!({}));
    let (ok, err) = stage(dir, &db.url, &doc);
    assert!(ok, "{err}");
    let (ok, plan, err) = schema_cmd(dir, &["plan", "--server", &db.url]);
    assert!(ok, "{err}");
    assert!(
        plan.contains(&format!(
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS \"{name}\""
        )),
        "the plan shows the concurrent build: {plan}"
    );
    let _ = reqwest::Client::new()
        .post(format!("{}/v1/schema/publish", db.url))
        .send()
        .await;
    let child = db.child.as_mut().expect("running");
    let status = tokio::task::block_in_place(|| child.wait()).expect("wait for the crash");
    assert!(
        !status.success(),
        "the server must have crashed after the index step"
    );
    db.child = None;
    // Between the index step and the commit: the index is built (valid),
    // the version is not in force.
    assert_eq!(pg_index(dir, name).await, Some(true), "{}", db.log_text());
    assert!(db.log_text().contains("invalid index"), "{}", db.log_text());

    let args = server_args(dir, Engine::Postgres);
    let db2 = Proc::start("db2", dir, &strs(&args), &[]);
    db2.wait_ok("/readyz").await;
    let url = db2.url.clone();
    eventually(30, "the restarted server to finish the publish", || {
        let url = url.clone();
        async move {
            let (_, st) = get_json(&format!("{url}/v1/schema/publish")).await;
            (st["current_version"] == 2 && st["job"]["step"] == "done").then_some(())
        }
    })
    .await;
    assert_eq!(
        versions(&db2.url).await,
        vec![1, 2],
        "exactly one new version"
    );
    assert_eq!(pg_index(dir, name).await, Some(true));
    let (_, s) = get_json(&format!("{}/v1/schema", db2.url)).await;
    assert_eq!(
        s["tables"]["subscriber"]["indexes"],
        json!([{"columns": ["status"]}]),
        "{s}"
    );
    let (s, body) = post_raw(
        &format!("{}/v1/orders", db2.url),
        order(21, "subscriber", "k21", json!({"status": "suspended"})).to_string(),
    )
    .await;
    assert_eq!(s, 200, "{body}");
}

/// S2, S9: a service server restarted from its cache snapshot, after a
/// publish it was down for, serves the new column (null) for the records
/// the snapshot brought back, from the cache too. Found by an outside
/// audit: it served the snapshot's copies, without the column, as current.
#[tokio::test(flavor = "multi_thread")]
async fn a_service_server_restarted_from_its_snapshot_serves_a_column_published_meanwhile() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let db = db_server(dir, &[]).await;
    let cache_dir = dir.join("svc-cache");
    let extra = ["--cache-dir", cache_dir.to_str().unwrap()];
    let mut svc = service(dir, "svc-a", &db.url, "latest-only", &extra).await;
    ops_submit(dir, &db.url, &order_line("k1", json!({"plan": "v1"})), &[]);
    let (_, r) = get_json(&key_url(&svc.url, "k1")).await;
    assert_eq!(r["fields"]["plan"], "v1", "{r}");
    snapshot_taken(&svc.url, Some(1)).await;
    svc.kill9();
    let tier = document(
        json!([{"name": "tier", "type": "integer"}]),
        json!([]),
        json!({}),
    );
    publish_doc(&db.url, &tier).await;
    let svc = service(dir, "svc-a", &db.url, "latest-only", &extra).await;
    let url = key_url(&svc.url, "k1");
    let r = eventually(15, "the record served from the cache again", || {
        let url = url.clone();
        async move {
            let (status, r) = get_json(&url).await;
            assert_eq!(status, 200, "{r}");
            assert!(
                r["fields"].get("tier").is_some_and(Value::is_null),
                "every answer carries the published column: {r}"
            );
            (r["source"] == "cache").then_some(r)
        }
    })
    .await;
    assert_eq!(r["fields"]["plan"], "v1", "{r}");
}

/// A publish or rollback that never reached a server says so (nothing was
/// sent), not that it was refused or that its outcome is unknown.
#[test]
fn a_publish_that_reaches_no_server_says_nothing_was_sent() {
    let tmp = tempfile::tempdir().unwrap();
    // A port nothing listens on once the listener is gone.
    let url = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    for cmd in ["publish", "rollback"] {
        let (ok, _, err) = schema_cmd(tmp.path(), &[cmd, "--server", &url]);
        assert!(!ok, "{cmd}");
        assert!(
            err.contains("could not reach") && err.contains("nothing was sent"),
            "{cmd}: {err}"
        );
        assert!(
            !err.contains("refused") && !err.contains("unknown"),
            "{cmd}: {err}"
        );
    }
}
