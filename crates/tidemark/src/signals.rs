//! SIGINT, SIGTERM and SIGHUP: a cancellation token for the roles (a
//! graceful stop), and the first of them for client commands, which stop
//! where they are (see `main`).
//!
//! SIGHUP is watched only where it is not ignored: a process started with
//! `nohup` is meant to outlive its terminal, and still does.
//!
//! A process started with `TIDEMARK_PARENT_PID` (the demo, the benches and
//! the tests set it for the servers they start) also stops, the same way,
//! once that process is no longer its parent: a starter killed with
//! SIGKILL, which cannot stop its children itself, leaves none running.

use std::sync::atomic::{AtomicBool, Ordering};
use tokio_util::sync::CancellationToken;

/// A token cancelled on the first SIGINT, SIGTERM or SIGHUP (a closed
/// terminal: its default would end the process without a word). A second
/// SIGINT or SIGTERM ends the process at once, for an operator who will
/// not wait out the grace period of the requests in flight (a second
/// SIGHUP does not: a closing terminal sends two).
pub fn shutdown_token() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let mut stops = match Stops::watch() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM or SIGHUP; only Ctrl-C stops the process cleanly");
                let _ = tokio::signal::ctrl_c().await;
                t.cancel();
                return;
            }
        };
        let first = stops.next().await;
        if first == PARENT_GONE {
            tracing::warn!(
                "the process that started this one (TIDEMARK_PARENT_PID) has exited: shutting down"
            );
        } else {
            tracing::info!(
                "{first} received: shutting down (a second SIGINT or SIGTERM stops at once)"
            );
        }
        t.cancel();
        loop {
            let again = stops.next().await;
            // A starter that exits after its SIGTERM (the demo does) must
            // not cut the graceful stop short.
            if again != "SIGHUP" && again != PARENT_GONE {
                tracing::warn!(
                    "{again} received again: stopping now, without waiting for the requests in flight"
                );
                std::process::exit(130);
            }
        }
    });
    token
}

/// Waits for the first SIGINT, SIGTERM or SIGHUP and names it; never
/// returns where they cannot be watched.
pub async fn first_stop() -> &'static str {
    match Stops::watch() {
        Ok(mut stops) => stops.next().await,
        Err(_) => match tokio::signal::ctrl_c().await {
            Ok(()) => "SIGINT",
            Err(_) => std::future::pending().await,
        },
    }
}

/// Set once a client command's outcome is known (see [`stop_client`]).
static FINISHED: AtomicBool = AtomicBool::new(false);

/// A client command has finished (or stopped): a signal from now on does
/// not end the process as interrupted.
pub fn client_finished() {
    FINISHED.store(true, Ordering::SeqCst);
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
    if FINISHED.load(Ordering::SeqCst) {
        return;
    }
    tidemark_telemetry::say(
        tidemark_telemetry::Said::Error,
        crate::cmd::Interrupted(signal),
    );
    std::process::exit(130);
}

/// What [`Stops::next`] names when the starting process has gone.
const PARENT_GONE: &str = "the exit of the process that started it";

/// How often the parent is looked at (`getppid`, no syscall beyond it).
const PARENT_CHECK: std::time::Duration = std::time::Duration::from_millis(250);

/// The starter's pid from `TIDEMARK_PARENT_PID`, if given and valid. One
/// that runs but is not this process's parent (a wrapper between them:
/// `timeout`, a shell without `exec`) is not watched, and said: watched,
/// it would look gone at once.
fn starter() -> Option<u32> {
    let pid: u32 = std::env::var("TIDEMARK_PARENT_PID")
        .ok()?
        .trim()
        .parse()
        .ok()
        .filter(|&p| p > 1)?;
    // SAFETY: getppid has no preconditions and cannot fail.
    let parent = unsafe { libc::getppid() } as u32;
    if parent != pid && tidemark_testkit::process::running(pid) {
        tracing::warn!(
            starter = pid,
            parent,
            "TIDEMARK_PARENT_PID names a running process that is not this one's parent; not watched: start this process from it directly (exec)"
        );
        return None;
    }
    Some(pid)
}

/// Returns once `starter` is no longer this process's parent (it exited,
/// and this one was handed to init or a subreaper). Checked from the
/// start: a starter gone before the watch began counts too.
async fn parent_gone(starter: u32) {
    loop {
        // SAFETY: getppid has no preconditions and cannot fail.
        if unsafe { libc::getppid() } as u32 != starter {
            return;
        }
        tokio::time::sleep(PARENT_CHECK).await;
    }
}

/// The stopping signals, watched.
struct Stops {
    /// `TIDEMARK_PARENT_PID`: stop once it is not the parent any more.
    starter: Option<u32>,
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    /// `None` where SIGHUP is ignored (`nohup`).
    #[cfg(unix)]
    hup: Option<tokio::signal::unix::Signal>,
}

impl Stops {
    fn watch() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            // Asked before anything is installed: installing replaces it.
            let hup = if hangup_ignored() {
                None
            } else {
                Some(signal(SignalKind::hangup())?)
            };
            Ok(Self {
                starter: starter(),
                term: signal(SignalKind::terminate())?,
                hup,
            })
        }
        #[cfg(not(unix))]
        Ok(Self { starter: None })
    }

    /// The name of the next stopping signal to arrive.
    async fn next(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            let hup = async {
                match self.hup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            };
            let starter = self.starter;
            let parent = async {
                match starter {
                    Some(p) => parent_gone(p).await,
                    None => std::future::pending().await,
                }
            };
            let stop = tokio::select! {
                _ = tokio::signal::ctrl_c() => "SIGINT",
                _ = self.term.recv() => "SIGTERM",
                _ = hup => "SIGHUP",
                _ = parent => PARENT_GONE,
            };
            if stop == PARENT_GONE {
                // Said once: the parent stays gone.
                self.starter = None;
            }
            stop
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "SIGINT"
        }
    }
}

/// Whether SIGHUP is ignored (the process was started with `nohup`).
#[cfg(unix)]
fn hangup_ignored() -> bool {
    // SAFETY: reads the current disposition into a struct we own; a null
    // new action changes nothing.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(libc::SIGHUP, std::ptr::null(), &mut old) == 0
            && old.sa_sigaction == libc::SIG_IGN
    }
}
