//! The boots a single DB server's store has run under, and the seq each
//! began at (a note, `boots`): a stream id of an earlier boot resumes only
//! up to where that boot's run ended in *this* store (P3, P11).
//!
//! A store brought back any other way than `tidemark restore` (a VM
//! snapshot, a copied file) keeps its history id, and may go on from a seq
//! below what a service server was sent: the changes it then commits reuse
//! seqs that service server has seen others under. Its list ends before
//! the boot that sent them, or names where that boot's run ended in it, so
//! such an id is refused and the service server revalidates instead of
//! skipping them.
//!
//! Invariant: a boot is recorded, durably, before it serves a stream, at
//! the seq the store held then, which is where the boot before it ended.

use tidemark_store::{Store, StoreError};

const NOTE: &str = "boots";
/// Boots kept: an id of an older one is refused (its service server
/// revalidates), as before restarts could be resumed at all.
const KEEP: usize = 64;

/// Oldest first: each boot, and the seq the store held when it began.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Boots(Vec<(String, u64)>);

impl Boots {
    /// The list in a note; what does not parse is left out (an id of a
    /// boot that is not listed only cannot resume).
    fn parse(text: &str) -> Boots {
        Boots(
            text.split_whitespace()
                .filter_map(|entry| {
                    let (boot, seq) = entry.split_once(':')?;
                    Some((boot.to_owned(), seq.parse().ok()?))
                })
                .collect(),
        )
    }

    fn text(&self) -> String {
        self.0
            .iter()
            .map(|(boot, seq)| format!("{boot}:{seq}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Where the run of `boot`, an earlier boot of this store, ended: the
    /// seq the next boot began at. `None`: not an earlier boot listed here
    /// (the current one has not ended).
    pub fn ended_at(&self, boot: &str) -> Option<u64> {
        let i = self.0.iter().rposition(|(b, _)| b == boot)?;
        self.0.get(i + 1).map(|(_, seq)| *seq)
    }

    /// Whether `boot` is listed (the current one included).
    pub fn listed(&self, boot: &str) -> bool {
        self.0.iter().any(|(b, _)| b == boot)
    }

    /// Whether every boot this store ran is listed: none was dropped for
    /// [`KEEP`], so a boot of its history that is not listed ran on a copy
    /// this store is not (it went back).
    pub fn complete(&self) -> bool {
        self.0.len() < KEEP
    }

    fn push(&mut self, boot: &str, seq: u64) {
        self.0.push((boot.to_owned(), seq));
        let over = self.0.len().saturating_sub(KEEP);
        self.0.drain(..over);
    }
}

/// Records that `boot` begins on `store`, which holds `seq`; returns the
/// list with it.
pub async fn record(store: &dyn Store, boot: &str, seq: u64) -> Result<Boots, StoreError> {
    let mut boots = store
        .note(NOTE)
        .await?
        .as_deref()
        .map(Boots::parse)
        .unwrap_or_default();
    boots.push(boot, seq);
    store.set_note(NOTE, Some(boots.text())).await?;
    Ok(boots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_earlier_boot_ended_where_the_next_began() {
        let mut b = Boots::default();
        b.push("a", 0);
        b.push("b", 40);
        b.push("c", 90);
        assert_eq!(b.ended_at("a"), Some(40));
        assert_eq!(b.ended_at("b"), Some(90));
        assert_eq!(b.ended_at("c"), None, "running");
        assert_eq!(b.ended_at("z"), None, "not this store's");
        assert_eq!(Boots::parse(&b.text()), b);
    }

    /// A store put back to a moment in boot "b"'s run, then started again:
    /// "b" ends where the copy did, below what "b" sent before.
    #[test]
    fn a_store_put_back_ends_its_boot_where_the_copy_ends() {
        let mut copy = Boots::default();
        copy.push("a", 0);
        copy.push("b", 40);
        // The copy was taken at seq 60; "b" went on to 90 elsewhere.
        copy.push("d", 60);
        assert_eq!(copy.ended_at("b"), Some(60));
        assert_eq!(copy.ended_at("c"), None, "a boot after the copy");
    }

    #[test]
    fn only_the_last_boots_are_kept_and_bad_entries_are_left_out() {
        let mut b = Boots::default();
        for i in 0..KEEP + 5 {
            b.push(&format!("b{i}"), i as u64);
        }
        assert_eq!(b.0.len(), KEEP);
        assert_eq!(b.ended_at("b0"), None);
        assert_eq!(b.ended_at("b5"), Some(6));
        assert_eq!(Boots::parse("x:1 junk y:z w:3").0.len(), 2);
    }
}
