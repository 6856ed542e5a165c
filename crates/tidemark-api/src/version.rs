//! The version every record carries.

use serde::{Deserialize, Serialize};
use std::fmt;

/// `{epoch, seq}`: `seq` is the DB server's commit sequence number, `epoch`
/// grows by one with every restore. Ordered by epoch first, then seq, so a
/// service server can compare copies across a restore.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default,
)]
pub struct Version {
    pub epoch: u64,
    pub seq: u64,
}

impl Version {
    pub const fn new(epoch: u64, seq: u64) -> Self {
        Self { epoch, seq }
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.epoch, self.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_orders_before_seq() {
        assert!(Version::new(2, 1) > Version::new(1, 1000));
        assert!(Version::new(1, 5) > Version::new(1, 4));
    }
}
