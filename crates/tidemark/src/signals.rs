//! SIGINT, SIGTERM and SIGHUP: a cancellation token for the roles (a
//! graceful stop), and the first of them for client commands, which stop
//! where they are (see `main`).

use tokio_util::sync::CancellationToken;

/// A token cancelled on the first SIGINT, SIGTERM or SIGHUP (a closed
/// terminal: its default would end the process without a word). A second
/// one ends the process at once, for an operator who will not wait out the
/// grace period of the requests in flight.
pub fn shutdown_token() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let (mut term, mut hup) = match (
                signal(SignalKind::terminate()),
                signal(SignalKind::hangup()),
            ) {
                (Ok(term), Ok(hup)) => (term, hup),
                (Err(e), _) | (_, Err(e)) => {
                    tracing::warn!(error = %e, "cannot watch SIGTERM or SIGHUP; only Ctrl-C stops the process cleanly");
                    let _ = tokio::signal::ctrl_c().await;
                    t.cancel();
                    return;
                }
            };
            let first = next(&mut term, &mut hup).await;
            tracing::info!("{first} received: shutting down (a second signal stops at once)");
            t.cancel();
            let second = next(&mut term, &mut hup).await;
            tracing::warn!(
                "{second} received again: stopping now, without waiting for the requests in flight"
            );
            std::process::exit(130);
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            t.cancel();
        }
    });
    token
}

/// The name of the next stopping signal to arrive.
#[cfg(unix)]
async fn next(
    term: &mut tokio::signal::unix::Signal,
    hup: &mut tokio::signal::unix::Signal,
) -> &'static str {
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = term.recv() => "SIGTERM",
        _ = hup.recv() => "SIGHUP",
    }
}

/// Waits for the first SIGINT, SIGTERM or SIGHUP and names it; never
/// returns where they cannot be watched.
pub async fn first_stop() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let (Ok(mut term), Ok(mut hup)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        ) {
            return next(&mut term, &mut hup).await;
        }
    }
    match tokio::signal::ctrl_c().await {
        Ok(()) => "SIGINT",
        Err(_) => std::future::pending().await,
    }
}

/// For a client command: on the first SIGINT, SIGTERM or SIGHUP, names it
/// to `stopped`, so the command's future is dropped at its next await
/// (what it holds is undone). A command still busy a second later (work
/// that does not yield: a restore decoding its data) is ended here, with
/// its one line, and left as a kill leaves it, for the next run to clear.
pub async fn stop_client(stopped: tokio::sync::oneshot::Sender<&'static str>) {
    let signal = first_stop().await;
    let _ = stopped.send(signal);
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    tidemark_telemetry::say(
        tidemark_telemetry::Said::Error,
        crate::cmd::Interrupted(signal),
    );
    std::process::exit(130);
}
