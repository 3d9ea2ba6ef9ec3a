//! A client for HAProxy's runtime API (the `stats socket`, unix or TCP) and
//! its master CLI.
//!
//! One connection per command in non-interactive mode: HAProxy answers and
//! closes. tokio gives a timeout on the connect and on every answer, and lets
//! a cancel request (a signal) abandon a pending answer at once; the runtime is
//! a private current-thread one, so callers stay synchronous.

use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio::runtime::Runtime;
use tracing::debug;

use crate::cancel::Cancel;
use crate::error::{Error, Result};

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

/// Sends commands to one HAProxy runtime API endpoint.
pub struct Api {
    endpoint: Endpoint,
    timeout: Duration,
    cancel: Option<Cancel>,
    rt: Runtime,
}

/// The largest answer accepted (`show sess` costs about 250 bytes per stream).
const MAX_ANSWER: u64 = 256 << 20;

enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Api {
    /// A client for `endpoint`; checks up front (without opening it) that a unix path is a socket.
    pub fn new(endpoint: Endpoint, timeout: Duration, cancel: Option<Cancel>) -> Result<Api> {
        if let Endpoint::Unix(p) = &endpoint {
            use std::os::unix::fs::FileTypeExt;
            let meta = std::fs::metadata(p).map_err(|e| {
                Error::Haproxy(format!(
                    "socket {}: {}",
                    p.display(),
                    match e.kind() {
                        std::io::ErrorKind::NotFound => "no such file".to_string(),
                        _ => e.to_string(),
                    }
                ))
            })?;
            if !meta.file_type().is_socket() {
                return Err(Error::Haproxy(format!(
                    "{} is not a unix socket (it is {})",
                    p.display(),
                    crate::netns::file_kind(&meta)
                )));
            }
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Other(format!("tokio runtime: {e}")))?;
        Ok(Api { endpoint, timeout, cancel, rt })
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
        self.exchange(cmd, self.timeout, true, |_| ()).map(|(a, ())| a)
    }

    /// Sends one command whose answer may take up to `answer_timeout` (`wait`),
    /// without half-closing: HAProxy interrupts a `wait` whose client shut its side.
    pub fn command_within(&self, cmd: &str, answer_timeout: Duration) -> Result<String> {
        self.exchange(cmd, answer_timeout, false, |_| ()).map(|(a, ())| a)
    }

    /// Connects, hands our end of the connection to `probe` while HAProxy holds
    /// the other end (before the command is sent), then sends `cmd`. Returns the
    /// answer and what `probe` found.
    pub fn identify<T>(&self, cmd: &str, probe: impl FnOnce(LocalEnd) -> T) -> Result<(String, T)> {
        self.exchange(cmd, self.timeout, true, probe)
    }

    fn exchange<T>(
        &self,
        cmd: &str,
        answer_timeout: Duration,
        half_close: bool,
        probe: impl FnOnce(LocalEnd) -> T,
    ) -> Result<(String, T)> {
        debug!(endpoint = %self.endpoint, cmd, "haproxy command");
        if self.cancel.as_ref().is_some_and(Cancel::is_cancelled) {
            return Err(Error::Interrupted(" (before sending it to HAProxy)"));
        }
        let endpoint = &self.endpoint;
        let (t, cancel) = (self.timeout, self.cancel.clone());
        let fail = |what: &str, e: std::io::Error| Error::Haproxy(format!("{what} {endpoint}: {e}"));
        let timed_out = |what: &str, t: Duration| {
            Error::Haproxy(format!("{what} {endpoint}: no answer within {t:?} (--api-timeout)"))
        };
        let answer = self.rt.block_on(async {
            let work = async {
                let stream = match endpoint {
                    Endpoint::Unix(p) => {
                        tokio::time::timeout(t, UnixStream::connect(p)).await.map(|r| r.map(Stream::Unix))
                    }
                    Endpoint::Tcp(a) => {
                        tokio::time::timeout(t, TcpStream::connect(a.as_str())).await.map(|r| r.map(Stream::Tcp))
                    }
                }
                .map_err(|_| timed_out("connecting to", t))?
                .map_err(|e| fail("connecting to", e))?;
                let local = match &stream {
                    Stream::Unix(s) => {
                        let st =
                            nix::sys::stat::fstat(s).map_err(|e| fail("inspecting the connection to", e.into()))?;
                        LocalEnd::Unix { inode: st.st_ino as u32 }
                    }
                    Stream::Tcp(s) => LocalEnd::Tcp {
                        local: s.local_addr().map_err(|e| fail("inspecting the connection to", e))?,
                        peer: s.peer_addr().map_err(|e| fail("inspecting the connection to", e))?,
                    },
                };
                let found = probe(local);
                let line = format!("{cmd}\n");
                let mut buf = Vec::new();
                let r = match stream {
                    Stream::Unix(mut s) => send_and_read(&mut s, &line, half_close, &mut buf, answer_timeout).await,
                    Stream::Tcp(mut s) => send_and_read(&mut s, &line, half_close, &mut buf, answer_timeout).await,
                };
                r.map_err(|e| match e {
                    None => timed_out(&format!("`{cmd}` to"), answer_timeout),
                    Some(e) => fail(&format!("`{cmd}` to"), e),
                })?;
                Ok::<_, Error>((buf, found))
            };
            tokio::select! {
                r = work => r,
                () = cancelled(cancel.as_ref()) => Err(Error::Interrupted(" (waiting for HAProxy's answer)")),
            }
        })?;
        let (bytes, found) = answer;
        let text = String::from_utf8(bytes)
            .map_err(|_| Error::Haproxy(format!("`{cmd}` to {endpoint}: the answer is not text")))?;
        Ok((text, found))
    }
}

/// Resolves when `cancel` is raised; never without one.
async fn cancelled(cancel: Option<&Cancel>) {
    let watcher = cancel.and_then(|c| c.watcher().ok()).and_then(|w| UnixStream::from_std(w).ok());
    match watcher {
        Some(w) => {
            let _ = w.readable().await;
        }
        None => std::future::pending::<()>().await,
    }
}

/// Writes the command and reads until HAProxy closes. `Err(None)` = timed out.
async fn send_and_read<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    line: &str,
    half_close: bool,
    buf: &mut Vec<u8>,
    t: Duration,
) -> std::result::Result<(), Option<std::io::Error>> {
    tokio::time::timeout(t, async {
        s.write_all(line.as_bytes()).await?;
        // Half-close: the master CLI answers only once it sees the end of input.
        if half_close {
            s.shutdown().await?;
        }
        let n = (&mut *s).take(MAX_ANSWER + 1).read_to_end(buf).await?;
        if n as u64 > MAX_ANSWER {
            return Err(std::io::Error::other(format!("answer larger than {} MiB", MAX_ANSWER >> 20)));
        }
        Ok::<_, std::io::Error>(())
    })
    .await
    .map_err(|_| None)?
    .map_err(Some)
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

    #[test]
    fn a_cancel_request_abandons_a_pending_answer() {
        let dir = std::env::temp_dir().join(format!("sockkill-api-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
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
        let t = std::time::Instant::now();
        let r = api.command("show info");
        assert!(matches!(r, Err(Error::Interrupted(_))), "{r:?}");
        assert!(t.elapsed() < Duration::from_secs(2));
        // Once raised, nothing more is sent.
        assert!(matches!(api.command("show info"), Err(Error::Interrupted(_))));
        hold.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
