//! The quiesce notice (S4): announced, seen by users of service servers,
//! cancelled; after its deadline the server is offline.

use crate::harness::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn a_quiesce_notice_is_seen_cancelled_and_then_takes_the_server_offline() {
    for engine in engines("a_quiesce_notice_is_seen_cancelled_and_then_takes_the_server_offline") {
        a_quiesce_notice_is_seen_cancelled_and_then_takes_the_server_offline_on(engine).await;
    }
}

async fn a_quiesce_notice_is_seen_cancelled_and_then_takes_the_server_offline_on(engine: Engine) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let db = db_server_on(dir, engine, &[]).await;
    let svc = service(dir, "svc-a", &db.url, "accept-stale", &[]).await;
    let record = format!("{}/v1/records/subscriber/k1", svc.url);

    let out = run(
        dir,
        &[
            "quiesce",
            "--server",
            &db.url,
            "--in",
            "600",
            "--message",
            "upgrade at noon",
        ],
        None,
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, state) = get_json(&format!("{}/v1/state", db.url)).await;
    assert_eq!(state["quiesce"]["message"], "upgrade at noon");
    assert!(state["quiesce"]["seconds_left"].as_u64().unwrap() > 590);
    // Users of the service server see the time left.
    let left = eventually(10, "the service server to learn of the notice", || {
        let record = record.clone();
        async move {
            let r = reqwest::get(&record).await.ok()?;
            r.headers()
                .get("tidemark-quiesce-in")?
                .to_str()
                .ok()?
                .parse::<u64>()
                .ok()
        }
    })
    .await;
    assert!(left > 590 && left <= 600, "{left}");
    // Its state counts the notice down too, not only `quiesce_in` (its
    // `seconds_left` stayed what it was when the notice arrived).
    let svc_state = format!("{}/v1/state", svc.url);
    let st = eventually(10, "a few seconds of the notice to pass", || {
        let u = svc_state.clone();
        async move {
            let (_, st) = get_json(&u).await;
            (st["quiesce_in"].as_u64()? <= 597).then_some(st)
        }
    })
    .await;
    let (left, shown) = (
        st["quiesce_in"].as_u64().unwrap(),
        st["quiesce"]["seconds_left"].as_u64().unwrap(),
    );
    assert!(shown == left || shown == left + 1, "{st}");
    let status = run(dir, &["status", "--server", &db.url], None, &[]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("upgrade at noon"), "{text}");
    // Values as the API spells them (it printed Rust's `Normal`, `Primary`).
    for line in [
        "state         normal",
        "role          primary",
        "recovery      normal",
    ] {
        assert!(text.contains(line), "{line:?} in {text}");
    }
    let status = run(dir, &["status", "--server", &db.url, "--json"], None, &[]);
    let json: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(
        (json["state"].as_str(), json["quiesce"]["message"].as_str()),
        (Some("normal"), Some("upgrade at noon")),
        "/v1/state as it is: {json}"
    );

    let out = run(
        dir,
        &["quiesce", "--server", &db.url, "--cancel"],
        None,
        &[],
    );
    assert!(out.status.success());
    let (_, state) = get_json(&format!("{}/v1/state", db.url)).await;
    assert!(state["quiesce"].is_null());
    eventually(10, "the cancellation to reach the service server", || {
        let record = record.clone();
        async move {
            reqwest::get(&record)
                .await
                .ok()?
                .headers()
                .get("tidemark-quiesce-in")
                .is_none()
                .then_some(())
        }
    })
    .await;

    // Bad requests.
    let (s, b) = post_raw(&format!("{}/v1/quiesce", db.url), "{\"secs\": 3}").await;
    assert_eq!((s, b["error"]["code"].as_str()), (400, Some("bad_json")));
    // An array is not a notice (serde took `[3, "x"]` for one).
    let (s, b) = post_raw(&format!("{}/v1/quiesce", db.url), "[3, \"x\"]").await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (400, Some("bad_json")),
        "{b}"
    );
    let (s, b) = post_raw(
        &format!("{}/v1/quiesce", db.url),
        json!({"seconds": 10_000_000}).to_string(),
    )
    .await;
    assert_eq!((s, b["error"]["code"].as_str()), (400, Some("bad_request")));
    let out = run(
        dir,
        &["quiesce", "--server", &db.url, "--cancel"],
        None,
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "cancelling nothing is refused");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no quiesce notice"));
    assert_eq!(
        run(dir, &["quiesce", "--server", &db.url], None, &[])
            .status
            .code(),
        Some(2),
        "--in or --cancel is required"
    );

    // A message goes to every stream and into the audit log: its length
    // is bounded.
    let (s, b) = post_raw(
        &format!("{}/v1/quiesce", db.url),
        json!({"seconds": 30, "message": "x".repeat(1001)}).to_string(),
    )
    .await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (400, Some("bad_request")),
        "{b}"
    );
    // A misspelt message is refused, not announced as the default one.
    let (s, b) = post_raw(
        &format!("{}/v1/quiesce", db.url),
        json!({"seconds": 30, "mesage": "hi"}).to_string(),
    )
    .await;
    assert_eq!(s / 100, 4, "{b}");
    assert!(
        b["error"]["message"].as_str().unwrap().contains("mesage"),
        "{b}"
    );
    let (_, state) = get_json(&format!("{}/v1/state", db.url)).await;
    assert!(state["quiesce"].is_null(), "nothing announced: {state}");

    // A notice that runs out takes the server offline.
    let out = run(
        dir,
        &["quiesce", "--server", &db.url, "--in", "1"],
        None,
        &[],
    );
    assert!(out.status.success());
    let readyz = format!("{}/readyz", db.url);
    eventually(10, "the server to go offline", || {
        let readyz = readyz.clone();
        async move { (reqwest::get(&readyz).await.ok()?.status().as_u16() == 503).then_some(()) }
    })
    .await;
    let r = reqwest::get(format!("{}/v1/records/subscriber/k1", db.url))
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 503);
    assert!(r.headers().get("retry-after").is_some());
    let b: serde_json::Value = r.json().await.unwrap();
    assert_eq!(b["error"]["code"], "quiescing");
    let (s, b) = post_raw(
        &format!("{}/v1/orders", db.url),
        json!({"orders": [{"source": "o", "seq": 1, "table": "subscriber", "key": "k", "op": "upsert", "fields": {}}]}).to_string(),
    )
    .await;
    assert_eq!((s, b["error"]["code"].as_str()), (503, Some("quiescing")));
    // Counted where an alert looks for the server's own failures, planned
    // 503s included (README): the read and the order above at least.
    let counted = metric(&db.url, "tidemark_http_server_errors_total").await;
    assert!(counted >= 2, "{counted} server errors counted");
    // `ops submit` says so at once, in one line, and keeps the orders
    // journaled (it retried silently for a minute before).
    let line = r#"{"table": "subscriber", "key": "k", "op": "upsert", "fields": {"plan": "x"}}"#;
    let out = ops_submit_output(dir, &db.url, &format!("{line}\n"), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("offline after a quiesce notice") && stderr.contains("stay journaled"),
        "{stderr}"
    );
    assert_eq!(
        commit_seq(&db.url).await,
        0,
        "nothing was applied while offline"
    );
}

/// S8: a service server is quiesced on its own, so its terminals move to
/// the others before it goes offline: it shows the time left, then answers
/// reads and readiness `503 quiescing` with `Retry-After`, while the DB
/// server and the other service servers serve on; cancelling brings it
/// back. Found by an outside audit: `quiesce --server SERVICE_URL` got 404.
#[tokio::test(flavor = "multi_thread")]
async fn a_service_server_is_quiesced_on_its_own() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let db = db_server(dir, &[]).await;
    let a = service(dir, "svc-a", &db.url, "latest-only", &[]).await;
    let b = service(dir, "svc-b", &db.url, "latest-only", &[]).await;
    ops_submit(
        dir,
        &db.url,
        &order_line("k1", json!({"plan": "gold"})),
        &[],
    );
    let quiesce = |args: &[&str]| {
        let mut all = vec!["quiesce", "--server", a.url.as_str()];
        all.extend_from_slice(args);
        run(dir, &all, None, &[])
    };
    // What a web page on this host could send is refused, and changes
    // nothing: a form or text post, a page of another site, DNS rebinding.
    let endpoint = format!("{}/v1/quiesce", a.url);
    let http = reqwest::Client::new();
    for (headers, status, code) in [
        (vec![("content-type", "text/plain")], 400, "bad_json"),
        // Not an object (serde took an array for the struct).
        (
            vec![("content-type", "application/json"), ("x-body", "array")],
            400,
            "bad_json",
        ),
        (
            vec![
                ("content-type", "application/json"),
                ("origin", "http://evil.example"),
            ],
            403,
            "forbidden",
        ),
        (
            vec![
                ("content-type", "application/json"),
                ("host", "evil.example"),
            ],
            403,
            "forbidden",
        ),
    ] {
        let body = if headers.contains(&("x-body", "array")) {
            "[0, \"x\"]"
        } else {
            "{\"seconds\": 0}"
        };
        let mut req = http.post(&endpoint).body(body);
        for (n, v) in &headers {
            req = req.header(*n, *v);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status().as_u16(), status, "{headers:?}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], code, "{headers:?}: {body}");
    }
    // A body past 64 KiB without a declared length (chunked) is refused
    // as it comes, 413, and changes nothing.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let host = a.url.trim_start_matches("http://");
        let mut conn = tokio::net::TcpStream::connect(host).await.unwrap();
        let head = format!("POST /v1/quiesce HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n");
        conn.write_all(head.as_bytes()).await.unwrap();
        let chunk = format!("{:x}\r\n{}\r\n", 8192, " ".repeat(8192));
        let mut answer = Vec::new();
        for _ in 0..9 {
            // The server may answer and close before the last chunk.
            if conn.write_all(chunk.as_bytes()).await.is_err() {
                break;
            }
        }
        let _ = conn.write_all(b"0\r\n\r\n").await;
        // Until the error's code has come (the connection may stay open).
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            let mut buf = [0u8; 4096];
            while !String::from_utf8_lossy(&answer).contains("payload_too_large") {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => answer.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        assert!(answer.contains("payload_too_large"), "{answer}");
    }
    // A new client: a pooled connection may have met the server's header
    // deadline meanwhile.
    let http = reqwest::Client::new();
    let r = http
        .delete(&endpoint)
        .header("origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let (_, st) = get_json(&format!("{}/v1/state", a.url)).await;
    assert!(st["own_quiesce"].is_null(), "{st}");
    let out = quiesce(&["--in", "600", "--message", "moving you to svc-b"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, st) = get_json(&format!("{}/v1/state", a.url)).await;
    assert_eq!(st["own_quiesce"]["message"], "moving you to svc-b", "{st}");
    let left = st["quiesce_in"].as_u64().expect("quiesce_in");
    assert!(left > 590 && left <= 600, "{st}");
    // `tidemark status` of a service server shows it (before, exit 1: it
    // read only a DB server's state).
    let text = run_ok(dir, &["status", "--server", &a.url]);
    assert!(
        text.contains("service server 'svc-a'")
            && text.contains("this server: offline in")
            && text.contains("moving you to svc-b")
            && text.contains("the DB server: none")
            && text.contains("recovery      normal"),
        "{text}"
    );
    // Serving meanwhile, every answer saying how long is left.
    let r = reqwest::get(key_url(&a.url, "k1")).await.unwrap();
    assert_eq!(r.status(), 200);
    let left: u64 = r.headers()["tidemark-quiesce-in"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(left > 590 && left <= 600, "{left}");

    let out = quiesce(&["--in", "1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let url = key_url(&a.url, "k1");
    let (retry, body) = eventually(10, "svc-a to go offline", || {
        let url = url.clone();
        async move {
            let r = reqwest::get(&url).await.ok()?;
            if r.status() != 503 {
                return None;
            }
            let retry = r.headers().get("retry-after").cloned();
            Some((retry, r.json::<serde_json::Value>().await.ok()?))
        }
    })
    .await;
    assert_eq!(body["error"]["code"], "quiescing", "{body}");
    assert!(retry.is_some(), "Retry-After on {body}");
    let (s, body) = get_json(&format!("{}/readyz", a.url)).await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (503, Some("quiescing"))
    );
    // The DB server and the other service server serve on.
    for url in [key_url(&b.url, "k1"), key_url(&db.url, "k1")] {
        let (s, r) = get_json(&url).await;
        assert_eq!(
            (s, r["fields"]["plan"].as_str()),
            (200, Some("gold")),
            "{url}"
        );
    }
    let (s, _) = get_json(&format!("{}/readyz", db.url)).await;
    assert_eq!(s, 200);

    let out = quiesce(&["--cancel"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (s, r) = get_json(&key_url(&a.url, "k1")).await;
    assert_eq!(
        (s, r["fields"]["plan"].as_str()),
        (200, Some("gold")),
        "{r}"
    );
    let out = quiesce(&["--cancel"]);
    assert_eq!(out.status.code(), Some(1), "cancelling nothing is refused");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no quiesce notice"));
}

/// S8, "by name, remotely": `quiesce --server DB_URL --service NAME`
/// reaches that one service server through its DB server's watch stream.
/// It goes offline when the notice runs out, the others serve on; a
/// service server restarted during the countdown is told again; a cancel
/// by name brings it back. A name with no stream open is refused, and
/// nothing is sent.
#[tokio::test(flavor = "multi_thread")]
async fn a_service_server_is_quiesced_by_name_through_its_db_server() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut db = db_server(dir, &[]).await;
    let db_url = db.url.clone();
    let mut a = service(dir, "svc-a", &db_url, "latest-only", &[]).await;
    let b = service(dir, "svc-b", &db_url, "latest-only", &[]).await;
    ops_submit(
        dir,
        &db_url,
        &order_line("k1", json!({"plan": "gold"})),
        &[],
    );
    let by_name = |name: &str, args: &[&str]| {
        let mut all = vec!["quiesce", "--server", db_url.as_str(), "--service", name];
        all.extend_from_slice(args);
        run(dir, &all, None, &[])
    };
    let own_notice = |url: String| async move {
        let (_, st) = get_json(&format!("{url}/v1/state")).await;
        st["own_quiesce"]["message"].as_str().map(str::to_owned)
    };

    // Nobody of that name watches: refused, exit 1, nothing sent.
    let out = by_name("svc-x", &["--in", "60"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no watch stream open"), "{err}");
    // A name no stream could have is bad input.
    let r = reqwest::Client::new()
        .post(format!(
            "{}/v1/services/{}/quiesce",
            db_url,
            "n".repeat(200)
        ))
        .json(&json!({"seconds": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    let out = by_name("svc-a", &["--in", "600", "--message", "svc-a: update"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually(10, "svc-a to hold the notice sent by name", || {
        let url = a.url.clone();
        async move { (own_notice(url).await.as_deref() == Some("svc-a: update")).then_some(()) }
    })
    .await;
    // Only svc-a: not svc-b, and not the DB server itself.
    assert_eq!(own_notice(b.url.clone()).await, None);
    // It is cancelled where it was given: not on svc-a's host.
    let out = run(dir, &["quiesce", "--server", &a.url, "--cancel"], None, &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("sent by name") && err.contains("--service"),
        "{err}"
    );
    assert_eq!(
        own_notice(a.url.clone()).await.as_deref(),
        Some("svc-a: update")
    );
    // A cancel marked as asked on by another instance only retells what is
    // stored: it removes nothing (a late one, crossing a newer notice,
    // removed that notice from the store while its service server held it:
    // a second outside audit).
    let r = reqwest::Client::new()
        .delete(format!("{}/v1/services/svc-a/quiesce", db_url))
        .header("tidemark-forwarded", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        (v["had"].as_bool(), v["streams"].as_u64()),
        (Some(false), Some(1)),
        "{v}"
    );
    assert_eq!(
        own_notice(a.url.clone()).await.as_deref(),
        Some("svc-a: update")
    );
    let (_, st) = get_json(&format!("{}/v1/state", db_url)).await;
    assert!(st["quiesce"].is_null(), "{st}");
    let r = reqwest::get(key_url(&a.url, "k1")).await.unwrap();
    assert_eq!(r.status(), 200, "serving during the countdown");
    assert!(r.headers().contains_key("tidemark-quiesce-in"));

    // Restarted during the countdown: told again when its stream opens.
    a.terminate();
    let a = service(dir, "svc-a", &db_url, "latest-only", &[]).await;
    eventually(
        10,
        "the restarted svc-a to be told the notice again",
        || {
            let url = a.url.clone();
            async move { (own_notice(url).await.as_deref() == Some("svc-a: update")).then_some(()) }
        },
    )
    .await;

    let out = by_name("svc-a", &["--in", "1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let url = key_url(&a.url, "k1");
    let body = eventually(10, "svc-a to go offline", || {
        let url = url.clone();
        async move {
            let r = reqwest::get(&url).await.ok()?;
            (r.status() == 503).then_some(())?;
            r.json::<serde_json::Value>().await.ok()
        }
    })
    .await;
    assert_eq!(body["error"]["code"], "quiescing", "{body}");
    // Past its deadline, the DB server restarted: the reopened stream is
    // told neither the notice nor a cancel, so svc-a stays offline.
    assert!(db.terminate().success());
    let addr = db_url.trim_start_matches("http://").to_owned();
    db = Proc::start_at("db-2", dir, &strs(&server_args(dir, Engine::Sqlite)), &addr);
    db.wait_ok("/readyz").await;
    let (_, health) = get_json(&format!("{db_url}/healthz")).await;
    let boot = health["boot"].as_str().expect("a boot").to_owned();
    eventually(
        20,
        "svc-a's stream to reopen on the restarted DB server",
        || {
            let (url, boot) = (a.url.clone(), boot.clone());
            async move {
                let (_, st) = get_json(&format!("{url}/v1/state")).await;
                let id = st["last_event_id"].as_str()?.to_owned();
                (st["connected"] == true && id.ends_with(&boot)).then_some(())
            }
        },
    )
    .await;
    let (s, body) = get_json(&key_url(&a.url, "k1")).await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (503, Some("quiescing")),
        "{body}"
    );
    for url in [key_url(&b.url, "k1"), key_url(&db_url, "k1")] {
        let (s, r) = get_json(&url).await;
        assert_eq!(
            (s, r["fields"]["plan"].as_str()),
            (200, Some("gold")),
            "{url}"
        );
    }

    let out = by_name("svc-a", &["--cancel"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let url = key_url(&a.url, "k1");
    eventually(10, "svc-a to serve again after the cancel by name", || {
        let url = url.clone();
        async move { (reqwest::get(&url).await.ok()?.status() == 200).then_some(()) }
    })
    .await;
    // With no notice stored, a connected service server is told none is in
    // force (it may hold one whose cancel it missed), and the answer says
    // nothing was stored; with no stream either, nothing to cancel.
    let out = by_name("svc-a", &["--cancel"]);
    assert!(out.status.success());
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("was stored") && said.contains("1 open stream"),
        "{said}"
    );
    let out = by_name("svc-x", &["--cancel"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no quiesce notice"), "{err}");
    // `.` and `..` cannot be named in a URL path (`/v1/services/../quiesce`
    // would be the DB server's own notice): bad usage, nothing sent.
    for name in [".", ".."] {
        let out = by_name(name, &["--in", "600"]);
        assert_eq!(out.status.code(), Some(2), "{name}");
        let (s, _) = get_json(&format!("{}/v1/watch?subscriber={name}", db_url)).await;
        assert_eq!(s, 400, "a watch stream under {name:?}");
    }
    let (_, st) = get_json(&format!("{}/v1/state", db_url)).await;
    assert!(st["quiesce"].is_null(), "{st}");
    let audit = run_ok(dir, &["audit", "--server", &db_url]);
    assert!(
        audit.contains("service_quiesce") && audit.contains("service_quiesce_cancel"),
        "{audit}"
    );
}
