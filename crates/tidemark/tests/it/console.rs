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
    while !got.contains("\n\n") {
        let chunk = r.chunk().await.unwrap().expect("an event");
        got.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(got.starts_with("event: state\ndata: {"), "{got}");
    assert!(got.contains("\"state\":\"normal\""), "{got}");
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
