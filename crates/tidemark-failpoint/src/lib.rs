//! Crash points for fault-injection tests.
//!
//! With the `failpoints` feature, `TIDEMARK_FAILPOINTS=name=N[,name=N]`
//! makes the process abort (as a `kill -9` would stop it) the N-th time it
//! passes failpoint `name`; unset, a failpoint costs one environment lookup.
//! Without the feature (every build but the tests') [`hit`] is empty and
//! compiles to nothing.
//!
//! It is a crate of its own so that callers which have no other use for the
//! store (the OpS) need not link it.

/// Aborts the process if failpoint `name` is armed and its count is reached.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn hit(_name: &str) {}

/// Aborts the process if failpoint `name` is armed and its count is reached.
#[cfg(feature = "failpoints")]
pub fn hit(name: &str) {
    armed::hit(name)
}

#[cfg(feature = "failpoints")]
mod armed {
    use std::collections::HashMap;
    use std::sync::Mutex;

    /// Passes so far, per failpoint name.
    static PASSES: Mutex<Option<HashMap<String, u64>>> = Mutex::new(None);

    /// The pass at which `name` aborts, if `spec` arms it.
    fn armed_at(spec: &str, name: &str) -> Option<u64> {
        spec.split(',').find_map(|item| {
            let (n, count) = item.split_once('=')?;
            (n.trim() == name).then(|| count.trim().parse::<u64>().ok())?
        })
    }

    pub fn hit(name: &str) {
        let Ok(spec) = std::env::var("TIDEMARK_FAILPOINTS") else {
            return;
        };
        let Some(count) = armed_at(&spec, name) else {
            return;
        };
        let passes = {
            let mut map = PASSES.lock().unwrap_or_else(|e| e.into_inner());
            let c = map
                .get_or_insert_with(HashMap::new)
                .entry(name.to_owned())
                .or_insert(0);
            *c += 1;
            *c
        };
        if passes >= count {
            eprintln!("failpoint {name} hit ({passes}): aborting");
            std::process::abort();
        }
    }

    #[cfg(test)]
    mod tests {
        use super::armed_at;

        #[test]
        fn a_spec_arms_only_the_names_it_lists() {
            let spec = "a.b=3, c = 1,bad=x,d";
            assert_eq!(armed_at(spec, "a.b"), Some(3));
            assert_eq!(armed_at(spec, "c"), Some(1));
            assert_eq!(armed_at(spec, "bad"), None);
            assert_eq!(armed_at(spec, "d"), None);
            assert_eq!(armed_at(spec, "a"), None);
        }
    }
}
