//! A client for HAProxy's runtime API (the `stats socket`, unix or TCP).
//!
//! One connection per command in non-interactive mode: HAProxy answers and
//! closes. tokio gives us a timeout on the connect and on every answer; the
//! runtime is a private current-thread one, so callers stay synchronous.

use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio::runtime::Runtime;
use tracing::debug;

use crate::error::{Error, Result};

/// Where the runtime API listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Unix(PathBuf),
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

/// Sends commands to one HAProxy runtime API endpoint.
pub struct Api {
    endpoint: Endpoint,
    timeout: Duration,
    rt: Runtime,
}

/// HAProxy answers are small; anything beyond this is not an answer we want.
const MAX_ANSWER: u64 = 16 << 20;

impl Api {
    /// A client for `endpoint`; checks up front that a unix path is a socket.
    pub fn new(endpoint: Endpoint, timeout: Duration) -> Result<Api> {
        if let Endpoint::Unix(p) = &endpoint {
            use std::os::unix::fs::FileTypeExt;
            let meta = std::fs::metadata(p).map_err(|e| {
                Error::Haproxy(format!(
                    "stats socket {}: {}",
                    p.display(),
                    match e.kind() {
                        std::io::ErrorKind::NotFound => "no such file".to_string(),
                        _ => e.to_string(),
                    }
                ))
            })?;
            if !meta.file_type().is_socket() {
                return Err(Error::Haproxy(format!("{} is not a unix socket", p.display())));
            }
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Other(format!("tokio runtime: {e}")))?;
        Ok(Api { endpoint, timeout, rt })
    }

    /// The endpoint this client talks to.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Sends one command and returns the whole answer.
    pub fn command(&self, cmd: &str) -> Result<String> {
        debug!(endpoint = %self.endpoint, cmd, "haproxy command");
        let answer = self.rt.block_on(async {
            let t = self.timeout;
            let fail = |what: &str, e: std::io::Error| Error::Haproxy(format!("{what} {}: {e}", self.endpoint));
            let timed_out = |what: &str| {
                Error::Haproxy(format!("{what} {}: no answer within {:?} (--api-timeout)", self.endpoint, t))
            };
            let line = format!("{cmd}\n");
            let mut buf = Vec::new();
            match &self.endpoint {
                Endpoint::Unix(p) => {
                    let mut s = tokio::time::timeout(t, UnixStream::connect(p))
                        .await
                        .map_err(|_| timed_out("connecting to"))?
                        .map_err(|e| fail("connecting to", e))?;
                    exchange(&mut s, &line, &mut buf, t).await
                }
                Endpoint::Tcp(a) => {
                    let mut s = tokio::time::timeout(t, TcpStream::connect(a.as_str()))
                        .await
                        .map_err(|_| timed_out("connecting to"))?
                        .map_err(|e| fail("connecting to", e))?;
                    exchange(&mut s, &line, &mut buf, t).await
                }
            }
            .map_err(|e| match e {
                None => timed_out(&format!("`{cmd}` to")),
                Some(e) => fail(&format!("`{cmd}` to"), e),
            })?;
            Ok::<_, Error>(buf)
        })?;
        String::from_utf8(answer)
            .map_err(|_| Error::Haproxy(format!("`{cmd}` to {}: the answer is not text", self.endpoint)))
    }
}

/// Writes the command and reads until HAProxy closes. `Err(None)` = timed out.
async fn exchange<S: AsyncReadExt + AsyncWriteExt + Unpin>(
    s: &mut S,
    line: &str,
    buf: &mut Vec<u8>,
    t: Duration,
) -> std::result::Result<(), Option<std::io::Error>> {
    tokio::time::timeout(t, async {
        s.write_all(line.as_bytes()).await?;
        // Half-close: the master CLI answers only once it sees the end of input.
        s.shutdown().await?;
        s.take(MAX_ANSWER).read_to_end(buf).await?;
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
}
