//! A client for HAProxy's runtime API (the `stats socket`, unix or TCP) and
//! its master CLI.
//!
//! One connection per command in non-interactive mode: HAProxy answers and
//! closes. Plain std sockets and `poll(2)`: every wait (connect, answer) has
//! a timeout and ends at once on a cancel request (the [`Cancel`]'s socket is
//! polled with the connection). A command whose answer takes long (HAProxy's
//! `wait`) can run on its own thread ([`Api::spawn`]) while the caller goes
//! on looking at the kernel. No async runtime: one request at a time is all
//! sockkill ever has in flight on the main thread, and the one long command
//! gets a thread.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use tracing::debug;

use crate::cancel::Cancel;
use crate::error::{Error, HaproxyError, Result};

/// Where the runtime API listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A unix socket path.
    Unix(PathBuf),
    /// `HOST:PORT`.
    Tcp(String),
}

impl Endpoint {
    /// `HOST:PORT` (no `/`, ends in `:digits`) is TCP; anything else a unix socket path.
    pub fn parse(s: &str) -> Endpoint {
        let tcp = !s.contains('/')
            && s.rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        if tcp {
            Endpoint::Tcp(s.to_string())
        } else {
            Endpoint::Unix(PathBuf::from(s))
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "{}", p.display()),
            Endpoint::Tcp(a) => f.write_str(a),
        }
    }
}

/// Our end of a connection to the API, as the kernel knows it: what it takes
/// to find the process holding the other end.
#[derive(Debug, Clone, Copy)]
pub enum LocalEnd {
    /// A unix socket: our socket's inode.
    Unix {
        /// Our socket's inode.
        inode: u32,
    },
    /// A TCP connection: our address and the peer's.
    Tcp {
        /// Our address.
        local: std::net::SocketAddr,
        /// HAProxy's address.
        peer: std::net::SocketAddr,
    },
}

/// The largest answer accepted (`show sess` costs about 250 bytes per stream).
const MAX_ANSWER: usize = 256 << 20;

/// A connection to the API.
enum Conn {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Conn {
    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Conn::Unix(s) => s.as_fd(),
            Conn::Tcp(s) => s.as_fd(),
        }
    }

    fn stream(&mut self) -> &mut dyn ReadWrite {
        match self {
            Conn::Unix(s) => s,
            Conn::Tcp(s) => s,
        }
    }

    fn shutdown(&self, how: Shutdown) -> std::io::Result<()> {
        match self {
            Conn::Unix(s) => s.shutdown(how),
            Conn::Tcp(s) => s.shutdown(how),
        }
    }

    fn try_clone(&self) -> std::io::Result<Conn> {
        Ok(match self {
            Conn::Unix(s) => Conn::Unix(s.try_clone()?),
            Conn::Tcp(s) => Conn::Tcp(s.try_clone()?),
        })
    }

    fn local_end(&self) -> std::io::Result<LocalEnd> {
        Ok(match self {
            Conn::Unix(s) => LocalEnd::Unix { inode: nix::sys::stat::fstat(s)?.st_ino as u32 },
            Conn::Tcp(s) => LocalEnd::Tcp { local: s.local_addr()?, peer: s.peer_addr()? },
        })
    }
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// Sends commands to one HAProxy runtime API endpoint.
#[derive(Debug, Clone)]
pub struct Api {
    endpoint: Endpoint,
    timeout: Duration,
    cancel: Option<Cancel>,
}

impl Api {
    /// A client for `endpoint`; checks up front (without opening it) that a unix path is a socket.
    pub fn new(endpoint: Endpoint, timeout: Duration, cancel: Option<Cancel>) -> Result<Api> {
        if let Endpoint::Unix(p) = &endpoint {
            use std::os::unix::fs::FileTypeExt;
            let meta = std::fs::metadata(p).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => HaproxyError::NoSocket { path: p.clone() },
                _ => HaproxyError::Connect { endpoint: p.display().to_string(), source: e },
            })?;
            if !meta.file_type().is_socket() {
                return Err(HaproxyError::NotSocket { path: p.clone(), kind: crate::sys::file_kind(&meta) }.into());
            }
        }
        Ok(Api { endpoint, timeout, cancel })
    }

    /// The endpoint this client talks to.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The timeout for a connect and for an answer.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sends one command and returns the whole answer.
    pub fn command(&self, cmd: &str) -> Result<String> {
        let mut conn = self.connect(cmd)?;
        self.send(&mut conn, cmd, true)?;
        self.receive(&mut conn, cmd, self.timeout)
    }

    /// [`Api::command`], setting `sent` once the command's bytes have left:
    /// a command HAProxy received may have taken effect whatever happens to
    /// its answer (late, cut short by a signal, unexpected).
    pub fn command_tracked(&self, cmd: &str, sent: &mut bool) -> Result<String> {
        let mut conn = self.connect(cmd)?;
        self.send(&mut conn, cmd, true)?;
        *sent = true;
        self.receive(&mut conn, cmd, self.timeout)
    }

    /// Connects, hands our end of the connection to `probe` while HAProxy holds
    /// the other end (before the command is sent), then sends `cmd`. Returns the
    /// answer and what `probe` found.
    pub fn identify<T>(&self, cmd: &str, probe: impl FnOnce(LocalEnd) -> T) -> Result<(String, T)> {
        let mut conn = self.connect(cmd)?;
        let local = conn.local_end().map_err(|e| self.io(cmd, e))?;
        let found = probe(local);
        self.send(&mut conn, cmd, true)?;
        Ok((self.receive(&mut conn, cmd, self.timeout)?, found))
    }

    /// Sends a command whose answer may take up to `answer_timeout` (HAProxy's
    /// `wait`) and reads the answer on a thread of its own. It is sent without
    /// half-closing: HAProxy interrupts a `wait` whose client shut its side.
    /// Connect errors come back at once; the answer through [`Pending`].
    pub fn spawn(&self, cmd: &str, answer_timeout: Duration) -> Result<Pending> {
        let mut conn = self.connect(cmd)?;
        self.send(&mut conn, cmd, false)?;
        let closer = conn.try_clone().map_err(|e| self.io(cmd, e))?;
        let (tx, rx) = mpsc::channel();
        let (api, command) = (self.clone(), cmd.to_string());
        let thread = std::thread::Builder::new()
            .name("haproxy-wait".into())
            .spawn(move || {
                let _ = tx.send(api.receive(&mut conn, &command, answer_timeout));
            })
            .map_err(|e| Error::system("a thread for HAProxy's answer", e))?;
        Ok(Pending { rx, closer, thread: Some(thread), answer: None })
    }

    fn io(&self, cmd: &str, source: std::io::Error) -> Error {
        HaproxyError::Io { endpoint: self.endpoint.to_string(), command: cmd.to_string(), source }.into()
    }

    fn timed_out(&self, cmd: Option<&str>, after: Duration) -> Error {
        HaproxyError::Timeout { endpoint: self.endpoint.to_string(), command: cmd.map(str::to_string), after }.into()
    }

    fn check_cancel(&self, when: &'static str) -> Result<()> {
        if self.cancel.as_ref().is_some_and(Cancel::is_cancelled) {
            return Err(Error::Interrupted(when));
        }
        Ok(())
    }

    fn connect(&self, cmd: &str) -> Result<Conn> {
        debug!(endpoint = %self.endpoint, cmd, "haproxy command");
        self.check_cancel(" (before sending it to HAProxy)")?;
        let refused = |source| HaproxyError::Connect { endpoint: self.endpoint.to_string(), source };
        match &self.endpoint {
            // A unix connect does not wait: it succeeds or fails at once.
            Endpoint::Unix(p) => UnixStream::connect(p).map(Conn::Unix).map_err(|e| refused(e).into()),
            Endpoint::Tcp(a) => {
                let addrs: Vec<_> = a.to_socket_addrs().map_err(refused)?.collect();
                let mut last = None;
                for addr in addrs {
                    match TcpStream::connect_timeout(&addr, self.timeout) {
                        Ok(s) => return Ok(Conn::Tcp(s)),
                        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                            last = Some(self.timed_out(None, self.timeout))
                        }
                        Err(e) => last = Some(refused(e).into()),
                    }
                }
                Err(last.unwrap_or_else(|| {
                    refused(std::io::Error::new(std::io::ErrorKind::NotFound, "no address")).into()
                }))
            }
        }
    }

    fn send(&self, conn: &mut Conn, cmd: &str, half_close: bool) -> Result<()> {
        let line = format!("{cmd}\n");
        let stream = conn.stream();
        stream.write_all(line.as_bytes()).map_err(|e| self.io(cmd, e))?;
        // Half-close: the master CLI answers only once it sees the end of input.
        if half_close {
            conn.shutdown(Shutdown::Write).map_err(|e| self.io(cmd, e))?;
        }
        Ok(())
    }

    /// Reads until HAProxy closes, within `within`; a cancel request ends the wait at once.
    fn receive(&self, conn: &mut Conn, cmd: &str, within: Duration) -> Result<String> {
        let end = Instant::now().checked_add(within);
        let watcher = self.cancel.as_ref().map(Cancel::watcher).transpose().map_err(|e| self.io(cmd, e))?;
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let left = end.map_or(Duration::MAX, |e| e.saturating_duration_since(Instant::now()));
            if left.is_zero() {
                return Err(self.timed_out(Some(cmd), within));
            }
            let timeout = PollTimeout::try_from(left.min(Duration::from_secs(10))).unwrap_or(PollTimeout::MAX);
            let ready = {
                let mut fds = vec![PollFd::new(conn.fd(), PollFlags::POLLIN)];
                if let Some(w) = &watcher {
                    fds.push(PollFd::new(w.as_fd(), PollFlags::POLLIN));
                }
                match poll(&mut fds, timeout) {
                    Ok(_) => {}
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => return Err(self.io(cmd, e.into())),
                }
                let cancelled = fds.get(1).and_then(PollFd::revents).is_some_and(|r| !r.is_empty());
                if cancelled {
                    return Err(Error::Interrupted(" (waiting for HAProxy's answer)"));
                }
                fds[0].revents().is_some_and(|r| !r.is_empty())
            };
            if !ready {
                continue;
            }
            match conn.stream().read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => {
                    if buf.len() + n > MAX_ANSWER {
                        let big = std::io::Error::other(format!("answer larger than {} MiB", MAX_ANSWER >> 20));
                        return Err(self.io(cmd, big));
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io(cmd, e)),
            }
        }
        String::from_utf8(buf).map_err(|_| {
            HaproxyError::NotText { endpoint: self.endpoint.to_string(), command: cmd.to_string() }.into()
        })
    }
}

/// A command sent with [`Api::spawn`] whose answer is read on another thread.
pub struct Pending {
    rx: mpsc::Receiver<Result<String>>,
    closer: Conn,
    thread: Option<std::thread::JoinHandle<()>>,
    answer: Option<Result<String>>,
}

impl Pending {
    /// The answer, once it is there (`None` while pending). Taken once.
    pub fn try_take(&mut self) -> Option<Result<String>> {
        if self.answer.is_none() {
            self.answer = match self.rx.try_recv() {
                Ok(a) => Some(a),
                Err(mpsc::TryRecvError::Empty) => return None,
                Err(mpsc::TryRecvError::Disconnected) => {
                    Some(Err(Error::Internal("the thread reading HAProxy's answer ended without one".into())))
                }
            };
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
        self.answer.take()
    }

    /// Waits up to `d` for the answer.
    pub fn wait(&mut self, d: Duration) -> Option<Result<String>> {
        if self.answer.is_none() {
            if let Ok(a) = self.rx.recv_timeout(d) {
                self.answer = Some(a);
            }
        }
        self.try_take()
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        // Abandoned: closing our side ends HAProxy's wait and the reading thread.
        let _ = self.closer.shutdown(Shutdown::Both);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_endpoints() {
        assert_eq!(Endpoint::parse("/run/haproxy/admin.sock"), Endpoint::Unix("/run/haproxy/admin.sock".into()));
        assert_eq!(Endpoint::parse("admin.sock"), Endpoint::Unix("admin.sock".into()));
        assert_eq!(Endpoint::parse("127.0.0.1:9999"), Endpoint::Tcp("127.0.0.1:9999".into()));
        assert_eq!(Endpoint::parse("lb1:9999"), Endpoint::Tcp("lb1:9999".into()));
        assert_eq!(Endpoint::parse("[::1]:9999"), Endpoint::Tcp("[::1]:9999".into()));
        assert_eq!(Endpoint::parse("./x:1"), Endpoint::Unix("./x:1".into()));
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sockkill-api-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_cancel_request_abandons_a_pending_answer() {
        let dir = scratch("cancel");
        let path = dir.join("silent.sock");
        let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let hold = std::thread::spawn(move || {
            let c = l.accept();
            std::thread::sleep(Duration::from_secs(3));
            drop(c);
        });
        let cancel = Cancel::new().unwrap();
        let api = Api::new(Endpoint::Unix(path), Duration::from_secs(30), Some(cancel.clone())).unwrap();
        let c2 = cancel.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            c2.cancel();
        });
        let t = Instant::now();
        let r = api.command("show info");
        assert!(matches!(r, Err(Error::Interrupted(_))), "{r:?}");
        assert!(t.elapsed() < Duration::from_secs(2));
        // Once raised, nothing more is sent.
        assert!(matches!(api.command("show info"), Err(Error::Interrupted(_))));
        hold.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_spawned_command_answers_later_without_blocking_the_caller() {
        let dir = scratch("spawn");
        let path = dir.join("slow.sock");
        let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let mut line = [0u8; 64];
            let n = c.read(&mut line).unwrap();
            assert_eq!(&line[..n], b"wait 300ms srv-removable be/s1\n");
            std::thread::sleep(Duration::from_millis(300));
            c.write_all(b"Done.\n").unwrap();
        });
        let api = Api::new(Endpoint::Unix(path), Duration::from_secs(5), None).unwrap();
        let t = Instant::now();
        let mut pending = api.spawn("wait 300ms srv-removable be/s1", Duration::from_secs(5)).unwrap();
        assert!(t.elapsed() < Duration::from_millis(200), "spawn does not wait for the answer");
        assert!(pending.try_take().is_none());
        let answer = pending.wait(Duration::from_secs(5)).expect("answered").unwrap();
        assert_eq!(answer, "Done.\n");
        assert!(t.elapsed() >= Duration::from_millis(300));
        server.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn timeouts_and_refusals_are_typed() {
        let dir = scratch("timeout");
        let path = dir.join("mute.sock");
        let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let hold = std::thread::spawn(move || {
            let c = l.accept();
            std::thread::sleep(Duration::from_millis(600));
            drop(c);
        });
        let api = Api::new(Endpoint::Unix(path), Duration::from_millis(200), None).unwrap();
        match api.command("show info") {
            Err(Error::Haproxy(HaproxyError::Timeout { command: Some(c), .. })) => assert_eq!(c, "show info"),
            other => panic!("{other:?}"),
        }
        hold.join().unwrap();
        assert!(matches!(
            Api::new(Endpoint::Unix(dir.join("missing.sock")), Duration::from_secs(1), None),
            Err(Error::Haproxy(HaproxyError::NoSocket { .. }))
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
