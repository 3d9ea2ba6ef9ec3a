//! Destroy: cookie-exact SOCK_DESTROY requests, batched and acknowledged, the
//! first socket alone (a probe), large sets over both netlink sockets.

use std::time::Instant;

use tracing::{debug, info, warn};

use super::session::Engine;
use crate::audit::AuditLog;
use crate::cancel::Cancel;
use crate::diag::{errno_text, Outcome, SockDiag, DESTROY_BATCH};
use crate::error::Error;
use crate::filter::TcpState;
use crate::socket::TcpSocket;

/// Destroy sets smaller than this are not worth a second thread.
const PARALLEL_DESTROY_MIN: usize = 2 * DESTROY_BATCH;

/// What one destroy pass did.
#[derive(Debug, Default)]
pub struct DestroyPass {
    /// `(index into the sockets, outcome)` for every socket a request was sent
    /// for; the others were not sent (a cancel request or an error came first).
    pub outcomes: Vec<(usize, Outcome)>,
    /// The error that stopped the pass, if any. Outcomes before it stand.
    pub error: Option<Error>,
}

impl Engine {
    /// Destroys `sockets` exactly as dumped, batch by batch, logging each
    /// outcome and appending the destroyed ones to `audit` after every batch.
    /// Stops before a batch when `cancel` is raised. EPERM, and EOPNOTSUPP on a
    /// socket that is not in TIME-WAIT, stop the pass with an error: they will
    /// not get better.
    ///
    /// The first socket goes alone, so missing permission or kernel support is
    /// learnt before anything else is touched; a large rest is split over both
    /// netlink sockets on two threads.
    pub fn destroy(&mut self, sockets: &[TcpSocket], cancel: Option<&Cancel>, audit: Option<&AuditLog>) -> DestroyPass {
        let t0 = Instant::now();
        let [d0, d1] = &mut self.diag;
        let (probe, rest) = sockets.split_at(sockets.len().min(1));
        let mut pass = destroy_batches(d0, probe, 0, cancel, audit);
        if pass.error.is_none() && pass.outcomes.len() == probe.len() {
            // A second thread only pays with a second CPU to run it (`taskset`, a cgroup's cpuset).
            let cpus = std::thread::available_parallelism().map_or(1, usize::from);
            let more = if rest.len() < PARALLEL_DESTROY_MIN || cpus < 2 {
                destroy_batches(d0, rest, 1, cancel, audit)
            } else {
                let (left, right) = rest.split_at(rest.len() / 2);
                let (mut a, b) = std::thread::scope(|scope| {
                    let other = scope.spawn(|| destroy_batches(d1, right, 1 + left.len(), cancel, audit));
                    let a = destroy_batches(d0, left, 1, cancel, audit);
                    (a, other.join())
                });
                match b {
                    Ok(b) => {
                        a.outcomes.extend(b.outcomes);
                        a.error = a.error.or(b.error);
                    }
                    Err(_) => a.error = a.error.or(Some(Error::Internal("a destroy thread panicked".into()))),
                }
                a
            };
            pass.outcomes.extend(more.outcomes);
            pass.error = more.error;
        }
        debug!(count = pass.outcomes.len(), elapsed_us = t0.elapsed().as_micros() as u64, "destroy pass done");
        pass
    }
}

/// Destroys `sockets` (numbered from `first` in the caller's list) on one
/// netlink socket, `DESTROY_BATCH` per sendmsg.
fn destroy_batches(
    diag: &mut SockDiag,
    sockets: &[TcpSocket],
    first: usize,
    cancel: Option<&Cancel>,
    audit: Option<&AuditLog>,
) -> DestroyPass {
    let mut pass = DestroyPass { outcomes: Vec::with_capacity(sockets.len()), error: None };
    for (b, batch) in sockets.chunks(DESTROY_BATCH).enumerate() {
        if cancel.is_some_and(Cancel::is_cancelled) {
            warn!(left = sockets.len() - pass.outcomes.len(), "interrupted: stopping before the next batch");
            break;
        }
        let refs: Vec<&TcpSocket> = batch.iter().collect();
        let results = match diag.destroy(&refs) {
            Ok(r) => r,
            Err(e) => {
                pass.error = Some(e);
                break;
            }
        };
        let mut fatal = None;
        for (sock, outcome) in batch.iter().zip(&results) {
            match outcome {
                Outcome::Failed(libc::EPERM) => {
                    fatal.get_or_insert(Error::NoPermission);
                }
                Outcome::Failed(libc::EOPNOTSUPP) if sock.state != Some(TcpState::TimeWait) => {
                    fatal.get_or_insert(Error::DestroyUnsupported);
                }
                _ => {}
            }
            log_outcome(sock, *outcome);
        }
        // The batch's destroys happened: record them before anything can stop us.
        if let Some(a) = audit {
            if let Err(e) = a.record(batch.iter().zip(results.iter().copied())) {
                fatal.get_or_insert(e);
            }
        }
        let base = first + b * DESTROY_BATCH;
        pass.outcomes.extend(results.into_iter().enumerate().map(|(i, o)| (base + i, o)));
        if let Some(e) = fatal {
            pass.error = Some(e);
            break;
        }
    }
    pass
}

fn log_outcome(s: &TcpSocket, outcome: Outcome) {
    match outcome {
        Outcome::Destroyed => info!(
            local = %s.local(), peer = %s.peer(), state = %s.state_name(), cookie = s.cookie(), inode = s.inode,
            owner = %s.owners_text(), "destroyed"
        ),
        Outcome::AlreadyGone | Outcome::NotFound => {
            debug!(local = %s.local(), peer = %s.peer(), cookie = s.cookie(), "not found (ENOENT)")
        }
        Outcome::Failed(e) => warn!(
            local = %s.local(), peer = %s.peer(), state = %s.state_name(), cookie = s.cookie(),
            error = %errno_text(e), "destroy failed"
        ),
        Outcome::Unacknowledged => {
            warn!(local = %s.local(), peer = %s.peer(), cookie = s.cookie(), "destroy not acknowledged")
        }
        Outcome::WouldDestroy => {}
    }
}
