//! A small Chrome DevTools Protocol client for the console's browser tests:
//! headless Chromium (Debian's `chromium`), pages opened and driven over one
//! websocket (flattened sessions), JavaScript evaluated, screenshots taken.

use base64::Engine as _;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Where Chromium is installed, if it is.
pub fn chromium() -> Option<&'static str> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| Path::new(p).exists())
}

pub struct Browser {
    child: Child,
    ws: Ws,
    next: u64,
}

/// One open page (a flattened session).
#[derive(Clone)]
/// A page: its DevTools session, and its target (to close it).
pub struct Page(String, String);

impl Browser {
    /// Starts headless Chromium with its profile in `profile`.
    pub async fn launch(bin: &str, profile: &Path) -> Browser {
        let mut child = Command::new(bin)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--remote-debugging-port=0",
                "--window-size=1280,1000",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start chromium");
        // It says where its DevTools endpoint listens on stderr.
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.split("DevTools listening on ").nth(1) {
                    let _ = tx.send(url.trim().to_owned());
                }
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("chromium printed its DevTools address");
        let (ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .expect("connect to chromium's DevTools");
        Browser { child, ws, next: 0 }
    }

    /// Sends one command (to `page`, or to the browser) and returns its result.
    pub async fn call(&mut self, page: Option<&Page>, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(p) = page {
            msg["sessionId"] = json!(p.0);
        }
        self.ws
            .send(Message::Text(msg.to_string()))
            .await
            .expect("send to chromium");
        loop {
            let m = tokio::time::timeout(Duration::from_secs(30), self.ws.next())
                .await
                .expect("chromium answers within 30 s")
                .expect("chromium's socket open")
                .expect("a message");
            let Message::Text(text) = m else { continue };
            let v: Value = serde_json::from_str(&text).expect("json from chromium");
            if v["id"] == json!(id) {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    /// Opens `url` in a new page of `width`×`height` pixels, in a window of
    /// its own, as a person looking at it would have it (not a tab behind
    /// another, whose timers the browser slows).
    pub async fn open(&mut self, url: &str, width: u32, height: u32) -> Page {
        let t = self
            .call(
                None,
                "Target.createTarget",
                json!({"url": "about:blank", "newWindow": true}),
            )
            .await;
        let s = self
            .call(
                None,
                "Target.attachToTarget",
                json!({"targetId": t["targetId"], "flatten": true}),
            )
            .await;
        let page = Page(
            s["sessionId"].as_str().unwrap().to_owned(),
            t["targetId"].as_str().unwrap().to_owned(),
        );
        self.call(
            Some(&page),
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false}),
        )
        .await;
        self.call(Some(&page), "Page.navigate", json!({"url": url}))
            .await;
        page
    }

    /// Closes `page`. A browser keeps at most 6 connections to one host,
    /// and every console page holds one for its live feed: a test that
    /// opens many pages closes those it is done with.
    pub async fn close(&mut self, page: Page) {
        self.call(None, "Target.closeTarget", json!({"targetId": page.1}))
            .await;
    }

    /// Evaluates `expr` in `page` (awaiting a promise); returns its value,
    /// or null if it threw (e.g. the page has not loaded yet).
    pub async fn eval(&mut self, page: &Page, expr: &str) -> Value {
        let r = self
            .call(
                Some(page),
                "Runtime.evaluate",
                json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        if r.get("exceptionDetails").is_some() {
            return Value::Null;
        }
        r["result"]["value"].clone()
    }

    /// Evaluates a statement that must run (the page is loaded): panics
    /// with the exception otherwise.
    pub async fn run(&mut self, page: &Page, stmt: &str) {
        let r = self
            .call(
                Some(page),
                "Runtime.evaluate",
                json!({"expression": stmt, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        assert!(r.get("exceptionDetails").is_none(), "{stmt}: {r}");
    }

    /// Waits until `expr` is true in `page`; panics after `secs` with the
    /// page's text.
    pub async fn wait_for(&mut self, page: &Page, what: &str, expr: &str, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if self.eval(page, &format!("!!({expr})")).await == json!(true) {
                return;
            }
            if Instant::now() > deadline {
                let text = self.eval(page, "document.body.innerText").await;
                panic!("the page never showed {what} within {secs} s; it shows:\n{text}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The text of element `id`.
    pub async fn text(&mut self, page: &Page, id: &str) -> String {
        self.eval(
            page,
            &format!("document.getElementById('{id}').textContent"),
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_owned()
    }

    /// Saves a PNG of `page` to `path`.
    pub async fn screenshot(&mut self, page: &Page, path: &Path) {
        let r = self
            .call(
                Some(page),
                "Page.captureScreenshot",
                json!({"format": "png"}),
            )
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().unwrap())
            .unwrap();
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
