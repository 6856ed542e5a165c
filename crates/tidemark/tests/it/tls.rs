//! https (issue 13): a round trip over TLS, and a wrong CA refused.

use crate::harness::*;
use std::path::Path;

/// A self-signed certificate for 127.0.0.1 / localhost, as PEM files.
fn certificate(dir: &Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
        .expect("a certificate");
    let (c, k) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&c, cert.cert.pem()).unwrap();
    std::fs::write(&k, cert.key_pair.serialize_pem()).unwrap();
    (c, k)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_serves_https_and_clients_check_its_certificate() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (cert, key) = certificate(dir, "server");
    let (other, _) = certificate(dir, "other");
    let data = dir.join("data");
    let db = Proc::start(
        "db",
        dir,
        &[
            "server",
            "--data-dir",
            data.to_str().unwrap(),
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
        &[],
    );
    assert!(db.url.starts_with("https://"), "{}", db.url);
    let trusting = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(&cert).unwrap()).unwrap(),
        )
        .build()
        .unwrap();
    eventually(20, "https /readyz", || {
        let (c, u) = (trusting.clone(), format!("{}/readyz", db.url));
        async move {
            c.get(u)
                .send()
                .await
                .ok()
                .filter(|r| r.status().is_success())
                .map(|_| ())
        }
    })
    .await;
    // Plain http to the https port is told to use https, not closed silently.
    let plain = db.url.replacen("https://", "http://", 1);
    let (s, b) = get_json(&format!("{plain}/v1/state")).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (400, Some("bad_request")),
        "{b}"
    );
    assert!(
        b["error"]["message"].as_str().unwrap().contains("https"),
        "{b}"
    );
    // Round trip: an order in, a read back, through the CLI and a service server.
    let ca = cert.to_str().unwrap();
    let input = order_line("k1", serde_json::json!({"plan": "tls"}));
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
            "--ca-cert",
            ca,
            "-",
        ],
        Some(input.as_bytes()),
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let svc = Proc::start(
        "svc",
        dir,
        &[
            "service",
            "--db",
            &db.url,
            "--id",
            "svc",
            "--policy",
            "latest-only",
            "--ca-cert",
            ca,
        ],
        &[],
    );
    svc.wait_ok("/readyz").await;
    let (s, b) = get_json(&key_url(&svc.url, "k1")).await;
    assert_eq!((s, b["fields"]["plan"].as_str()), (200, Some("tls")));
    // A service server serving https itself (--tls-cert on `service`).
    let svc_tls = Proc::start(
        "svc-tls",
        dir,
        &[
            "service",
            "--db",
            &db.url,
            "--id",
            "svc-tls",
            "--policy",
            "latest-only",
            "--ca-cert",
            ca,
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
        &[],
    );
    assert!(svc_tls.url.starts_with("https://"), "{}", svc_tls.url);
    let body: serde_json::Value = eventually(20, "an https read from the service server", || {
        let (c, u) = (trusting.clone(), key_url(&svc_tls.url, "k1"));
        async move {
            let r = c.get(u).send().await.ok()?;
            r.status().is_success().then_some(())?;
            r.json().await.ok()
        }
    })
    .await;
    assert_eq!(body["fields"]["plan"], "tls");
    let plain = reqwest::Client::new()
        .get(key_url(&svc_tls.url, "k1"))
        .send()
        .await;
    assert!(plain.is_err(), "a client without the CA is refused");

    // No CA, or the wrong one: refused, and said so.
    for ca in [None, Some(other.to_str().unwrap())] {
        let mut args = vec!["status", "--server", db.url.as_str()];
        if let Some(c) = ca {
            args.extend(["--ca-cert", c]);
        }
        let out = run(dir, &args, None, &[]);
        assert_eq!(out.status.code(), Some(1), "{ca:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        // What to do: pass the right CA (it said "check that it runs").
        assert!(
            err.contains("not trusted") && err.contains("--ca-cert"),
            "{err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
    let out = run(
        dir,
        &["status", "--server", &db.url, "--ca-cert", ca],
        None,
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
