//! Cooperative cancellation: a signal (or a library caller) asks a run to stop.
//!
//! A [`Cancel`] is a socket pair: every request (each signal, through
//! signal-hook's pipe handler, or [`Cancel::cancel`]) writes one byte, and
//! nothing ever reads them. So the read end stays readable, every wait that
//! polls it ends at once, and the number of queued bytes (peeked, never
//! consumed) tells a first request (stop after the batch in flight) from a
//! second one (abandon everything that is not yet sent).

use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{recv, MsgFlags};

use crate::error::{Error, Result};

/// A shared cancellation flag that every wait of a run can poll.
#[derive(Debug, Clone)]
pub struct Cancel {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    rx: UnixStream,
    tx: UnixStream,
}

/// The signals that stop a run: SIGINT, SIGTERM and SIGHUP.
pub const STOP_SIGNALS: [i32; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

impl Cancel {
    /// A flag no one has raised yet.
    pub fn new() -> Result<Cancel> {
        let fail = |e| Error::system("a cancellation socket pair", e);
        let (rx, tx) = UnixStream::pair().map_err(fail)?;
        for s in [&rx, &tx] {
            s.set_nonblocking(true).map_err(fail)?;
        }
        Ok(Cancel { inner: Arc::new(Inner { rx, tx }) })
    }

    /// A flag raised by each of `signals` (signal-hook's pipe handler writes a
    /// byte per signal, which is async-signal-safe). The signals no longer end
    /// the process: the run decides when to stop.
    pub fn on_signals(signals: &[i32]) -> Result<Cancel> {
        let c = Cancel::new()?;
        for &sig in signals {
            let tx = c.inner.tx.try_clone().map_err(|e| Error::system("a cancellation socket", e))?;
            signal_hook::low_level::pipe::register(sig, tx).map_err(|e| Error::system("a signal handler", e))?;
        }
        Ok(c)
    }

    /// Raises the flag once more (a first call asks to stop, a second to abandon).
    pub fn cancel(&self) {
        let _ = (&self.inner.tx).write(&[1]);
    }

    /// How many requests arrived (counting up to 2).
    pub fn requests(&self) -> usize {
        let mut buf = [0u8; 2];
        use std::os::fd::AsRawFd;
        recv(self.inner.rx.as_raw_fd(), &mut buf, MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT).unwrap_or(0)
    }

    /// A stop was asked for: finish the batch in flight, send nothing new.
    pub fn is_cancelled(&self) -> bool {
        self.requests() >= 1
    }

    /// A second request: abandon every wait and every batch not yet sent.
    pub fn is_abandoned(&self) -> bool {
        self.requests() >= 2
    }

    /// Sleeps for `d`, or less when the flag is raised. Returns true when it was.
    pub fn sleep(&self, d: Duration) -> bool {
        // Far enough is forever: no Instant overflow for a huge `d`.
        let end = Instant::now().checked_add(d);
        loop {
            if self.is_cancelled() {
                return true;
            }
            let left = end.map_or(Duration::MAX, |e| e.saturating_duration_since(Instant::now()));
            if left.is_zero() {
                return false;
            }
            // Chunks of at most 10 s keep the timeout within poll's range.
            let chunk = PollTimeout::try_from(left.min(Duration::from_secs(10))).unwrap_or(PollTimeout::MAX);
            let mut fds = [PollFd::new(self.inner.rx.as_fd(), PollFlags::POLLIN)];
            // EINTR (a signal arrived) loops back to the flag check.
            let _ = poll(&mut fds, chunk);
        }
    }

    /// A non-blocking socket that becomes readable when the flag is raised,
    /// for event loops (wait for readability; never read from it).
    pub fn watcher(&self) -> std::io::Result<UnixStream> {
        self.inner.rx.try_clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_requests_and_cuts_sleeps_short() {
        let c = Cancel::new().unwrap();
        assert_eq!(c.requests(), 0);
        let t = Instant::now();
        assert!(!c.sleep(Duration::from_millis(30)));
        assert!(t.elapsed() >= Duration::from_millis(30));
        let c2 = c.clone();
        let raiser = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            c2.cancel();
        });
        let t = Instant::now();
        assert!(c.sleep(Duration::from_secs(30)));
        assert!(t.elapsed() < Duration::from_secs(10));
        raiser.join().unwrap();
        assert!(c.is_cancelled() && !c.is_abandoned());
        c.cancel();
        assert!(c.is_abandoned());
        // Requests are peeked, never consumed.
        assert_eq!(c.requests(), 2);
        assert!(c.sleep(Duration::from_secs(30)));
    }
}
