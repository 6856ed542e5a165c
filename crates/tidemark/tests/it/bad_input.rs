//! Every bad input gets its own error code, a message that says what to do,
//! and changes nothing.

use crate::harness::*;
use serde_json::json;

/// Posts `body` and checks the status, the code, and that nothing changed.
async fn refused(db: &str, body: impl Into<reqwest::Body>, status: u16, code: &str) -> String {
    let before = get_json(&format!("{db}/v1/state")).await.1["seq"].clone();
    let marks = get_json(&format!("{db}/v1/sources")).await.1;
    let (s, b) = post_raw(&format!("{db}/v1/orders"), body).await;
    assert_eq!(s, status, "status for {code}: {b}");
    assert_eq!(b["error"]["code"], code, "{b}");
    let message = b["error"]["message"].as_str().unwrap().to_owned();
    assert!(message.len() > 20, "a message that explains: {message}");
    assert_eq!(
        get_json(&format!("{db}/v1/state")).await.1["seq"],
        before,
        "nothing applied for {code}"
    );
    assert_eq!(
        get_json(&format!("{db}/v1/sources")).await.1,
        marks,
        "no high-water mark moved for {code}"
    );
    message
}

fn batch(orders: serde_json::Value) -> String {
    json!({"orders": orders}).to_string()
}

fn order(seq: u64, key: &str, fields: serde_json::Value) -> serde_json::Value {
    json!({"source": "ops-t", "seq": seq, "table": "subscriber", "key": key, "op": "upsert", "fields": fields})
}

#[tokio::test(flavor = "multi_thread")]
async fn every_bad_order_batch_is_refused_whole() {
    for engine in engines("every_bad_order_batch_is_refused_whole") {
        every_bad_order_batch_is_refused_whole_on(engine).await;
    }
}

async fn every_bad_order_batch_is_refused_whole_on(engine: Engine) {
    let tmp = tempfile::tempdir().unwrap();
    let db = db_server_on(
        tmp.path(),
        engine,
        &[
            ("TIDEMARK_SERVER__MAX_BODY_BYTES", "65536"),
            ("TIDEMARK_SERVER__MAX_BATCH_ORDERS", "50"),
        ],
    )
    .await;
    let u = &db.url;
    let good = order(1, "good", json!({"plan": "a"}));

    refused(u, "{not json", 400, "bad_json").await;
    refused(u, json!({"orders": "no"}).to_string(), 400, "bad_json").await;
    refused(u, batch(json!([good, {"source": "ops-t", "seq": 2, "table": "subscriber", "key": "k", "op": "merge"}])), 400, "bad_json").await;
    let m = refused(u, batch(json!([good, {"source": "ops-t", "seq": 2, "table": "nope", "key": "k", "op": "upsert"}])), 404, "unknown_table").await;
    assert!(m.contains("nope") && m.contains("subscriber"), "{m}");
    let m = refused(
        u,
        batch(json!([good, order(2, "k", json!({"colour": "red"}))])),
        400,
        "unknown_column",
    )
    .await;
    assert!(m.contains("colour") && m.contains("order 1"), "{m}");
    refused(
        u,
        batch(json!([good, order(2, "k", json!({"roaming": "yes"}))])),
        400,
        "wrong_field_type",
    )
    .await;
    let deep: serde_json::Value =
        serde_json::from_str(&format!("{}{}", "[".repeat(70), "]".repeat(70))).unwrap();
    let m = refused(
        u,
        batch(json!([good, order(2, "k", json!({ "services": deep }))])),
        400,
        "wrong_field_type",
    )
    .await;
    assert!(m.contains("levels deep"), "{m}");
    refused(
        u,
        batch(json!([good, order(2, "k", json!({"credit_limit": 1.5}))])),
        400,
        "wrong_field_type",
    )
    .await;
    refused(
        u,
        batch(json!([good, order(2, "", json!({}))])),
        400,
        "invalid_key",
    )
    .await;
    refused(
        u,
        batch(json!([good, order(2, &"x".repeat(257), json!({}))])),
        400,
        "invalid_key",
    )
    .await;
    // NUL, which PostgreSQL cannot store: refused alike on every engine,
    // in a key, a string field, or anywhere inside a JSON field.
    let m = refused(
        u,
        batch(json!([good, order(2, "k\u{0}1", json!({}))])),
        400,
        "invalid_key",
    )
    .await;
    assert!(m.contains("NUL"), "{m}");
    refused(
        u,
        batch(json!([good, order(2, "k", json!({"plan": "a\u{0}b"}))])),
        400,
        "wrong_field_type",
    )
    .await;
    let m = refused(
        u,
        batch(json!([
            good,
            order(
                2,
                "k",
                json!({"services": {"voice": [true, {"a\u{0}": 1}]}})
            )
        ])),
        400,
        "wrong_field_type",
    )
    .await;
    assert!(m.contains("services") && m.contains("NUL"), "{m}");
    refused(u, batch(json!([good, {"source": "ops-t", "seq": 2, "table": "subscriber", "key": "k", "op": "delete", "fields": {"plan": "x"}}])), 400, "invalid_order").await;
    // A misspelt property: refused, not an order that changes nothing and
    // uses up its seq (the `good` order at seq 1 is applied below).
    let m = refused(u, batch(json!([{"source": "ops-t", "seq": 1, "table": "subscriber", "key": "good", "op": "upsert", "feilds": {"plan": "a"}}])), 400, "bad_json").await;
    assert!(m.contains("feilds"), "{m}");
    refused(
        u,
        json!({"orders": [], "extra": 1}).to_string(),
        400,
        "bad_json",
    )
    .await;
    refused(
        u,
        batch(json!([order(0, "k", json!({}))])),
        400,
        "invalid_order",
    )
    .await;
    let big: Vec<_> = (1..=51).map(|i| order(i, "k", json!({}))).collect();
    refused(u, batch(json!(big)), 413, "batch_too_large").await;
    let huge = batch(json!([order(1, "k", json!({"plan": "x".repeat(70_000)}))]));
    refused(u, huge, 413, "payload_too_large").await;
    // `ops submit` told a batch is too large says that a smaller --batch
    // helps (the same command again would be refused again), and a
    // smaller one then sends the journaled orders.
    let journal = tmp.path().join("journal");
    let lines: String = (0..55)
        .map(|i| format!("{{\"table\":\"subscriber\",\"key\":\"b{i}\",\"op\":\"delete\"}}\n"))
        .collect();
    let submit = |batch: &str| {
        run(
            tmp.path(),
            &[
                "ops",
                "submit",
                "--db",
                u,
                "--journal",
                journal.to_str().unwrap(),
                "--source",
                "ops-b",
                "--batch",
                batch,
                "-",
            ],
            Some(lines.as_bytes()),
            &[],
        )
    };
    let out = submit("55");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("smaller --batch") && err.lines().count() == 1,
        "{err}"
    );
    let out = submit("50");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A reused (source, seq) with different content is a conflict; the same
    // order again is acknowledged, not applied twice.
    let (s, b) = post_raw(&format!("{u}/v1/orders"), batch(json!([good]))).await;
    assert_eq!(s, 200, "{b}");
    let v = b["results"][0]["version"].clone();
    let (s, b) = post_raw(&format!("{u}/v1/orders"), batch(json!([good]))).await;
    assert_eq!(s, 200);
    assert_eq!(b["results"][0]["duplicate"], true);
    assert_eq!(b["results"][0]["version"], v);
    refused(
        u,
        batch(json!([
            order(2, "other", json!({})),
            order(1, "good", json!({"plan": "b"}))
        ])),
        409,
        "order_conflict",
    )
    .await;
    let (_, r) = get_json(&format!("{u}/v1/records/subscriber/other")).await;
    assert_eq!(
        r["found"], false,
        "the valid first order of a refused batch was not applied"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_reads_and_routes_are_refused_with_codes() {
    for engine in engines("bad_reads_and_routes_are_refused_with_codes") {
        bad_reads_and_routes_are_refused_with_codes_on(engine).await;
    }
}

async fn bad_reads_and_routes_are_refused_with_codes_on(engine: Engine) {
    let tmp = tempfile::tempdir().unwrap();
    let db = db_server_on(tmp.path(), engine, &[]).await;
    let svc = service(tmp.path(), "svc-a", &db.url, "latest-only", &[]).await;
    let cases = [
        (
            format!("{}/v1/records/nope/k", db.url),
            404,
            "unknown_table",
        ),
        (
            format!("{}/v1/records/subscriber/{}", db.url, "x".repeat(257)),
            400,
            "invalid_key",
        ),
        (
            format!("{}/v1/records/subscriber/k%001", db.url),
            400,
            "invalid_key",
        ),
        (
            format!("{}/v1/records/subscriber/k%001", svc.url),
            400,
            "invalid_key",
        ),
        (
            format!("{}/v1/recovery/flags?prefix=a%00", db.url),
            400,
            "bad_request",
        ),
        (
            format!("{}/v1/recovery/flags?table=subscriber%00", db.url),
            400,
            "bad_request",
        ),
        // A page of no flags is refused, not taken as a page of one.
        (
            format!("{}/v1/recovery/flags?limit=0", db.url),
            400,
            "bad_request",
        ),
        // Flags of a table the schema lacks: said, not an empty page.
        (
            format!("{}/v1/recovery/flags?table=nope", db.url),
            404,
            "unknown_table",
        ),
        (format!("{}/v1/nothing", db.url), 404, "not_found"),
        // An empty key is a bad key, not a missing endpoint.
        (
            format!("{}/v1/records/subscriber/", db.url),
            400,
            "invalid_key",
        ),
        (
            format!("{}/v1/records/subscriber/", svc.url),
            400,
            "invalid_key",
        ),
        (format!("{}/v1/watch", db.url), 400, "bad_request"),
        (
            format!("{}/v1/records/nope/k", svc.url),
            404,
            "unknown_table",
        ),
        (
            format!("{}/v1/records/subscriber/{}", svc.url, "x".repeat(257)),
            400,
            "invalid_key",
        ),
    ];
    let db_cases = cases.iter().filter(|c| c.0.starts_with(&db.url)).count() as u64;
    for (url, status, code) in cases {
        let (s, b) = get_json(&url).await;
        assert_eq!(
            (s, b["error"]["code"].as_str()),
            (status, Some(code)),
            "{url}: {b}"
        );
    }
    // The DB server counts them (it counted none before).
    let counted = metric(&db.url, "tidemark_http_errors_total").await;
    assert!(
        counted >= db_cases,
        "{counted} errors counted, {db_cases} sent"
    );
    // None of them is the server's failure: what an alert watches stays 0.
    let metrics = metrics_text(&db.url).await;
    assert!(
        metrics
            .lines()
            .any(|l| l == "tidemark_http_server_errors_total 0"),
        "{metrics}"
    );
    // A subscriber name that cannot be one is refused, not ignored (the
    // caller would believe it holds the key), cold and warm alike.
    for _ in 0..2 {
        for name in ["x".repeat(129), "a\tb".to_owned()] {
            let r = reqwest::Client::new()
                .get(format!("{}/v1/records/subscriber/k", db.url))
                .header("Tidemark-Subscriber", name.as_str())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 400, "{name:?}");
            let b: serde_json::Value = r.json().await.unwrap();
            assert_eq!(b["error"]["code"], "bad_request", "{b}");
        }
        get_json(&format!("{}/v1/records/subscriber/k", db.url)).await;
    }
    let r = reqwest::Client::new()
        .get(format!("{}/v1/records/subscriber/k", svc.url))
        .header("Tidemark-Freshness", "yesterday")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let b: serde_json::Value = r.json().await.unwrap();
    assert_eq!(b["error"]["code"], "bad_request");
    // Two of a header that takes one: which is meant cannot be told
    // (the first one won), cold and warm alike.
    for _ in 0..2 {
        for (url, name, values) in [
            (&db.url, "Tidemark-Subscriber", ["svc-a", "svc-b"]),
            (&svc.url, "Tidemark-Freshness", ["latest", "stale-ok"]),
        ] {
            let r = reqwest::Client::new()
                .get(format!("{url}/v1/records/subscriber/k"))
                .header(name, values[0])
                .header(name, values[1])
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 400, "{name}");
            let b: serde_json::Value = r.json().await.unwrap();
            assert!(
                b["error"]["message"].as_str().unwrap().contains("two"),
                "{b}"
            );
        }
        get_json(&format!("{}/v1/records/subscriber/k", svc.url)).await;
    }

    // A wrong method, and a body over the limit on an endpoint other than
    // orders, get the JSON error body too (they were axum's plain text).
    let client = reqwest::Client::new();
    for req in [
        client.delete(format!("{}/v1/orders", db.url)),
        client.post(format!("{}/v1/records/subscriber/k", svc.url)),
    ] {
        let r = req.send().await.unwrap();
        assert_eq!(r.status().as_u16(), 405);
        let b: serde_json::Value = r.json().await.unwrap();
        assert_eq!(b["error"]["code"], "method_not_allowed", "{b}");
    }
    // Declared over the limit, and refused before it is read: a client that
    // went on writing 17 MB could find the connection closed under it (a
    // CI run got a broken pipe), so this one sends only the head.
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(db.url.trim_start_matches("http://")).unwrap();
    conn.write_all(
        format!(
            "POST /v1/quiesce HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n   ",
            17 << 20
        )
        .as_bytes(),
    )
    .unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("\"payload_too_large\""), "{answer}");
    // A path segment that is not UTF-8 (the framework's own plain-text
    // refusal before), in protected mode where loopback is admin.
    // A new client: the 413's connection is closed by the server.
    let r = reqwest::Client::new()
        .delete(format!("{}/v1/tokens/%FF", db.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let b: serde_json::Value = r.json().await.unwrap();
    assert_eq!(b["error"]["code"], "bad_request", "{b}");
    assert!(
        b["error"]["message"].as_str().unwrap().contains("openapi"),
        "{b}"
    );
    // Bytes that are not HTTP, and a path byte outside ASCII, get the JSON
    // error too, on both servers (hyper's 400 had an empty body).
    for base in [&db.url, &svc.url] {
        for raw in [
            &b"GARBAGE\r\n\r\n"[..],
            b"GET /v1/records/subscriber/\xff\xfe HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        ] {
            let mut conn =
                std::net::TcpStream::connect(base.trim_start_matches("http://")).unwrap();
            conn.write_all(raw).unwrap();
            let mut answer = String::new();
            conn.read_to_string(&mut answer).unwrap();
            assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
            assert!(answer.contains("\"bad_request\""), "{answer}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_refuses_a_locked_or_unusable_data_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let _db = db_server(tmp.path(), &[]).await;
    let data = tmp.path().join("data");
    let out = run(
        tmp.path(),
        &[
            "server",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
        ],
        None,
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("in use by another process") && err.contains("stop it first"),
        "{err}"
    );

    let file = tmp.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let out = run(
        tmp.path(),
        &[
            "server",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            file.to_str().unwrap(),
        ],
        None,
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot use data directory"), "{err}");

    // A folder of other files (a backup, notes) given by mistake: before,
    // a new empty store was made there and served, every key missing.
    let notes = tmp.path().join("notes");
    std::fs::create_dir(&notes).unwrap();
    std::fs::write(notes.join("manifest.json"), b"{}").unwrap();
    let args = [
        "server",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        notes.to_str().unwrap(),
    ];
    let out = run(tmp.path(), &args, None, &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("holds no Tidemark store") && err.contains("manifest.json"),
        "{err}"
    );
    assert!(
        !notes.join(tidemark_store::layout::CURRENT).exists(),
        "no store was made"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ops_refuses_bad_input_before_journaling_anything() {
    for engine in engines("ops_refuses_bad_input_before_journaling_anything") {
        ops_refuses_bad_input_before_journaling_anything_on(engine).await;
    }
}

async fn ops_refuses_bad_input_before_journaling_anything_on(engine: Engine) {
    let tmp = tempfile::tempdir().unwrap();
    let db = db_server_on(tmp.path(), engine, &[]).await;
    let journal = tmp.path().join("journal");
    let args = [
        "ops",
        "submit",
        "--db",
        db.url.as_str(),
        "--journal",
        journal.to_str().unwrap(),
        "-",
    ];
    // A value nested deeper than a batch may carry whole: journaled, the
    // DB server could not read its batch, and the source was blocked.
    let deep = format!(
        "{{\"table\":\"subscriber\",\"key\":\"a\",\"op\":\"upsert\",\"fields\":{{\"services\":{}{}}}}}\n",
        "[".repeat(100),
        "]".repeat(100)
    );
    for (input, needle) in [
        (deep.as_str(), "levels deep"),
        ("{\"table\":\"subscriber\",\"key\":\"a\",\"op\":\"upsert\"}\nnot json\n", "line 2"),
        ("{\"table\":\"subscriber\",\"key\":\"a\",\"op\":\"upsert\",\"fields\":{\"colour\":1}}\n", "colour"),
        ("{\"table\":\"nope\",\"key\":\"a\",\"op\":\"delete\"}\n", "nope"),
        // A key the DB server refuses: journaled, it blocked the source
        // for good (every later run sends it first).
        ("{\"table\":\"subscriber\",\"key\":\"..\",\"op\":\"delete\"}\n", "line 1"),
    ] {
        let out = run(tmp.path(), &args, Some(input.as_bytes()), &[]);
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle) && err.lines().count() == 1, "one line naming the problem: {err}");
    }
    assert!(
        !journal.join("ops-1.journal").exists()
            || std::fs::read(journal.join("ops-1.journal"))
                .unwrap()
                .is_empty()
    );
    assert_eq!(commit_seq(&db.url).await, 0);
    // A source name the journal cannot hold (nor the DB server take),
    // likewise.
    let mut bad_source = args.to_vec();
    bad_source.splice(6..6, ["--source", "ops\u{1}"]);
    let out = run(
        tmp.path(),
        &bad_source,
        Some(b"{\"table\":\"subscriber\",\"key\":\"a\",\"op\":\"delete\"}\n"),
        &[],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("source name") && err.contains("is invalid"),
        "{err}"
    );
    // The source is not blocked: its next good order goes through.
    let good = "{\"table\":\"subscriber\",\"key\":\"a\",\"op\":\"delete\"}\n";
    let out = run(tmp.path(), &args, Some(good.as_bytes()), &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(commit_seq(&db.url).await, 1);
}

/// Holes an outside probe found (issue 13, items 4, 6, 7, 8): seqs that
/// would lock a source out, keys no URL can carry, a path segment that
/// escapes the record space on a service server, names that forge log
/// lines, and oversized fields.
#[tokio::test(flavor = "multi_thread")]
async fn implausible_input_is_refused_before_it_can_do_harm() {
    use std::io::{Read, Write};
    let tmp = tempfile::tempdir().unwrap();
    let db = db_server(tmp.path(), &[]).await;
    let u = &db.url;
    let order = |seq: u64, key: &str, fields: serde_json::Value| {
        json!({"orders": [{"source": "ops-1", "seq": seq, "table": "subscriber", "key": key, "op": "upsert", "fields": fields}]}).to_string()
    };
    let post = |body: String| {
        let url = format!("{u}/v1/orders");
        async move { post_raw(&url, body).await }
    };
    let (s, b) = post(order(u64::MAX, "k", json!({}))).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (400, Some("invalid_order")),
        "{b}"
    );
    let (s, b) = post(order(5_000_000, "k", json!({}))).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (400, Some("invalid_order")),
        "{b}"
    );
    let (s, b) = post(order(1, "k", json!({"plan": "a"}))).await;
    assert_eq!(s, 200, "the source is not locked out: {b}");
    for dot in [".", ".."] {
        let (s, b) = post(order(2, dot, json!({}))).await;
        assert_eq!(
            (s, b["error"]["code"].as_str()),
            (400, Some("invalid_key")),
            "{b}"
        );
    }
    let big = "x".repeat(200_000);
    let (s, b) = post(order(2, "k", json!({ "plan": big }))).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (413, Some("payload_too_large")),
        "{b}"
    );
    let (s, b) = get_json(&format!("{u}/v1/watch?subscriber=svc%0Aforged%20line")).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (400, Some("bad_request")),
        "{b}"
    );

    // Body framing hyper refuses with an empty 400 gets the JSON error,
    // and nothing is applied.
    let addr = u.trim_start_matches("http://").to_owned();
    for framing in [
        "Content-Length: 2\r\nContent-Length: 3",
        "Content-Length: 99999999999999999999",
        "Transfer-Encoding: xchunked",
    ] {
        let mut conn = std::net::TcpStream::connect(&addr).unwrap();
        write!(
            conn,
            "POST /v1/orders HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{framing}\r\n\r\n{{}}"
        )
        .unwrap();
        let mut answer = String::new();
        conn.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 400"), "{framing}: {answer}");
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(body).expect(&answer);
        assert_eq!(v["error"]["code"], "bad_request", "{framing}: {answer}");
    }

    // A raw request (no client normalises the dots away) to a service server.
    let svc = service(tmp.path(), "svc-a", u, "latest-only", &[]).await;
    let addr = svc.url.trim_start_matches("http://").to_owned();
    let mut conn = std::net::TcpStream::connect(&addr).unwrap();
    conn.write_all(
        b"GET /v1/records/%2E%2E/state HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    assert!(
        answer.contains("unknown_table") && !answer.contains("\"boot\""),
        "no DB endpoint leaks: {answer}"
    );
}

/// Issue 13 (resources): one token holds at most `max_watch_per_token`
/// watch streams; the next is refused `429 too_many_streams` saying what
/// to do, and a closed stream frees its place.
#[tokio::test(flavor = "multi_thread")]
async fn watch_streams_per_token_are_limited() {
    let tmp = tempfile::tempdir().unwrap();
    let db = db_server(tmp.path(), &[("TIDEMARK_SERVER__MAX_WATCH_PER_TOKEN", "2")]).await;
    let client = reqwest::Client::new();
    let open = |name: &str| {
        client
            .get(format!("{}/v1/watch?subscriber={name}", db.url))
            .send()
    };
    let a = open("svc-a").await.unwrap();
    let b = open("svc-b").await.unwrap();
    assert_eq!((a.status().as_u16(), b.status().as_u16()), (200, 200));
    let c = open("svc-c").await.unwrap();
    assert_eq!(c.status().as_u16(), 429);
    assert!(c.headers().contains_key("retry-after"));
    let body: serde_json::Value = c.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_streams");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("max_watch_per_token"));
    // Refused streams make no name known (before, each one did, for the
    // life of the process: memory without end from a reader token).
    let known = metric(&db.url, "tidemark_subscriber_names").await;
    assert_eq!(known, 2, "svc-a and svc-b");
    for i in 0..20 {
        let r = open(&format!("refused-{i}")).await.unwrap();
        assert_eq!(r.status().as_u16(), 429);
    }
    assert_eq!(metric(&db.url, "tidemark_subscriber_names").await, known);
    drop(a);
    eventually(10, "a closed stream to free its place", || async {
        let r = open("svc-c").await.ok()?;
        (r.status().as_u16() == 200).then_some(())
    })
    .await;
    drop(b);
}

/// The high-water mark of the one source that sent orders to `db` (0 for
/// none).
async fn applied_of(db: &str) -> u64 {
    let (_, sources) = get_json(&format!("{db}/v1/sources")).await;
    let mut marks = sources.as_object().expect("an object").values();
    marks.next().and_then(|v| v.as_u64()).unwrap_or(0)
}

/// A full disk refuses a batch as `507 storage_full`, saying to free
/// space, and applies nothing of it; `ops submit` stops at once (no minute
/// of retries) with the orders journaled, and the same command sends them
/// once there is room. Before, the answer was `500 store_failure` "retry
/// it", which `ops submit` passed on as a failure to retry.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_is_refused_as_such_and_the_orders_go_in_once_there_is_room() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let Some(disk) = SmallDisk::mount(&dir.join("small"), "3M") else {
        return;
    };
    let data = dir.join("small").join("data");
    let db = Proc::start(
        "db",
        dir,
        &["server", "--data-dir", data.to_str().unwrap()],
        &[],
    );
    db.wait_ok("/readyz").await;
    // About 5 MB of orders: more than the disk holds.
    let filler = "z".repeat(1000);
    let input: String = (0..5000)
        .map(|i| order_line(&format!("k{i}"), json!({"plan": filler})))
        .collect();
    let out = ops_submit_output(dir, &db.url, &input, &["--batch", "100"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("disk is full") && err.contains("free space") && err.contains("journaled"),
        "{err}"
    );
    let applied = applied_of(&db.url).await;
    assert!(applied < 5000, "{applied}");
    assert_eq!(applied % 100, 0, "whole batches only: {applied}");
    // The next key is absent: nothing of the refused batch went in.
    let (s, _) = get_json(&key_url(&db.url, &format!("k{applied}"))).await;
    assert_eq!(s, 404);
    // Reads go on meanwhile.
    let (s, _) = get_json(&key_url(&db.url, "k0")).await;
    assert_eq!(s, 200);

    disk.grow("64M");
    ops_submit(dir, &db.url, &input, &["--batch", "100"]);
    assert_eq!(applied_of(&db.url).await, 5000);
    let (s, rec) = get_json(&key_url(&db.url, "k4999")).await;
    assert_eq!(s, 200, "{rec}");
    drop(db);
}

/// A service server's cache snapshot that does not fit on its disk leaves
/// no part-written file behind (it held the space a full disk lacks), and
/// the server starts again.
#[tokio::test(flavor = "multi_thread")]
async fn a_cache_snapshot_that_does_not_fit_leaves_no_part_written_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let Some(_disk) = SmallDisk::mount(&dir.join("small"), "64K") else {
        return;
    };
    let db = db_server(dir, &[]).await;
    let filler = "w".repeat(600);
    let input: String = (0..300)
        .map(|i| order_line(&format!("k{i}"), json!({"plan": filler})))
        .collect();
    ops_submit(dir, &db.url, &input, &[]);
    let cache = dir.join("small").join("cache");
    let cache_arg = ["--cache-dir", cache.to_str().unwrap()];
    let mut svc = service(dir, "svc", &db.url, "accept-stale", &cache_arg).await;
    for i in 0..300 {
        let (s, _) = get_json(&key_url(&svc.url, &format!("k{i}"))).await;
        assert_eq!(s, 200);
    }
    // Its final snapshot (some 200 KB) does not fit in 64 KB.
    svc.terminate();
    assert!(
        svc.log_text().contains("No space left"),
        "{}",
        svc.log_text()
    );
    let left: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !left.iter().any(|n| n.ends_with(".tmp")),
        "a part-written snapshot was left: {left:?}"
    );
    let again = service(dir, "svc-again", &db.url, "accept-stale", &cache_arg).await;
    let (s, _) = get_json(&key_url(&again.url, "k1")).await;
    assert_eq!(s, 200);
}

/// The maintenance tick forgets the interest of a subscriber that has had
/// no watch stream for `forget_idle_subscriber_secs` (sweeping twice per
/// that time when it is under a minute), and counts it; one whose stream
/// is open keeps its interest.
#[tokio::test(flavor = "multi_thread")]
async fn the_tick_forgets_a_subscriber_gone_for_the_idle_time() {
    let tmp = tempfile::tempdir().unwrap();
    let db = db_server(
        tmp.path(),
        &[("TIDEMARK_SERVER__FORGET_IDLE_SUBSCRIBER_SECS", "2")],
    )
    .await;
    ops_submit(
        tmp.path(),
        &db.url,
        r#"{"table": "subscriber", "key": "k", "op": "upsert", "fields": {"plan": "a"}}"#,
        &[],
    );
    let client = reqwest::Client::new();
    let watching = client
        .get(format!("{}/v1/watch?subscriber=svc-held", db.url))
        .send()
        .await
        .unwrap();
    assert_eq!(watching.status().as_u16(), 200);
    // Each reads the key under its name: both hold it now.
    for name in ["svc-held", "svc-gone"] {
        let r = client
            .get(format!("{}/v1/records/subscriber/k", db.url))
            .header("tidemark-subscriber", name)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
    }
    let forgotten = eventually(20, "the idle subscriber to be forgotten", || async {
        let n = metric(&db.url, "tidemark_subscribers_forgotten_total").await;
        (n > 0).then_some(n)
    })
    .await;
    assert_eq!(forgotten, 1, "svc-gone only: svc-held has its stream open");
    assert!(db.log_text().contains("its interest is dropped"));
    drop(watching);
}

/// Paths and URLs given wrong are named as what they are, with what to do
/// (an outside audit found a file called a missing backup, a bad URL called
/// a data directory, and an unreadable order file without advice).
#[test]
fn wrong_paths_and_urls_are_named_for_what_they_are() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("not-a-backup.txt");
    std::fs::write(&file, b"x").unwrap();
    let one_line = |out: &std::process::Output, code: i32, says: &[&str]| {
        assert_eq!(out.status.code(), Some(code), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
        for s in says {
            assert!(err.contains(s), "{s:?} in {err}");
        }
    };
    let out = run(
        tmp.path(),
        &["backup", "verify", file.to_str().unwrap()],
        None,
        &[],
    );
    one_line(&out, 1, &["is a file, not a backup", "backup create --to"]);

    let out = run(
        tmp.path(),
        &[
            "ops",
            "submit",
            "--db",
            "http://127.0.0.1:9",
            "--journal",
            tmp.path().join("j").to_str().unwrap(),
            tmp.path().join("missing.jsonl").to_str().unwrap(),
        ],
        None,
        &[],
    );
    one_line(
        &out,
        1,
        &["cannot read orders from", "or - for standard input"],
    );

    let out = run(
        tmp.path(),
        &[
            "server",
            "--listen",
            "127.0.0.1:0",
            "--store",
            "postgres",
            "--database-url",
            "notaurl",
        ],
        None,
        &[],
    );
    one_line(&out, 1, &["cannot use --database-url", "postgres://"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("data directory"), "{err}");
}
