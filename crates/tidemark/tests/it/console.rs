//! The operator console (issue 15, in part): the page, its live feed, and a
//! real headless Chromium rendering the live state.

use crate::harness::*;

/// The page is served from the binary to anyone (it holds no data); its
/// feed is the server state, once a second, to readers only.
#[tokio::test(flavor = "multi_thread")]
async fn the_console_page_and_its_feed() {
    let tmp = tempfile::tempdir().unwrap();
    let db = db_server(tmp.path(), &[]).await;
    let r = reqwest::get(format!("{}/console", db.url)).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let html = r.text().await.unwrap();
    assert!(
        html.contains("Tidemark console")
            && !html.contains("http://")
            && !html.contains("https://"),
        "no CDN"
    );
    let mut r = reqwest::get(format!("{}/v1/console/events", db.url))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut got = String::new();
    while got.matches("\n\n").count() < 2 {
        let chunk = r.chunk().await.unwrap().expect("an event");
        got.push_str(&String::from_utf8_lossy(&chunk));
    }
    // The progress so far (none: no recovery ran), then the state, with
    // the server's clock.
    assert!(got.starts_with("event: progress\ndata: []\n\n"), "{got}");
    assert!(got.contains("event: state\ndata: {"), "{got}");
    assert!(got.contains("\"state\":\"normal\""), "{got}");
    assert!(got.contains("\"now_ms\":"), "{got}");
}

/// The headers every console file is served with.
const SECURITY: [(&str, &str); 5] = [
    ("content-security-policy", "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"),
    ("x-frame-options", "DENY"),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("cache-control", "no-store"),
];

/// A server's console: the page and its script, with the security headers
/// and their content types, no inline script, and `/` and `/console/`
/// leading to the page, all without a token.
async fn check_console_files(base: &str) {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for (path, content_type) in [
        ("/console", "text/html; charset=utf-8"),
        ("/console.js", "text/javascript; charset=utf-8"),
    ] {
        let r = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{base}{path}");
        let h = r.headers();
        assert_eq!(h["content-type"], content_type, "{path}");
        for (name, value) in SECURITY {
            assert_eq!(
                h.get(name).map(|v| v.to_str().unwrap()),
                Some(value),
                "{path}: {name}"
            );
        }
        let body = r.text().await.unwrap();
        if path == "/console" {
            assert!(
                body.contains("<script src=\"/console.js\"></script>")
                    && !body.contains("<script>"),
                "the page's script is a file of its own: {body}"
            );
        } else {
            assert!(body.starts_with("\"use strict\";"), "{body}");
        }
    }
    for path in ["/", "/console/"] {
        let r = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 303, "{base}{path}");
        assert_eq!(r.headers()["location"], "/console", "{base}{path}");
    }
}

/// The consoles of both servers are served with the headers that keep
/// other sites and scripts out, and are reached from `/` and `/console/`
/// without a token, before and after tokens exist; `GET /v1/whoami` says
/// what the presented token is.
#[tokio::test(flavor = "multi_thread")]
async fn the_consoles_are_served_safely_and_say_who_the_token_is() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let db = db_server(dir, &[]).await;
    check_console_files(&db.url).await;
    let whoami = |t: Option<String>| {
        let url = format!("{}/v1/whoami", db.url);
        async move {
            let mut req = reqwest::Client::new().get(url);
            if let Some(t) = t {
                req = req.bearer_auth(t);
            }
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 200);
            r.json::<serde_json::Value>().await.unwrap()
        }
    };
    assert_eq!(
        whoami(None).await,
        serde_json::json!({"name": "loopback", "role": "admin", "protected": true}),
        "protected mode trusts this host's programs"
    );
    let admin = create_token(dir, &db.url, "admin", "root", None);
    let reader = create_token(dir, &db.url, "reader", "wall", Some(&admin));
    // Every console file still needs no token; the feed does.
    check_console_files(&db.url).await;
    let r = reqwest::get(format!("{}/v1/console/events", db.url))
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    for (t, want) in [
        (
            None,
            serde_json::json!({"name": null, "role": null, "protected": false}),
        ),
        (
            Some("tm_wrong".to_owned()),
            serde_json::json!({"name": null, "role": null, "protected": false}),
        ),
        (
            Some(reader),
            serde_json::json!({"name": "wall", "role": "reader", "protected": false}),
        ),
        (
            Some(admin.clone()),
            serde_json::json!({"name": "root", "role": "admin", "protected": false}),
        ),
    ] {
        assert_eq!(whoami(t.clone()).await, want, "{t:?}");
    }
    let svc = service(dir, "svc-a", &db.url, "accept-stale", &["--token", &admin]).await;
    check_console_files(&svc.url).await;
}

/// A real browser loads the page and shows the live state. Skipped where
/// Chromium is not installed (Debian's `chromium`).
#[tokio::test(flavor = "multi_thread")]
async fn a_real_browser_shows_the_live_state() {
    let Some(chromium) = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
    else {
        eprintln!("skipped: no Chromium (apt-get install chromium)");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let db = db_server(tmp.path(), &[]).await;
    let profile = tmp.path().join("chromium-profile");
    let out = std::process::Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=4000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("{}/console", db.url))
        .output()
        .expect("run chromium");
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        dom.contains("id=\"state\" class=\"big state-normal\">normal<"),
        "the page shows the live state; chromium said: {}\n{dom}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        dom.contains("single instance (embedded engine"),
        "the cluster section says HA needs PostgreSQL: {dom}"
    );
    assert!(
        dom.contains("id=\"schema-current\">version 1"),
        "the page shows the schema version in force: {dom}"
    );
}

/// Orders of the source `story`: `seqs` upserting `key-{seq % 100}`.
fn story_orders(seqs: std::ops::RangeInclusive<u64>, plan: &str) -> serde_json::Value {
    let orders: Vec<serde_json::Value> = seqs
        .map(|seq| {
            serde_json::json!({"source": "story", "seq": seq, "table": "subscriber",
                "key": format!("key-{:02}", (seq - 1) % 100), "op": "upsert", "fields": {"plan": plan}})
        })
        .collect();
    serde_json::json!({ "orders": orders })
}

/// The scripted story in a real headless Chromium (issue 15): load, online
/// backup, disaster, restore, recovery watched on the page (remaining
/// falling, an ETA, the final "recovered"), a quiesce announced from the
/// page with an admin token and counted down on the DB server's and a
/// service server's pages, and no actions for a wrong or absent token.
/// Screenshots go to `$CARGO_TARGET_TMPDIR/console-screenshots/`.
#[tokio::test(flavor = "multi_thread")]
async fn the_story_in_a_real_browser() {
    let Some(chromium) = crate::cdp::chromium() else {
        eprintln!("skipped: no Chromium (apt-get install chromium)");
        return;
    };
    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut db = db_server(dir, &[]).await;
    let http = reqwest::Client::new();
    let post = |url: String, body: serde_json::Value| {
        let http = http.clone();
        async move {
            let r = http.post(&url).json(&body).send().await.unwrap();
            let status = r.status().as_u16();
            let body: serde_json::Value = r.json().await.unwrap_or_default();
            assert!(status < 300, "POST {url}: {status} {body}");
            body
        }
    };
    // Load: 100 records; online backup; then 60 more orders.
    post(
        format!("{}/v1/orders", db.url),
        story_orders(1..=100, "before"),
    )
    .await;
    let backup = dir.join("b1");
    let out = run(
        dir,
        &[
            "backup",
            "create",
            "--server",
            &db.url,
            "--to",
            backup.to_str().unwrap(),
        ],
        None,
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    post(
        format!("{}/v1/orders", db.url),
        story_orders(101..=160, "after"),
    )
    .await;
    // Disaster, restore, and the server starts recovering.
    db.kill9();
    lose_data(dir, Engine::Sqlite).await;
    let out = run(
        dir,
        &strs(&restore_args(dir, Engine::Sqlite, &backup)),
        None,
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let db = db_server(dir, &[]).await;
    let profile = tempfile::tempdir().unwrap();
    let mut b = crate::cdp::Browser::launch(chromium, profile.path()).await;
    let page = b.open(&format!("{}/console", db.url), 1280, 1000).await;
    b.wait_for(
        &page,
        "the recovering state",
        "document.getElementById('state').textContent === 'recovering'",
        60,
    )
    .await;
    // Protected mode (no token yet, a loopback client): the page shows
    // data but no action. Then tokens: every request needs one.
    assert_eq!(
        b.eval(
            &page,
            "document.querySelectorAll('.admin:not(.hidden)').length"
        )
        .await,
        serde_json::json!(0)
    );
    let admin = create_token(dir, &db.url, "admin", "operator", None);
    let reader = create_token(dir, &db.url, "reader", "wallboard", Some(&admin));
    let svc = service(dir, "svc-a", &db.url, "latest-only", &["--token", &reader]).await;
    let http = reqwest::Client::builder()
        .default_headers(
            [(
                reqwest::header::AUTHORIZATION,
                format!("Bearer {admin}").parse().unwrap(),
            )]
            .into_iter()
            .collect(),
        )
        .build()
        .unwrap();
    let post = |path: &str, body: serde_json::Value| {
        let (http, url) = (http.clone(), format!("{}{path}", db.url));
        async move {
            let r = http.post(&url).json(&body).send().await.unwrap();
            let status = r.status().as_u16();
            let body: serde_json::Value = r.json().await.unwrap_or_default();
            assert!(status < 300, "POST {url}: {status} {body}");
            body
        }
    };

    b.run(
        &page,
        &format!("document.getElementById('token').value = '{admin}'; document.getElementById('token-form').requestSubmit(); true"),
    )
    .await;
    b.wait_for(
        &page,
        "the admin token accepted",
        "document.getElementById('token-state').textContent === 'admin'",
        60,
    )
    .await;

    // Recovery: the schedule list names the 60 keys changed since the
    // backup; the difference data follows in three steps.
    let entries: Vec<serde_json::Value> = (101..=160u64)
        .map(|seq| serde_json::json!({"table": "subscriber", "key": format!("key-{:02}", (seq - 1) % 100), "through_seq": seq}))
        .collect();
    post(
        "/v1/recovery/schedule",
        serde_json::json!({"source": "story", "entries": entries, "final": true}),
    )
    .await;
    b.wait_for(
        &page,
        "60 remaining",
        "document.getElementById('remaining').textContent === '60'",
        60,
    )
    .await;
    b.wait_for(
        &page,
        "flagged keys listed",
        "document.querySelectorAll('#flags tr').length === 50",
        60,
    )
    .await;
    for (step, seqs) in [(1, 101..=120), (2, 121..=140)] {
        post("/v1/orders", story_orders(seqs, "after")).await;
        let left = 60 - 20 * step;
        b.wait_for(
            &page,
            &format!("{left} remaining"),
            &format!("document.getElementById('remaining').textContent === '{left}'"),
            60,
        )
        .await;
    }
    b.wait_for(
        &page,
        "an ETA",
        "document.getElementById('eta').textContent.startsWith('in ')",
        60,
    )
    .await;
    // A page opened now still draws the recovery from its start: the
    // server sends the samples it took.
    let late = b.open(&format!("{}/console", db.url), 1280, 1000).await;
    b.wait_for(
        &late,
        // Its script too: a token submitted before it runs is a plain
        // form submission, which CSP blocks after it cancelled the
        // script's loading (the page then never came to life).
        "the page and its script",
        "document.getElementById('token-form') !== null && typeof checkToken === 'function'",
        60,
    )
    .await;
    b.run(
        &late,
        &format!("document.getElementById('token').value = '{reader}'; document.getElementById('token-form').requestSubmit(); true"),
    )
    .await;
    b.wait_for(
        &late,
        "the chart from the server's samples",
        "chartSamples.length > 1 && chartSamples[0][0] < performance.timeOrigin",
        60,
    )
    .await;
    // The paging and search happen on the server.
    b.run(
        &page,
        "const s = document.getElementById('flag-search'); s.value = 'key-5'; s.dispatchEvent(new Event('input')); true",
    )
    .await;
    b.wait_for(
        &page,
        "the search's matches",
        "[...document.querySelectorAll('#flags tr')].length > 0 && [...document.querySelectorAll('#flags tr')].every((tr) => tr.children[1].textContent.startsWith('key-5'))",
        60,
    )
    .await;
    b.wait_for(
        &page,
        "the service server listed with its policy",
        "[...document.querySelectorAll('#services tr')].some((tr) => tr.children[0].textContent === 'svc-a' && tr.children[1].textContent === 'latest-only' && tr.children[4].textContent === 'connected')",
        60,
    )
    .await;
    // The tables keep their rows across refreshes (a button or row found
    // before a refresh is still the one on the page): two more polls of
    // the service servers remove no row and add none.
    b.run(
        &page,
        "performance.clearResourceTimings(); window.kept = document.querySelector('#services tr'); window.churn = 0; new MutationObserver((ms) => { for (const m of ms) window.churn += m.addedNodes.length + m.removedNodes.length; }).observe(document.getElementById('services'), {childList: true}); true",
    )
    .await;
    b.wait_for(
        &page,
        "two more polls of the service servers",
        "performance.getEntriesByType('resource').filter((e) => e.name.endsWith('/v1/services')).length >= 2",
        60,
    )
    .await;
    assert_eq!(
        b.eval(
            &page,
            "window.churn === 0 && window.kept === document.querySelector('#services tr') && window.kept.dataset.key === 'svc-a'"
        )
        .await,
        serde_json::json!(true),
        "the services table was rebuilt"
    );
    b.screenshot(&page, &shots.join("console-recovery.png"))
        .await;
    post("/v1/orders", story_orders(141..=160, "after")).await;
    b.wait_for(
        &page,
        "0 remaining",
        "document.getElementById('remaining').textContent === '0'",
        60,
    )
    .await;
    // Nothing remains, so no rate (before, one decayed for 30 s).
    b.wait_for(
        &page,
        "no rate once nothing remains",
        "document.getElementById('rate').textContent === '–'",
        5,
    )
    .await;
    post("/v1/recovery/complete", serde_json::json!({})).await;
    b.wait_for(
        &page,
        "recovered",
        "document.getElementById('state').textContent === 'recovered'",
        60,
    )
    .await;
    b.screenshot(&page, &shots.join("console-recovered.png"))
        .await;

    // Quiesce, announced from the page, counted down on both pages.
    b.run(
        &page,
        "window.confirm = () => true; document.getElementById('q-secs').value = '120'; document.getElementById('q-msg').value = 'maintenance'; document.getElementById('q-send').click(); true",
    )
    .await;
    b.wait_for(
        &page,
        "the countdown",
        "/^offline in 1[0-2][0-9] s$/.test(document.getElementById('quiesce').textContent)",
        60,
    )
    .await;
    assert_eq!(b.text(&page, "quiesce-message").await, "maintenance");
    let svc_page = b.open(&format!("{}/console", svc.url), 1024, 600).await;
    b.wait_for(
        &svc_page,
        "the service server's countdown",
        "/^offline in 1[0-2][0-9] s$/.test(document.getElementById('quiesce').textContent)",
        60,
    )
    .await;
    assert_eq!(b.text(&svc_page, "policy").await, "latest-only");
    b.screenshot(&page, &shots.join("console-quiesce.png"))
        .await;
    b.screenshot(&svc_page, &shots.join("service-console-quiesce.png"))
        .await;
    b.run(&page, "document.getElementById('q-cancel').click(); true")
        .await;
    b.wait_for(
        &page,
        "the notice cancelled",
        "document.getElementById('quiesce').textContent === 'none'",
        60,
    )
    .await;
    b.wait_for(
        &svc_page,
        "the notice cancelled",
        "document.getElementById('quiesce').textContent === 'none'",
        60,
    )
    .await;
    // S8, by name: the service server quiesced from its row, through the
    // DB server; its own page counts down, and so does its row (from its
    // reports). Cancelled from the row the same way.
    const ROW: &str = "document.querySelector('#services tr[data-key=\"svc-a\"]')";
    b.run(
        &page,
        &format!("window.prompt = () => '120'; {ROW}.querySelector('.svc-quiesce').click(); true"),
    )
    .await;
    b.wait_for(
        &svc_page,
        "the service server's countdown, sent by name",
        "/^offline in 1[0-2][0-9] s$/.test(document.getElementById('quiesce').textContent)",
        60,
    )
    .await;
    b.wait_for(
        &page,
        "the service server's row counting down",
        &format!("/^offline in 1[0-2][0-9] s$/.test({ROW}.children[5].textContent)"),
        60,
    )
    .await;
    b.screenshot(&page, &shots.join("console-service-quiesce.png"))
        .await;
    b.run(
        &page,
        &format!("{ROW}.querySelector('.svc-cancel').click(); true"),
    )
    .await;
    b.wait_for(
        &svc_page,
        "the notice by name cancelled",
        "document.getElementById('quiesce').textContent === 'none'",
        60,
    )
    .await;
    b.wait_for(
        &page,
        "the service server's row without a notice",
        &format!("{ROW}.children[5].textContent === ''"),
        60,
    )
    .await;
    // Each page holds a connection for its feed, of the 6 a browser opens
    // to one host.
    for done in [page, late, svc_page] {
        b.close(done).await;
    }

    // A wrong token gets no action.
    let wrong = b.open(&format!("{}/console", db.url), 1280, 1000).await;
    b.wait_for(
        &wrong,
        // Its script too: a token submitted before it runs is a plain
        // form submission, which CSP blocks after it cancelled the
        // script's loading (the page then never came to life).
        "the page and its script",
        "document.getElementById('token-form') !== null && typeof checkToken === 'function'",
        60,
    )
    .await;
    // Tokens exist now: without one, the feed is refused and the page says
    // what to do.
    b.wait_for(
        &wrong,
        "the request for a token",
        "document.getElementById('status-line').textContent.startsWith('enter a token above')",
        60,
    )
    .await;
    b.run(
        &wrong,
        "document.getElementById('token').value = 'tm_wrong'; document.getElementById('token-form').requestSubmit(); true",
    )
    .await;
    b.wait_for(
        &wrong,
        "the token refused",
        "document.getElementById('token-state').textContent.startsWith('token refused')",
        60,
    )
    .await;
    b.wait_for(
        &wrong,
        "the feed refused",
        "document.getElementById('status-line').textContent === 'the token was refused; enter a token above'",
        60,
    )
    .await;
    assert_eq!(
        b.eval(
            &wrong,
            "document.querySelectorAll('.admin:not(.hidden)').length"
        )
        .await,
        serde_json::json!(0)
    );
    let (status, _) = {
        let r = reqwest::Client::new()
            .post(format!("{}/v1/quiesce", db.url))
            .bearer_auth("tm_wrong")
            .json(&serde_json::json!({"seconds": 60}))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), ())
    };
    assert_eq!(status, 401, "the server refuses the action too");
    b.close(wrong).await;
    // A reader token shows the data, and no action either.
    let wall = b.open(&format!("{}/console", db.url), 1280, 1000).await;
    b.wait_for(
        &wall,
        // Its script too: a token submitted before it runs is a plain
        // form submission, which CSP blocks after it cancelled the
        // script's loading (the page then never came to life).
        "the page and its script",
        "document.getElementById('token-form') !== null && typeof checkToken === 'function'",
        60,
    )
    .await;
    b.run(
        &wall,
        &format!("document.getElementById('token').value = '{reader}'; document.getElementById('token-form').requestSubmit(); true"),
    )
    .await;
    b.wait_for(
        &wall,
        "the state",
        "document.getElementById('state').textContent === 'recovered'",
        60,
    )
    .await;
    b.wait_for(
        &wall,
        "not an admin",
        "document.getElementById('token-state').textContent.startsWith('not an admin')",
        60,
    )
    .await;
    assert_eq!(
        b.eval(
            &wall,
            "document.querySelectorAll('.admin:not(.hidden)').length"
        )
        .await,
        serde_json::json!(0)
    );

    // A quiesce notice sent through the API: its message and countdown,
    // counted from the seconds the server said were left.
    post(
        "/v1/quiesce",
        serde_json::json!({"seconds": 90, "message": "back at 06:00"}),
    )
    .await;
    b.wait_for(
        &wall,
        "the quiesce message and countdown",
        "document.getElementById('quiesce-message').textContent === 'back at 06:00' && /^offline in (90|[5-8][0-9]) s$/.test(document.getElementById('quiesce').textContent)",
        60,
    )
    .await;
    // An empty token signs out: the session forgets it, the feed asks for one.
    b.run(
        &wall,
        "document.getElementById('token').value = ''; document.getElementById('token-form').requestSubmit(); true",
    )
    .await;
    b.wait_for(
        &wall,
        "signed out",
        "sessionStorage.getItem('tidemark-token') === null && document.getElementById('status-line').textContent.startsWith('enter a token above')",
        60,
    )
    .await;
}

/// PostgreSQL unreachable (as in a failover): the feed sends `error`, not
/// a blank state, and the page says why in its status line and keeps the
/// last state it had; once PostgreSQL is back, the page is live again.
/// Skipped where PostgreSQL is not installed (unless required).
#[tokio::test(flavor = "multi_thread")]
async fn a_state_that_cannot_be_read_keeps_the_last_one_on_the_page() {
    use tidemark_testkit::postgres::{bin_dir, required, PgCluster};
    let Some(bin) = bin_dir() else {
        assert!(!required(), "TIDEMARK_REQUIRE_POSTGRES=1 but no PostgreSQL");
        eprintln!("skipped: no PostgreSQL server binaries");
        return;
    };
    // A cluster of its own: this test stops it.
    let pg = PgCluster::start(&bin).expect("a PostgreSQL cluster");
    let url = pg.database("console").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let args = ["server", "--store", "postgres", "--database-url", &url];
    let db = Proc::start("db", tmp.path(), &args, &[]);
    db.wait_ok("/readyz").await;
    let browser = match crate::cdp::chromium() {
        Some(bin) => {
            let profile = tmp.path().join("chromium-profile");
            let mut b = crate::cdp::Browser::launch(bin, &profile).await;
            let page = b.open(&format!("{}/console", db.url), 1280, 1000).await;
            b.wait_for(&page, "the live state", "document.getElementById('status-line').textContent === 'live' && document.getElementById('state').textContent === 'normal'", 60).await;
            Some((b, page))
        }
        None => {
            eprintln!("no Chromium: the feed alone is checked");
            None
        }
    };
    let mut feed = reqwest::get(format!("{}/v1/console/events", db.url))
        .await
        .unwrap();
    pg.stop_immediate().expect("pg_ctl stop -m immediate");
    // Events until the first error, or an error sent as a state.
    let mut got = String::new();
    let read = async {
        loop {
            let chunk = feed.chunk().await.unwrap().expect("the feed open");
            got.push_str(&String::from_utf8_lossy(&chunk));
            if got.contains("event: state\ndata: {\"error\"") {
                return None;
            }
            let Some(at) = got.find("event: error\ndata: ") else {
                continue;
            };
            let rest = &got[at + "event: error\ndata: ".len()..];
            if let Some(end) = rest.find("\n\n") {
                return Some(serde_json::from_str::<serde_json::Value>(&rest[..end]).unwrap());
            }
        }
    };
    let error = tokio::time::timeout(std::time::Duration::from_secs(60), read)
        .await
        .expect("an error event within 60 s")
        .unwrap_or_else(|| panic!("an error sent as a state: {got}"));
    assert!(error["error"]["message"].is_string(), "{error}");
    if let Some((mut b, page)) = browser {
        b.wait_for(
            &page,
            "the server's error",
            "document.getElementById('status-line').textContent.startsWith('server: ')",
            60,
        )
        .await;
        assert_eq!(
            b.text(&page, "state").await,
            "normal",
            "the last state kept"
        );
        assert!(
            !b.text(&page, "primary")
                .await
                .starts_with("single instance"),
            "the cluster section kept"
        );
        pg.restart().expect("PostgreSQL restarted");
        b.wait_for(
            &page,
            "live again",
            "document.getElementById('status-line').textContent === 'live'",
            60,
        )
        .await;
    }
}

/// A feed that goes silent (a host that crashed, a laptop that slept: the
/// connection hangs without closing) is given up after 20 s without a
/// byte and opened again, not shown as live over frozen data. The browser
/// holds the feed's requests unanswered (DevTools' Fetch interception),
/// then lets them through.
#[tokio::test(flavor = "multi_thread")]
async fn a_silent_feed_is_given_up_and_opened_again() {
    let Some(chromium) = crate::cdp::chromium() else {
        eprintln!("skipped: no Chromium (apt-get install chromium)");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let db = db_server(tmp.path(), &[]).await;
    let mut b = crate::cdp::Browser::launch(chromium, &tmp.path().join("profile")).await;
    let page = b.open("about:blank", 1280, 1000).await;
    let hold = serde_json::json!({"patterns": [{"urlPattern": "*/v1/console/events*"}]});
    b.call(Some(&page), "Fetch.enable", hold).await;
    let url = format!("{}/console", db.url);
    b.call(
        Some(&page),
        "Page.navigate",
        serde_json::json!({ "url": url }),
    )
    .await;
    b.wait_for(
        &page,
        "the silent feed given up",
        "document.getElementById('status-line').textContent === 'reconnecting: no data for 20 s'",
        60,
    )
    .await;
    assert_eq!(b.text(&page, "state").await, "–", "no state ever came");
    b.call(Some(&page), "Fetch.disable", serde_json::json!({}))
        .await;
    b.wait_for(
        &page,
        "the feed opened again",
        "document.getElementById('status-line').textContent === 'live' && document.getElementById('state').textContent === 'normal'",
        60,
    )
    .await;
}
