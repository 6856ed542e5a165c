//! The one load loop every target shares: N connections, each doing one
//! operation after another on keys from the same distribution, for a fixed
//! time, into one latency histogram. Only the operation differs by target.

use super::super::stats;
use hdrhistogram::Histogram;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

/// Which keys an operation touches.
#[derive(Debug, Clone, Copy)]
pub enum Keys {
    Uniform(u64),
    Zipf(u64),
}

impl Keys {
    pub fn draw(&self, rng: &mut SmallRng) -> u64 {
        match *self {
            Keys::Uniform(n) => rng.gen_range(0..n.max(1)),
            Keys::Zipf(n) => Zipf::new(n.max(1), 1.0)
                .map(|z| z.sample(rng) as u64 - 1)
                .unwrap_or(0),
        }
    }
}

/// One connection's operation on key `i`: returns how many items it did
/// (1, or the batch size).
pub trait Op: Send {
    fn run(
        &mut self,
        i: u64,
        rng: &mut SmallRng,
    ) -> Pin<Box<dyn Future<Output = anyhow::Result<u64>> + Send + '_>>;
}

/// What a run measured.
pub struct Measured {
    pub items: u64,
    pub ops: u64,
    pub seconds: f64,
    pub hist: Histogram<u64>,
}

impl Measured {
    pub fn empty() -> Self {
        Measured {
            items: 0,
            ops: 0,
            seconds: 0.0,
            hist: stats::histogram(),
        }
    }

    pub fn add(&mut self, other: Measured) {
        self.items += other.items;
        self.ops += other.ops;
        self.seconds += other.seconds;
        let _ = self.hist.add(other.hist);
    }

    pub fn per_sec(&self) -> f64 {
        self.items as f64 / self.seconds.max(1e-9)
    }
}

/// Runs `ops` (one per connection) for `secs` after a short warm-up.
pub async fn drive(ops: Vec<Box<dyn Op>>, keys: Keys, secs: f64) -> anyhow::Result<Measured> {
    let warmup = Duration::from_millis(300);
    let start = Instant::now() + warmup;
    let end = start + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for (c, mut op) in ops.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let mut rng = SmallRng::seed_from_u64(c as u64 * 7919 + 1);
            let mut m = Measured::empty();
            loop {
                let i = keys.draw(&mut rng);
                let t0 = Instant::now();
                let n = op.run(i, &mut rng).await?;
                let now = Instant::now();
                if now >= end {
                    break;
                }
                if now >= start {
                    stats::record(&mut m.hist, now - t0);
                    m.items += n;
                    m.ops += 1;
                }
            }
            anyhow::Ok(m)
        }));
    }
    let mut total = Measured::empty();
    for t in tasks {
        let m = t.await??;
        total.items += m.items;
        total.ops += m.ops;
        let _ = total.hist.add(m.hist);
    }
    total.seconds = secs;
    Ok(total)
}
