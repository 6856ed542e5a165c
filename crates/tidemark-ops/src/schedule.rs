//! Sending the recovery schedule list (P6) with chunks in flight together.
//!
//! Invariant: a final chunk is sent only once every chunk before it has
//! been answered. The DB server lifts its blanket (every record answered as
//! recovering) at the last source's final chunk, so no flag may still be in
//! flight then. Other chunks may arrive in any order: the server keeps the
//! higher `through_seq` of a key sent twice.

use futures::stream::{FuturesOrdered, StreamExt};
use std::future::Future;
use tidemark_api::state::{ScheduleAnswer, ScheduleChunk};
use tidemark_api::{ClientError, DbClient};

/// Chunks in flight at once: the server parses one while it writes the
/// previous, and the client encodes the next meanwhile.
pub const DEPTH: usize = 2;

/// Sends `chunks` to the DB server in order, up to [`DEPTH`] at a time,
/// calling `answered` with each chunk's entry count and answer, in order.
pub async fn send_schedule<I>(
    client: &DbClient,
    chunks: I,
    answered: impl FnMut(usize, &ScheduleAnswer),
) -> Result<(), ClientError>
where
    I: IntoIterator<Item = ScheduleChunk>,
{
    pipeline(chunks, |chunk| post_with_retry(client, chunk), answered).await
}

/// Sends one chunk, retrying while the DB server is unreachable, busy or
/// restarting (a chunk is idempotent: flags are upserted).
async fn post_with_retry(
    client: &DbClient,
    chunk: ScheduleChunk,
) -> Result<ScheduleAnswer, ClientError> {
    crate::submit::retrying(
        "schedule chunk not taken",
        std::time::Duration::from_secs(30),
        || client.post_json("/v1/recovery/schedule", &chunk),
    )
    .await
}

/// The sending order behind [`send_schedule`], for any `send`.
async fn pipeline<I, F, Fut, E>(
    chunks: I,
    send: F,
    mut answered: impl FnMut(usize, &ScheduleAnswer),
) -> Result<(), E>
where
    I: IntoIterator<Item = ScheduleChunk>,
    F: Fn(ScheduleChunk) -> Fut,
    Fut: Future<Output = Result<ScheduleAnswer, E>>,
{
    let send = |chunk: ScheduleChunk| {
        let n = chunk.entries.len();
        let answer = send(chunk);
        async move { answer.await.map(|a| (n, a)) }
    };
    let mut in_flight = FuturesOrdered::new();
    for chunk in chunks {
        let is_final = chunk.final_chunk;
        while in_flight.len() >= DEPTH || (is_final && !in_flight.is_empty()) {
            if let Some(done) = in_flight.next().await {
                let (n, a) = done?;
                answered(n, &a);
            }
        }
        if is_final {
            let (n, a) = send(chunk).await?;
            answered(n, &a);
        } else {
            in_flight.push_back(send(chunk));
        }
    }
    while let Some(done) = in_flight.next().await {
        let (n, a) = done?;
        answered(n, &a);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tidemark_api::state::ScheduleEntry;

    fn chunk(source: &str, n: usize, final_chunk: bool) -> ScheduleChunk {
        ScheduleChunk {
            source: source.into(),
            entries: (0..n)
                .map(|i| ScheduleEntry {
                    table: "subscriber".into(),
                    key: format!("k{i}"),
                    through_seq: 1,
                })
                .collect(),
            final_chunk,
            without_sources: Vec::new(),
            expect_sources: Vec::new(),
        }
    }

    /// Each send answers only after the test lets it (a yield per poll), so
    /// several are in flight whenever the pipeline allows it.
    #[tokio::test]
    async fn a_final_chunk_waits_for_every_earlier_answer() {
        let in_flight = Mutex::new(0usize);
        let log = Mutex::new(Vec::new());
        let chunks = vec![
            chunk("a", 1, false),
            chunk("a", 2, false),
            chunk("a", 3, false),
            chunk("a", 4, true),
            chunk("b", 5, false),
            chunk("b", 6, true),
        ];
        let mut answered = Vec::new();
        pipeline(
            chunks,
            |c: ScheduleChunk| {
                let (in_flight, log) = (&in_flight, &log);
                async move {
                    let now = {
                        let mut f = in_flight.lock().unwrap();
                        *f += 1;
                        *f
                    };
                    log.lock()
                        .unwrap()
                        .push((c.entries.len(), c.final_chunk, now));
                    for _ in 0..3 {
                        tokio::task::yield_now().await;
                    }
                    *in_flight.lock().unwrap() -= 1;
                    Ok::<_, std::convert::Infallible>(ScheduleAnswer {
                        flagged: c.entries.len() as u64,
                        skipped: 0,
                        final_chunk: c.final_chunk,
                    })
                }
            },
            |n, a| answered.push((n, a.flagged)),
        )
        .await
        .unwrap();
        let log = log.into_inner().unwrap();
        assert_eq!(log.len(), 6, "every chunk sent once: {log:?}");
        for (n, is_final, now) in &log {
            assert!(*now <= DEPTH, "chunk of {n}: {now} in flight");
            if *is_final {
                assert_eq!(*now, 1, "final chunk of {n} sent beside another");
            }
        }
        assert!(
            log.iter().any(|(_, _, now)| *now == DEPTH),
            "chunks never overlapped: {log:?}"
        );
        let expected: Vec<(usize, u64)> = (1..=6).map(|n| (n, n as u64)).collect();
        assert_eq!(answered, expected, "answers in sending order");
    }
}
