//! Tokens, roles and protected mode (issue 13; CONTRACT.md, Authentication),
//! with the real program.

use crate::harness::*;
use serde_json::json;

async fn call(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, serde_json::Value) {
    let client = reqwest::Client::new();
    let mut req = match method {
        "GET" => client.get(url),
        "POST" => client.post(url),
        "DELETE" => client.delete(url),
        "PUT" => client.put(url).header("content-type", "application/json"),
        other => panic!("method {other}"),
    };
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if !body.is_empty() {
        req = req
            .header("content-type", "application/json")
            .body(body.to_owned());
    }
    let r = req.send().await.expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(serde_json::Value::Null))
}

/// Protected mode: without tokens only loopback is served, and a server
/// will not listen elsewhere.
#[tokio::test(flavor = "multi_thread")]
async fn without_tokens_a_server_refuses_to_listen_beyond_loopback() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let out = run(
        tmp.path(),
        &[
            "server",
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            "0.0.0.0:0",
        ],
        None,
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("token create"),
        "says how to create one: {stderr}"
    );
    // Refused before a store is made, in one line.
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(!data.join("current").exists(), "no store was made");
}

/// Every endpoint against every role, and no token.
#[tokio::test(flavor = "multi_thread")]
async fn every_endpoint_needs_its_role() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let db = db_server(dir, &[]).await;
    let u = &db.url;
    // Protected mode: loopback needs no token, and may create the first.
    let (s, _) = call("GET", &key_url(u, "k"), None, "").await;
    assert_eq!(s, 404);
    let admin = create_token(dir, u, "admin", "root", None);
    let ops = create_token(dir, u, "ops", "ops-1", Some(&admin));
    let reader = create_token(dir, u, "reader", "svc", Some(&admin));
    // A second token without a token is now refused, even from loopback.
    let out = run(
        dir,
        &[
            "token", "create", "--server", u, "--role", "admin", "--name", "x",
        ],
        None,
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unauthenticated"));

    let order = json!({"orders": [{"source": "s", "seq": 1, "table": "subscriber", "key": "k", "op": "upsert", "fields": {"plan": "a"}}]}).to_string();
    // (method, path, body, role needed: 0 none, 1 reader, 2 ops, 3 admin)
    let endpoints: Vec<(&str, String, String, u8)> = vec![
        ("GET", "/healthz".into(), String::new(), 0),
        ("GET", "/readyz".into(), String::new(), 0),
        ("GET", "/metrics".into(), String::new(), 0),
        ("GET", "/openapi.json".into(), String::new(), 0),
        ("GET", "/v1/records/subscriber/k".into(), String::new(), 1),
        ("GET", "/v1/state".into(), String::new(), 1),
        ("GET", "/v1/recovery".into(), String::new(), 1),
        ("GET", "/v1/recovery/flags".into(), String::new(), 1),
        ("GET", "/v1/sources".into(), String::new(), 1),
        ("GET", "/v1/schema".into(), String::new(), 1),
        ("POST", "/v1/orders".into(), order, 2),
        (
            "POST",
            "/v1/recovery/schedule".into(),
            json!({"source": "s", "entries": [], "final": true}).to_string(),
            2,
        ),
        ("POST", "/v1/recovery/complete".into(), "{}".into(), 2),
        (
            "POST",
            "/v1/recovery/abort".into(),
            json!({"reason": "x"}).to_string(),
            3,
        ),
        ("GET", "/v1/backup/config".into(), String::new(), 3),
        (
            "POST",
            "/v1/quiesce".into(),
            json!({"seconds": 3600}).to_string(),
            3,
        ),
        ("DELETE", "/v1/quiesce".into(), String::new(), 3),
        ("GET", "/v1/tokens".into(), String::new(), 3),
        ("GET", "/v1/audit".into(), String::new(), 3),
        ("GET", "/v1/schema/versions".into(), String::new(), 1),
        ("GET", "/v1/schema/pending".into(), String::new(), 1),
        ("GET", "/v1/schema/plan".into(), String::new(), 1),
        ("GET", "/v1/schema/publish".into(), String::new(), 1),
        (
            "PUT",
            "/v1/schema/pending".into(),
            json!({"tables": {}}).to_string(),
            3,
        ),
        ("DELETE", "/v1/schema/pending".into(), String::new(), 3),
        ("POST", "/v1/schema/publish".into(), "{}".into(), 3),
        ("POST", "/v1/schema/rollback".into(), "{}".into(), 3),
    ];
    let roles = [
        (None, 0u8, "none"),
        (Some(reader.as_str()), 1, "reader"),
        (Some(ops.as_str()), 2, "ops"),
        (Some(admin.as_str()), 3, "admin"),
    ];
    for (method, path, body, need) in &endpoints {
        for (token, level, name) in roles {
            let (s, b) = call(method, &format!("{u}{path}"), token, body).await;
            if level >= *need {
                assert!(s != 401 && s != 403, "{method} {path} as {name}: {s} {b}");
            } else if token.is_none() {
                assert_eq!(
                    (s, b["error"]["code"].as_str()),
                    (401, Some("unauthenticated")),
                    "{method} {path} with no token"
                );
            } else {
                assert_eq!(
                    (s, b["error"]["code"].as_str()),
                    (403, Some("forbidden")),
                    "{method} {path} as {name}"
                );
                let needed = ["", "reader", "ops", "admin"][*need as usize];
                assert!(
                    b["error"]["message"].as_str().unwrap().contains(needed),
                    "names the role needed: {b}"
                );
            }
        }
    }
    let (s, _) = call("GET", &format!("{u}/v1/state"), Some("tm_not-a-token"), "").await;
    assert_eq!(s, 401);
    // RFC 6750: a 401 names the scheme it wants.
    let r = reqwest::Client::new()
        .get(format!("{u}/v1/state"))
        .bearer_auth("tm_not-a-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok()),
        Some("Bearer realm=\"tidemark\"")
    );
    // A path no endpoint has is not found, to anyone (it was a refusal
    // naming the admin role, and the console's favicon logged a 401).
    for (token, _, name) in roles {
        for path in ["/nonexistent", "/favicon.ico", "/v1/records/subscriber"] {
            let (s, b) = call("GET", &format!("{u}{path}"), token, "").await;
            assert_eq!(
                (s, b["error"]["code"].as_str()),
                (404, Some("not_found")),
                "GET {path} as {name}"
            );
        }
    }

    // The audit trail names who did what; tokens are listed without secrets.
    let (_, audit) = call("GET", &format!("{u}/v1/audit"), Some(&admin), "").await;
    let actions: Vec<(String, String)> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["who"].as_str().unwrap().to_owned(),
                e["action"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(
        actions.contains(&("loopback".into(), "token_create".into())),
        "{actions:?}"
    );
    assert!(actions.contains(&("root".into(), "token_create".into())));
    assert!(actions.contains(&("root".into(), "quiesce".into())));

    // A method the path does not take is 405 with its Allow list, whatever
    // the token (the role was never the problem); a method it takes with
    // too small a role is still 403.
    let client = reqwest::Client::new();
    for (method, path, token, allow) in [
        ("POST", "/v1/records/subscriber/k", Some(&reader), "GET"),
        ("DELETE", "/v1/records/subscriber/k", Some(&ops), "GET"),
        ("OPTIONS", "/v1/orders", None, "POST"),
        ("PATCH", "/v1/tokens", Some(&reader), "GET, POST"),
    ] {
        let mut req = client.request(method.parse().unwrap(), format!("{u}{path}"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let allowed = r
            .headers()
            .get("allow")
            .map(|v| v.to_str().unwrap().to_owned());
        let b: serde_json::Value = r.json().await.unwrap_or_default();
        assert_eq!(
            (status, b["error"]["code"].as_str()),
            (405, Some("method_not_allowed")),
            "{method} {path}: {b}"
        );
        let mut allowed: Vec<String> = allowed
            .unwrap_or_default()
            .split(", ")
            .map(str::to_owned)
            .collect();
        allowed.sort();
        assert_eq!(allowed.join(", "), allow, "{method} {path}");
    }
    let (s, _) = call("POST", &format!("{u}/v1/orders"), Some(&reader), "{}").await;
    assert_eq!(s, 403, "a method the path takes, with too small a role");

    // A published version records the token that published it.
    let (_, mut doc) = call("GET", &format!("{u}/v1/schema"), Some(&reader), "").await;
    doc["tables"]["subscriber"]["columns"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "tier", "type": "integer"}));
    let (s, b) = call(
        "PUT",
        &format!("{u}/v1/schema/pending"),
        Some(&admin),
        &doc.to_string(),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let (s, b) = call(
        "POST",
        &format!("{u}/v1/schema/publish"),
        Some(&admin),
        "{}",
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let (_, reg) = call("GET", &format!("{u}/v1/schema/versions"), Some(&reader), "").await;
    assert_eq!(reg["versions"][1]["published_by"], "root", "{reg}");
    let (_, list) = call("GET", &format!("{u}/v1/tokens"), Some(&admin), "").await;
    assert_eq!(list.as_array().unwrap().len(), 3);
    assert!(
        !list.to_string().contains(&admin[3..]),
        "no secret in the list"
    );

    // Revoked: refused from then on.
    let out = run(
        dir,
        &["token", "revoke", "--server", u, "--token", &admin, "svc"],
        None,
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (s, _) = call("GET", &format!("{u}/v1/state"), Some(&reader), "").await;
    assert_eq!(s, 401);
}

/// Client commands and service servers carry their token (--token or
/// TIDEMARK_TOKEN).
#[tokio::test(flavor = "multi_thread")]
async fn clients_and_service_servers_use_their_tokens() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let db = db_server(dir, &[]).await;
    let admin = create_token(dir, &db.url, "admin", "root", None);
    let ops = create_token(dir, &db.url, "ops", "ops-1", Some(&admin));
    let reader = create_token(dir, &db.url, "reader", "svc-a", Some(&admin));
    let input = order_line("k1", json!({"plan": "v1"}));
    let journal = dir.join("journal");
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
        Some(input.as_bytes()),
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "no token: refused");
    // Promote without a token names the role promote needs (it named the
    // state read's, 'reader').
    let out = run(dir, &["promote", "--server", &db.url], None, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("'admin' token") && err.lines().count() == 1,
        "{err}"
    );
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
        Some(input.as_bytes()),
        &[("TIDEMARK_TOKEN", &ops)],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let svc = Proc::start(
        "svc-a",
        dir,
        &[
            "service",
            "--db",
            &db.url,
            "--id",
            "svc-a",
            "--policy",
            "latest-only",
            "--token",
            &reader,
        ],
        &[],
    );
    svc.wait_ok("/readyz").await;
    let (s, b) = get_json(&key_url(&svc.url, "k1")).await;
    assert_eq!((s, b["fields"]["plan"].as_str()), (200, Some("v1")));
    let out = run(
        dir,
        &["status", "--server", &db.url, "--token", &reader],
        None,
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // An online backup streams with the admin token, and only with it
    // (it once used a client without the token, and failed).
    let to = dir.join("b1");
    let backup = |token: &str| {
        run(
            dir,
            &[
                "backup",
                "create",
                "--server",
                &db.url,
                "--to",
                to.to_str().unwrap(),
                "--token",
                token,
            ],
            None,
            &[],
        )
    };
    assert_eq!(backup(&reader).status.code(), Some(1), "a reader may not");
    let out = backup(&admin);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The service server's token revoked: a terminal is not told about a
    // token it never sent (the DB server's 401 went straight to it); a
    // stale-ok read gets the cached copy, and one with none a 503.
    run_ok(
        dir,
        &[
            "token", "revoke", "--server", &db.url, "--token", &admin, "svc-a",
        ],
    );
    let stale_ok = |key: &str| {
        reqwest::Client::new()
            .get(key_url(&svc.url, key))
            .header("Tidemark-Freshness", "stale-ok")
            .send()
    };
    let r = stale_ok("k1").await.unwrap();
    assert_eq!(r.status(), 200);
    let b: serde_json::Value = r.json().await.unwrap();
    assert_eq!(b["fields"]["plan"], "v1", "{b}");
    let r = stale_ok("never-read").await.unwrap();
    assert_eq!(r.status(), 503);
    let b: serde_json::Value = r.json().await.unwrap();
    assert_eq!(b["error"]["code"], "db_unavailable", "{b}");
    // A latest read with nothing cached is told at once (it waited out its
    // whole deadline before), and what the operator must do.
    let started = std::time::Instant::now();
    let (s, b) = get_json(&key_url(&svc.url, "never-read-2")).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (503, Some("db_unavailable")),
        "{b}"
    );
    assert!(
        b["error"]["message"].as_str().unwrap().contains("token"),
        "{b}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(4),
        "answered after {:?}",
        started.elapsed()
    );
}

/// B3 with tokens: a restore keeps the live store's tokens. A token revoked
/// after the backup (it leaked) stays revoked, and one created since keeps
/// working; before, the backup's tokens came back with the data. Both
/// engines.
#[tokio::test(flavor = "multi_thread")]
async fn a_restore_keeps_the_tokens_of_the_live_store() {
    for engine in engines("restore_keeps_tokens") {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let mut db = db_server_on(dir, engine, &[]).await;
        let u = db.url.clone();
        let admin = create_token(dir, &u, "admin", "root", None);
        let leaked = create_token(dir, &u, "reader", "leaked", Some(&admin));
        let bk = dir.join("bk");
        let bk_arg = bk.to_str().unwrap();
        run_ok(
            dir,
            &[
                "backup", "create", "--server", &u, "--to", bk_arg, "--token", &admin,
            ],
        );
        run_ok(
            dir,
            &[
                "token", "revoke", "--server", &u, "--token", &admin, "leaked",
            ],
        );
        let later = create_token(dir, &u, "reader", "later", Some(&admin));
        db.terminate();

        let printed = run_ok(dir, &strs(&restore_args(dir, engine, &bk)));
        assert!(
            printed.contains("kept as the live store had them"),
            "{printed}"
        );
        let mut db = db_server_on(dir, engine, &[]).await;
        let state = format!("{}/v1/state", db.url);
        let (s, _) = call("GET", &state, Some(&leaked), "").await;
        assert_eq!(
            s, 401,
            "{engine:?}: a token revoked after the backup stays revoked"
        );
        let (s, b) = call("GET", &state, Some(&later), "").await;
        assert_eq!(
            s, 200,
            "{engine:?}: a token created after the backup works: {b}"
        );

        // The data lost, and a server started once on the empty store
        // before the restore: that store has no tokens, so the backup's
        // stay (before, the restore wiped them all).
        db.terminate();
        lose_data(dir, engine).await;
        let mut empty = db_server_on(dir, engine, &[]).await;
        empty.terminate();
        let printed = run_ok(dir, &strs(&restore_args(dir, engine, &bk)));
        assert!(printed.contains("the backup's"), "{printed}");
        let db = db_server_on(dir, engine, &[]).await;
        let (s, b) = call("GET", &format!("{}/v1/state", db.url), Some(&admin), "").await;
        assert_eq!(s, 200, "{engine:?}: the backup's admin token works: {b}");
    }
}

/// Protected mode trusts the programs on the server's host, not a page of
/// another site open in a browser there: a cross-site request (which needs
/// no CORS answer to change something) and DNS rebinding (another name
/// pointed at 127.0.0.1) are refused `403`, and change nothing; the
/// console's own requests still work.
#[tokio::test(flavor = "multi_thread")]
async fn protected_mode_refuses_pages_of_other_sites() {
    let tmp = tempfile::tempdir().unwrap();
    let db = db_server(tmp.path(), &[]).await;
    let u = &db.url;
    let host = u.trim_start_matches("http://");
    let client = reqwest::Client::new();
    let quiesce = |origin: &str, site: &str| {
        client
            .post(format!("{u}/v1/quiesce"))
            .header("origin", origin)
            .header("sec-fetch-site", site)
            .header("content-type", "application/json")
            .body(r#"{"seconds": 600, "message": "forged"}"#)
            .send()
    };
    let r = quiesce("https://evil.example", "cross-site").await.unwrap();
    assert_eq!(r.status(), 403);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "forbidden", "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("/console") && message.contains("token"),
        "{message}"
    );
    let (_, state) = get_json(&format!("{u}/v1/state")).await;
    assert!(state["quiesce"].is_null(), "nothing announced: {state}");
    // Raw requests (not from a browser): a target that names another host,
    // and two Host headers, are not taken for loopback programs.
    for request in [
        format!("GET http://evil.example/v1/state HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        format!("GET /v1/state HTTP/1.1\r\nHost: {host}\r\nHost: evil.example\r\nConnection: close\r\n\r\n"),
    ] {
        use std::io::{Read, Write};
        let mut conn = std::net::TcpStream::connect(host).unwrap();
        conn.write_all(request.as_bytes()).unwrap();
        let mut answer = String::new();
        conn.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 403"), "{request}: {answer}");
    }

    // DNS rebinding: same origin to the browser, another name to us; also
    // on a warm read, which the hot route answers before the router.
    let order =
        r#"{"table": "subscriber", "key": "k1", "op": "upsert", "fields": {"plan": "gold"}}"#;
    let out = ops_submit(tmp.path(), u, order, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = key_url(u, "k1");
    for _ in 0..2 {
        assert_eq!(get_json(&key).await.0, 200);
    }
    let rebound = client
        .get(&key)
        .header("host", "evil.example:7070")
        .header("origin", "http://evil.example:7070")
        .header("sec-fetch-site", "same-origin")
        .send()
        .await
        .unwrap();
    assert_eq!(rebound.status(), 403);
    // A same-origin GET from a plain-http page carries no browser mark at
    // all (no Origin, no Sec-Fetch-*): only its Host names another site.
    for url in [key.clone(), format!("{u}/v1/state")] {
        let rebound = client
            .get(&url)
            .header("host", "evil.example:7070")
            .send()
            .await
            .unwrap();
        assert_eq!(rebound.status(), 403, "{url}");
        let body: serde_json::Value = rebound.json().await.unwrap();
        assert_eq!(body["error"]["code"], "forbidden", "{body}");
    }
    // A target that names another host, on the warm read the hot route
    // answers before the router, and on whoami.
    let path = key.strip_prefix(u.as_str()).unwrap();
    for target in [path, "/v1/whoami"] {
        use std::io::{Read, Write};
        let request = format!(
            "GET http://evil.example{target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        );
        let mut conn = std::net::TcpStream::connect(host).unwrap();
        conn.write_all(request.as_bytes()).unwrap();
        let mut answer = String::new();
        conn.read_to_string(&mut answer).unwrap();
        let trusted = if target == path {
            answer.starts_with("HTTP/1.1 200")
        } else {
            answer.contains("\"admin\"")
        };
        assert!(!trusted, "{request}: {answer}");
    }
    let who: serde_json::Value = client
        .get(format!("{u}/v1/whoami"))
        .header("host", "evil.example:7070")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(who["role"].is_null(), "not admin under another name: {who}");

    // The console's own request: same origin, under a loopback name.
    let r = quiesce(&format!("http://{host}"), "same-origin")
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let (_, state) = get_json(&format!("{u}/v1/state")).await;
    assert_eq!(state["quiesce"]["message"], "forged", "{state}");
}

/// A reader token registers interest only under its own subscriber names
/// (before, any reader could read 4 M keys under another service server's
/// name and make the DB server forget everything that one held), claims at
/// most `max_subscribers_per_token` names, and loses its open watch stream
/// when it is revoked.
#[tokio::test(flavor = "multi_thread")]
async fn subscriber_names_belong_to_their_token_and_revocation_ends_its_stream() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let db = db_server(dir, &[("TIDEMARK_SERVER__MAX_SUBSCRIBERS_PER_TOKEN", "2")]).await;
    let u = &db.url;
    let admin = create_token(dir, u, "admin", "root", None);
    let ops = create_token(dir, u, "ops", "ops-1", Some(&admin));
    let svc = create_token(dir, u, "reader", "svc", Some(&admin));
    let other = create_token(dir, u, "reader", "other", Some(&admin));
    ops_submit(
        dir,
        u,
        &order_line("k1", json!({"plan": "v1"})),
        &["--token", &ops],
    );
    let client = reqwest::Client::new();
    let read = |token: &str, name: &str| {
        client
            .get(key_url(u, "k1"))
            .bearer_auth(token)
            .header("tidemark-subscriber", name)
            .send()
    };
    // "svc" claims svc-1 by watching with it.
    let mut stream = client
        .get(format!("{u}/v1/watch?subscriber=svc-1"))
        .bearer_auth(&svc)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    // Its own reads register, twice (the second from the read cache).
    for _ in 0..2 {
        assert_eq!(read(&svc, "svc-1").await.unwrap().status(), 200);
    }
    // Another token's reads under svc-1 are refused, cached or not,
    // without naming the token that holds it (the log does).
    for _ in 0..2 {
        let r = read(&other, "svc-1").await.unwrap();
        assert_eq!(r.status(), 403);
        let b: serde_json::Value = r.json().await.unwrap();
        let message = b["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("belongs to another token") && !message.contains("'svc'"),
            "{b}"
        );
    }
    // A read without a name is served to anyone with the role.
    let r = client
        .get(key_url(u, "k1"))
        .bearer_auth(&other)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Names per token: svc-2 is the second, svc-3 one too many.
    assert_eq!(read(&svc, "svc-2").await.unwrap().status(), 200);
    let r = read(&svc, "svc-3").await.unwrap();
    assert_eq!(r.status(), 429);
    let b: serde_json::Value = r.json().await.unwrap();
    assert_eq!(b["error"]["code"], "too_many_subscribers", "{b}");

    // Revoking "svc" ends its open streams: the watch, and a console feed.
    let mut feed = client
        .get(format!("{u}/v1/console/events"))
        .bearer_auth(&svc)
        .send()
        .await
        .unwrap();
    assert_eq!(feed.status(), 200);
    let (s, _) = call("DELETE", &format!("{u}/v1/tokens/svc"), Some(&admin), "").await;
    assert_eq!(s, 200);
    for (what, stream) in [("watch", &mut stream), ("console feed", &mut feed)] {
        let ended = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            loop {
                match stream.chunk().await {
                    Ok(Some(_)) => continue,
                    Ok(None) | Err(_) => return,
                }
            }
        })
        .await;
        assert!(ended.is_ok(), "the revoked token's {what} ended");
    }
    assert_eq!(read(&svc, "svc-1").await.unwrap().status(), 401);
}

/// Sends the head of `POST path` (a body of `len` bytes to follow), with
/// `token` if given, and returns once the server has let it through and
/// waits for its body (its `100 Continue`); the body is sent later with
/// [`finish`].
fn start_slow_post(host: &str, path: &str, token: Option<&str>, len: usize) -> std::net::TcpStream {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(host).unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Type: application/json\r\nContent-Length: {len}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).unwrap();
    conn.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        conn.read_exact(&mut byte).expect("an interim answer");
        got.push(byte[0]);
    }
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 100"), "{got}");
    conn
}

/// Sends the rest of a [`start_slow_post`] and reads the whole answer.
fn finish(mut conn: std::net::TcpStream, body: &str) -> String {
    use std::io::{Read, Write};
    conn.write_all(body.as_bytes()).unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    answer
}

/// A caller is judged again once its body has arrived: a token revoked
/// while a request was being sent does not act with it (a revoked admin
/// kept a request open and made itself a new token), and a protected-mode
/// caller whose body arrives after the first token was created is no
/// longer trusted. The first token may have any role (CONTRACT.md): until
/// an admin token exists, loopback callers still make tokens without one
/// (a first reader must not leave nobody able to manage tokens), and
/// nothing else; two Authorization headers are refused.
#[tokio::test(flavor = "multi_thread")]
async fn a_caller_is_judged_again_once_its_body_has_arrived() {
    let tmp = tempfile::tempdir().unwrap();
    let db = db_server(tmp.path(), &[]).await;
    let u = &db.url;
    let host = u.trim_start_matches("http://").to_owned();
    let tokens = format!("{u}/v1/tokens");
    // Protected mode: the first token may be a reader (before, refused).
    let (s, b) = call(
        "POST",
        &tokens,
        None,
        r#"{"name": "first", "role": "reader"}"#,
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let first = b["token"].as_str().unwrap().to_owned();
    // Protected mode is over for everything but making tokens.
    let (s, b) = call("GET", &format!("{u}/v1/state"), None, "").await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (401, Some("unauthenticated")),
        "{b}"
    );
    let (s, _) = call("GET", &format!("{u}/v1/state"), Some(&first), "").await;
    assert_eq!(s, 200);
    // The reader's own token does not make tokens.
    let (s, b) = call(
        "POST",
        &tokens,
        Some(&first),
        r#"{"name": "escalate", "role": "admin"}"#,
    )
    .await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (403, Some("forbidden")),
        "{b}"
    );
    // A caller without a token whose body is late, past the admin token.
    let late_body = r#"{"name": "backdoor", "role": "admin"}"#;
    let late = tokio::task::spawn_blocking({
        let host = host.clone();
        move || start_slow_post(&host, "/v1/tokens", None, late_body.len())
    })
    .await
    .unwrap();
    let (s, root) = call(
        "POST",
        &tokens,
        None,
        r#"{"name": "root", "role": "admin"}"#,
    )
    .await;
    assert_eq!(s, 200, "{root}");
    let root = root["token"].as_str().unwrap().to_owned();
    let answer = tokio::task::spawn_blocking(move || finish(late, late_body))
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    // A token revoked while its request was being sent.
    let (s, b) = call(
        "POST",
        &tokens,
        Some(&root),
        r#"{"name": "evil", "role": "admin"}"#,
    )
    .await;
    assert_eq!(s, 200, "{b}");
    let evil = b["token"].as_str().unwrap().to_owned();
    let body = r#"{"name": "persist", "role": "admin"}"#;
    let pending = tokio::task::spawn_blocking({
        let (host, evil) = (host.clone(), evil.clone());
        move || start_slow_post(&host, "/v1/tokens", Some(&evil), body.len())
    })
    .await
    .unwrap();
    let (s, b) = call("DELETE", &format!("{tokens}/evil"), Some(&root), "").await;
    assert_eq!(s, 200, "{b}");
    let answer = tokio::task::spawn_blocking(move || finish(pending, body))
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    let (_, list) = call("GET", &tokens, Some(&root), "").await;
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(names, ["first", "root"], "nothing was created: {list}");
    // With an admin token, none is made without one any more.
    let (s, b) = call(
        "POST",
        &tokens,
        None,
        r#"{"name": "another", "role": "admin"}"#,
    )
    .await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (401, Some("unauthenticated")),
        "{b}"
    );
    // Two Authorization headers: which one is meant cannot be told.
    let r = reqwest::Client::new()
        .get(format!("{u}/v1/audit"))
        .header("authorization", format!("Bearer {root}"))
        .header("authorization", "Bearer tm_other")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}
