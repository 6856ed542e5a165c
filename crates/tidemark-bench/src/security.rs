//! Read throughput with authentication and TLS on, against off (issue 13).
//!
//! Three DB servers hold the same records: one in protected mode (no
//! token), one with a reader token, one with a reader token over https.
//! Each is pinned like `bench compare` (servers on one core, this load
//! generator on the others), read-cache warm, and read in interleaved
//! rounds over raw keep-alive connections; the ratios are per round.

use super::compare::driver::{drive, Keys, Op};
use super::compare::{median, peers, Placement};
use super::wire::{self, Wire};
use super::{key_of, stats};
use anyhow::Context;
use clap::Args;
use rand::rngs::SmallRng;
use serde_json::json;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;
use tidemark_testkit::{affinity, Program};

#[derive(Debug, Args, Clone)]
pub struct SecurityArgs {
    /// Records loaded into every server.
    #[arg(long, default_value_t = 100_000)]
    pub records: u64,
    /// Connections per server.
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    /// Seconds per server, split over the rounds.
    #[arg(long, default_value_t = 9.0)]
    pub duration: f64,
    /// Rounds that interleave the servers.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Let servers and load generator share every core.
    #[arg(long)]
    pub no_pin: bool,
    /// Write the results as JSON here.
    #[arg(long)]
    pub json_out: Option<PathBuf>,
}

/// How a target is reached.
#[derive(Clone)]
struct Target {
    name: &'static str,
    url: String,
    token: Option<String>,
    tls: Option<tokio_rustls::TlsConnector>,
}

/// `GET /v1/records/subscriber/{key}`, with the target's token and TLS.
struct Get {
    wire: Wire,
    host: String,
    token: Option<String>,
}

impl Get {
    async fn open(t: &Target) -> anyhow::Result<Self> {
        let host = t
            .url
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .to_owned();
        let wire = match &t.tls {
            Some(tls) => Wire::connect_tls(&host, tls).await?,
            None => Wire::connect(&host).await?,
        };
        Ok(Self {
            wire,
            host,
            token: t.token.clone(),
        })
    }
}

impl Op for Get {
    fn run(
        &mut self,
        i: u64,
        _: &mut SmallRng,
    ) -> Pin<Box<dyn Future<Output = anyhow::Result<u64>> + Send + '_>> {
        Box::pin(async move {
            let path = format!(
                "/v1/records/subscriber/{}",
                tidemark_api::client::encode_path(&key_of(i))
            );
            let req = match &self.token {
                Some(t) => wire::http_get_with_token(&self.host, &path, t),
                None => wire::http_get(&self.host, &path),
            };
            let s = self.wire.http(&req).await?;
            anyhow::ensure!(s == 200, "GET {path}: status {s}");
            Ok(1)
        })
    }
}

/// A self-signed certificate for 127.0.0.1, and a connector trusting it.
fn certificate(
    dir: &std::path::Path,
) -> anyhow::Result<(PathBuf, PathBuf, tokio_rustls::TlsConnector)> {
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()])?;
    let (c, k) = (dir.join("bench.pem"), dir.join("bench.key"));
    std::fs::write(&c, cert.cert.pem())?;
    std::fs::write(&k, cert.key_pair.serialize_pem())?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone())?;
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok((c, k, tokio_rustls::TlsConnector::from(Arc::new(config))))
}

/// A reader token created on `url` (in protected mode, from loopback).
async fn reader_token(url: &str) -> anyhow::Result<String> {
    let client = tidemark_api::client::tls_builder().build()?;
    let r = client
        .post(format!("{url}/v1/tokens"))
        .json(&json!({"name": "bench-reader", "role": "reader"}))
        .send()
        .await?;
    anyhow::ensure!(
        r.status().is_success(),
        "creating a token on {url}: {}",
        r.status()
    );
    let created: tidemark_api::auth::TokenCreated = r.json().await?;
    Ok(created.token)
}

/// Reads every key once, so the measured reads are warm.
async fn warm(t: &Target, n: u64, connections: usize) -> anyhow::Result<()> {
    let mut tasks = Vec::new();
    for c in 0..connections as u64 {
        let (t, step) = (t.clone(), connections as u64);
        tasks.push(tokio::spawn(async move {
            let mut op = Get::open(&t).await?;
            let mut rng = rand::SeedableRng::seed_from_u64(c);
            let mut i = c;
            while i < n {
                op.run(i, &mut rng).await?;
                i += step;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

pub async fn run(args: SecurityArgs) -> anyhow::Result<()> {
    let place = Placement::new(false, args.no_pin)?;
    if place.server.is_some() {
        affinity::pin_self(&place.load).context("pinning the load generator")?;
    }
    eprintln!("{}", place.describe());
    let tmp = tempfile::Builder::new()
        .prefix("tidemark-bench-security-")
        .tempdir()?;
    let dir = tmp.path();
    let (cert, key, connector) = certificate(dir)?;
    // The loader and the probes trust the https server's certificate.
    std::env::set_var("TIDEMARK_CA_CERT", &cert);
    let tidemark = Program::current_exe()?.pinned(place.server.clone());
    let mut procs = Vec::new();
    let mut targets = Vec::new();
    for (name, tls) in [("plain", false), ("auth", false), ("auth+tls", true)] {
        let data = dir.join(format!("data-{}", targets.len()));
        let mut a = vec!["server", "--data-dir", data.to_str().unwrap_or("")];
        if tls {
            a.extend([
                "--tls-cert",
                cert.to_str().unwrap_or(""),
                "--tls-key",
                key.to_str().unwrap_or(""),
            ]);
        }
        let p = tidemark.start(name, dir, &a, &[], "127.0.0.1:0")?;
        p.wait_ok("/readyz").await?;
        eprintln!("loading {} records into {name} ({})", args.records, p.url);
        super::load::run(super::load::LoadArgs {
            db: p.url.clone(),
            records: args.records,
            batch: 1000,
            writers: 2,
            source: "bench-security".into(),
            common: super::Common { json: false },
        })
        .await?;
        let mut t = Target {
            name,
            url: p.url.clone(),
            token: None,
            tls: tls.then(|| connector.clone()),
        };
        warm(&t, args.records, args.connections).await?;
        if name != "plain" {
            t.token = Some(reader_token(&p.url).await?);
            // With a token created, a request without one is refused.
            let mut bare = Get::open(&Target {
                token: None,
                ..t.clone()
            })
            .await?;
            let refused = bare.run(0, &mut rand::SeedableRng::seed_from_u64(0)).await;
            anyhow::ensure!(refused.is_err(), "{name} served a read without a token");
        }
        targets.push(t);
        procs.push(p);
    }

    let per_round = args.duration / args.rounds.max(1) as f64;
    let n = targets.len();
    // Per target: per-round rate, and one histogram over every round.
    let mut rates = vec![Vec::new(); n];
    let mut cpu = vec![Vec::new(); n];
    let mut hists: Vec<_> = (0..n).map(|_| stats::histogram()).collect();
    for round in 0..args.rounds.max(1) {
        for k in 0..n {
            let i = (k + round) % n;
            let mut ops: Vec<Box<dyn Op>> = Vec::with_capacity(args.connections);
            for _ in 0..args.connections {
                ops.push(Box::new(Get::open(&targets[i]).await?));
            }
            let (cpu0, t0) = (peers::tree_cpu(procs[i].pid), Instant::now());
            let m = drive(ops, Keys::Uniform(args.records), per_round).await?;
            let busy = (peers::tree_cpu(procs[i].pid) - cpu0) / t0.elapsed().as_secs_f64();
            eprintln!(
                "round {}: {}: {:.0} reads/s, server CPU {:.0} %",
                round + 1,
                targets[i].name,
                m.per_sec(),
                busy * 100.0
            );
            rates[i].push(m.per_sec());
            cpu[i].push(busy);
            let _ = hists[i].add(&m.hist);
        }
    }

    println!(
        "read throughput with auth and TLS, {} records, {} connections, {} rounds of {:.1} s ({})",
        args.records,
        args.connections,
        args.rounds,
        per_round,
        place.describe()
    );
    println!(
        "{:<10} {:>12} {:>20} {:>22} {:>9} {:>9}",
        "target", "reads/s", "min–max", "vs plain (min–max)", "p50 ms", "p99 ms"
    );
    let mut out = Vec::new();
    for i in 0..n {
        let ratios: Vec<f64> = (0..rates[i].len())
            .map(|r| rates[i][r] / rates[0][r].max(1e-9))
            .collect();
        let (lo, hi) = min_max(&rates[i]);
        let (rlo, rhi) = min_max(&ratios);
        let p = stats::percentiles(&hists[i]);
        println!(
            "{:<10} {:>12.0} {:>9.0}–{:<10.0} {:>8.2}× ({:.2}–{:.2}) {:>9.3} {:>9.3}",
            targets[i].name,
            median(rates[i].clone()),
            lo,
            hi,
            median(ratios.clone()),
            rlo,
            rhi,
            p["p50_ms"].as_f64().unwrap_or(0.0),
            p["p99_ms"].as_f64().unwrap_or(0.0),
        );
        out.push(json!({
            "target": targets[i].name, "reads_per_sec": rates[i], "median": median(rates[i].clone()),
            "vs_plain": ratios, "vs_plain_median": median(ratios.clone()),
            "server_cpu": cpu[i], "latency": p,
        }));
    }
    if let Some(path) = &args.json_out {
        std::fs::write(path, serde_json::to_vec_pretty(&json!({"results": out}))?)?;
    }
    drop(procs);
    Ok(())
}

fn min_max(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(*x), hi.max(*x)))
}
