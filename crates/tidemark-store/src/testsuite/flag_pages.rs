//! Pages of flags (the console's search and paging): every flag once, in
//! order, across pages and tables; a prefix within a table.

use crate::{FlagEntry, FlagPage, Store};
use tidemark_api::RecoveryState;

pub(super) async fn pages(store: &dyn Store) {
    let epoch = store.meta().await.unwrap().epoch;
    store.mark_restored(epoch + 1).await.unwrap();
    let keys = ["a1", "a2", "ab", "b1", "b2", "ba", "c"];
    let entries: Vec<FlagEntry> = keys
        .iter()
        .map(|k| FlagEntry {
            table: "subscriber".into(),
            key: (*k).into(),
            through_seq: 3,
        })
        .collect();
    store
        .add_flags("ops-p", entries, false, vec![])
        .await
        .unwrap();
    let page = |table: Option<&str>,
                prefix: Option<&str>,
                after: Option<(String, String, String)>,
                limit| FlagPage {
        table: table.map(Into::into),
        prefix: prefix.map(Into::into),
        after,
        limit,
    };
    // Every flag once, in key order, three at a time.
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let got = store
            .flag_page(&page(None, None, after.clone(), 3))
            .await
            .unwrap();
        assert!(got.len() <= 3);
        if got.is_empty() {
            break;
        }
        let last = got.last().unwrap();
        after = Some((last.table.clone(), last.key.clone(), last.source.clone()));
        seen.extend(got.into_iter().map(|f| f.key));
    }
    assert_eq!(seen, keys, "every flag once, in order");
    // A prefix within a table, paged too.
    let first = store
        .flag_page(&page(Some("subscriber"), Some("b"), None, 2))
        .await
        .unwrap();
    let keys_of = |v: &[crate::Flag]| v.iter().map(|f| f.key.clone()).collect::<Vec<_>>();
    assert_eq!(keys_of(&first), ["b1", "b2"]);
    assert_eq!(first[0].source, "ops-p");
    assert_eq!(first[0].through_seq, 3);
    let l = first.last().unwrap();
    let rest = store
        .flag_page(&page(
            Some("subscriber"),
            Some("b"),
            Some((l.table.clone(), l.key.clone(), l.source.clone())),
            2,
        ))
        .await
        .unwrap();
    assert_eq!(keys_of(&rest), ["ba"]);
    assert!(store
        .flag_page(&page(Some("subscriber"), Some("zz"), None, 10))
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .flag_page(&page(Some("other"), None, None, 10))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(store.clear_flags().await.unwrap(), keys.len() as u64);
    store
        .set_recovery_state(RecoveryState::Normal, false)
        .await
        .unwrap();
}
