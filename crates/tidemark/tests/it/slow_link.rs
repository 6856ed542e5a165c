//! P5, P11 (`latest-only`): a link that delivers the DB server's answers
//! and pushes late, steadily, from its first byte on. The service server
//! times round trips to the DB server (its `/healthz` reads its clock), so
//! its leases are seen as late for as long as the delay lasts, and the
//! cache is not served as current: reads ask the DB server and answer the
//! latest data. Before, the least delay of a minute was taken for the
//! clocks' offset, the leases looked timely, and reads were answered from
//! the cache while the change that replaced it was still on its way (an
//! outside partition audit: 26 % of answers a version or more old).

use crate::harness::*;
use serde_json::json;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A TCP relay that holds what the server sends for `delay` ms before
/// passing it on, in order; what the client sends goes through at once.
struct DelayProxy {
    url: String,
    delay_ms: Arc<AtomicU64>,
    accept: tokio::task::JoinHandle<()>,
}

impl DelayProxy {
    async fn start(upstream: &str) -> DelayProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let delay_ms = Arc::new(AtomicU64::new(0));
        let delay = delay_ms.clone();
        let upstream = upstream.to_owned();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if let Ok(server) = TcpStream::connect(&upstream).await {
                    tokio::spawn(relay(client, server, delay.clone()));
                }
            }
        });
        DelayProxy {
            url,
            delay_ms,
            accept,
        }
    }

    /// From now on, what the server sends waits `ms` (what is on its way
    /// keeps its place).
    fn delay(&self, ms: u64) {
        self.delay_ms.store(ms, Ordering::SeqCst);
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn relay(client: TcpStream, server: TcpStream, delay: Arc<AtomicU64>) {
    let _ = (client.set_nodelay(true), server.set_nodelay(true));
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_server, mut to_server) = server.into_split();
    let up = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut from_client, &mut to_server).await;
        let _ = to_server.shutdown().await;
    });
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let down = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = from_server.read(&mut buf).await {
            if n == 0 {
                break;
            }
            let due =
                tokio::time::Instant::now() + Duration::from_millis(delay.load(Ordering::SeqCst));
            if tx.send((due, buf[..n].to_vec())).is_err() {
                break;
            }
        }
    });
    while let Some((due, bytes)) = rx.recv().await {
        tokio::time::sleep_until(due).await;
        if to_client.write_all(&bytes).await.is_err() {
            break;
        }
    }
    let _ = to_client.shutdown().await;
    up.abort();
    down.abort();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_link_that_stays_slow_is_not_vouched_for() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let db = db_server(dir, &[]).await;
    let proxy = DelayProxy::start(db.url.trim_start_matches("http://")).await;
    proxy.delay(300);
    // A latest-only service server behind the relay.
    let behind = |id: &str, env: &[(&str, &str)]| {
        let args = [
            "service",
            "--db",
            &proxy.url,
            "--id",
            id,
            "--policy",
            "latest-only",
        ];
        Proc::start(id, dir, &args, env)
    };
    let svc = behind("svc-slow", &[]);
    svc.wait_ok("/healthz").await;
    // Synced, and its leases judged late by a round trip: the lease clock
    // alone takes a delay there from the start for the clocks' offset.
    eventually(20, "the stream synced, its leases seen late", || async {
        let connected = metric(&svc.url, "tidemark_service_watch_connected").await;
        let late = metric(&svc.url, "tidemark_service_lease_late_ms").await;
        (connected == 1 && late >= 250).then_some(())
    })
    .await;
    let (status, ready) = get_json(&format!("{}/readyz", svc.url)).await;
    assert_eq!(status, 503, "{ready}");
    assert!(
        ready["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("arrive late"),
        "{ready}"
    );

    let orders = format!("{}/v1/orders", db.url);
    let record = key_url(&svc.url, "slow");
    // Each read registers the service server's interest in the key, so
    // the change after it is pushed (the first read finds no record).
    let pushed_before = metric(&svc.url, "tidemark_service_pushes_total").await;
    assert_eq!(get_json(&record).await.0, 404);
    for seq in 1..=3u64 {
        let plan = format!("plan-{seq}");
        let body = json!({"orders": [{"source": "ops-slow", "seq": seq, "table": "subscriber",
                                      "key": "slow", "op": "upsert", "fields": {"plan": plan}}]});
        let (status, acked) = post_raw(&orders, body.to_string()).await;
        assert_eq!(status, 200, "{acked}");
        let version = acked["results"][0]["version"].clone();
        // Right after the acknowledgement: its push is still on its way.
        let (status, answer) = get_json(&record).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["fields"]["plan"], plan.as_str(), "{answer}");
        assert_eq!(answer["version"], version, "{answer}");
        assert_ne!(answer["source"], "cache", "{answer}");
        // The push arrives before the next round.
        eventually(10, "the push applied", || async {
            let pushed = metric(&svc.url, "tidemark_service_pushes_total").await;
            (pushed >= pushed_before + seq).then_some(())
        })
        .await;
    }

    // A service server told the link may lag this much (a DB server far
    // away) serves its cache behind the same link.
    let far = behind("svc-far", &[("TIDEMARK_SERVICE__MAX_PUSH_LAG_MS", "1000")]);
    far.wait_ok("/readyz").await;
    let far_record = key_url(&far.url, "slow");
    eventually(
        10,
        "the far service server answering from its cache",
        || async {
            let (s, b) = get_json(&far_record).await;
            (s == 200 && b["source"] == "cache" && b["fields"]["plan"] == "plan-3").then_some(())
        },
    )
    .await;
    assert!(metric(&far.url, "tidemark_service_lease_late_ms").await >= 250);

    // The link is fast again: leases are timely by the same round trips,
    // and the cache answers as current.
    proxy.delay(0);
    svc.wait_ok("/readyz").await;
    eventually(10, "the latest record served from the cache", || async {
        let (s, b) = get_json(&record).await;
        (s == 200 && b["source"] == "cache" && b["fields"]["plan"] == "plan-3").then_some(())
    })
    .await;
}
