//! Crash points for fault-injection tests.
//!
//! `TIDEMARK_FAILPOINTS=name=N[,name=N]` makes the process abort (as a
//! `kill -9` would stop it) the N-th time it passes failpoint `name`. Unset,
//! a failpoint costs one environment lookup per call and does nothing; only
//! tests set it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

fn counters() -> &'static Mutex<HashMap<String, AtomicU64>> {
    static C: OnceLock<Mutex<HashMap<String, AtomicU64>>> = OnceLock::new();
    C.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Aborts the process if failpoint `name` is armed and its count is reached.
pub fn hit(name: &str) {
    let Ok(spec) = std::env::var("TIDEMARK_FAILPOINTS") else {
        return;
    };
    for item in spec.split(',') {
        let Some((n, count)) = item.split_once('=') else {
            continue;
        };
        if n.trim() != name {
            continue;
        }
        let Ok(count) = count.trim().parse::<u64>() else {
            continue;
        };
        let map = counters().lock().unwrap_or_else(|e| e.into_inner());
        let c = map.get(name).map(|c| c.fetch_add(1, Ordering::SeqCst) + 1);
        drop(map);
        let c = match c {
            Some(c) => c,
            None => {
                counters()
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(name.to_owned(), AtomicU64::new(1));
                1
            }
        };
        if c >= count {
            eprintln!("failpoint {name} hit ({c}): aborting");
            std::process::abort();
        }
    }
}
