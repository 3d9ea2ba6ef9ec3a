//! The HTTP-mode lab (tests/haproxy_http.rs): origins that record HAProxy's
//! side of every connection (the ground truth), a keep-alive client, and the
//! HTTP layouts.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::haproxy::*;

/// The origin's address, shared by the servers of two backends.
pub const ORIGIN: &str = "127.0.0.11:9001";
/// A second origin, elsewhere.
pub const OTHER: &str = "127.0.0.12:9002";

/// HAProxy's local port of each connection the origin accepted, by the
/// `x-srv` of the connection's first request.
pub type Seen = Arc<Mutex<BTreeMap<u16, String>>>;

/// An HTTP/1.1 origin: keep-alive; answers each request with its `x-srv`
/// header; `/slow` is answered after 60 s; `Upgrade: websocket` gets a 101
/// and then a tunnel that answers every line with the server's name.
pub struct Origin {
    pub _listener: TcpListener,
    pub seen: Seen,
}

pub fn read_head(r: &mut BufReader<TcpStream>) -> Option<(String, BTreeMap<String, String>)> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let request = line.trim().to_string();
    let mut headers = BTreeMap::new();
    loop {
        line.clear();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let l = line.trim();
        if l.is_empty() {
            return Some((request, headers));
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
}

impl Origin {
    pub fn start(bind: &str) -> Origin {
        let l = TcpListener::bind(bind).unwrap_or_else(|e| panic!("bind {bind}: {e}"));
        let listener = l.try_clone().unwrap();
        let seen: Seen = Arc::default();
        let seen2 = seen.clone();
        std::thread::spawn(move || {
            while let Ok((s, peer)) = listener.accept() {
                let seen = seen2.clone();
                std::thread::spawn(move || {
                    let mut w = s.try_clone().unwrap();
                    let mut r = BufReader::new(s);
                    let mut first = true;
                    while let Some((request, headers)) = read_head(&mut r) {
                        let srv = headers.get("x-srv").cloned().unwrap_or_else(|| "?".into());
                        if first {
                            seen.lock().unwrap().insert(peer.port(), srv.clone());
                            first = false;
                        }
                        let len: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
                        let mut body = vec![0; len];
                        if r.read_exact(&mut body).is_err() {
                            return;
                        }
                        if headers.get("upgrade").is_some_and(|u| u.eq_ignore_ascii_case("websocket")) {
                            let head =
                                "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                                        Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
                            if w.write_all(head.as_bytes()).is_err() {
                                return;
                            }
                            let mut line = String::new();
                            while r.read_line(&mut line).is_ok_and(|n| n > 0) {
                                if writeln!(w, "{srv}").is_err() {
                                    return;
                                }
                                line.clear();
                            }
                            return;
                        }
                        if request.contains(" /slow") {
                            std::thread::sleep(Duration::from_secs(60));
                        }
                        let resp = format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{srv}",
                            srv.len()
                        );
                        if w.write_all(resp.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Origin { _listener: l, seen }
    }

    /// The server names of HAProxy's connections, by HAProxy's local port.
    pub fn seen(&self) -> BTreeMap<u16, String> {
        self.seen.lock().unwrap().clone()
    }
}

/// A keep-alive HTTP/1.1 client of HAProxy.
pub struct Http {
    pub stream: TcpStream,
    pub reader: BufReader<TcpStream>,
}

impl Http {
    pub fn connect(front: &str) -> Http {
        let stream = TcpStream::connect(front).expect("connect to HAProxy");
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        Http { stream, reader }
    }

    /// Sends a request without waiting for the answer.
    pub fn send(&mut self, path: &str) {
        write!(self.stream, "GET {path} HTTP/1.1\r\nHost: lab\r\n\r\n").unwrap();
    }

    /// One request on the kept-alive connection; the answer's body.
    pub fn get(&mut self, path: &str) -> std::io::Result<String> {
        write!(self.stream, "GET {path} HTTP/1.1\r\nHost: lab\r\n\r\n")?;
        self.answer()
    }

    pub fn answer(&mut self) -> std::io::Result<String> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed"));
        }
        let status = line.clone();
        let mut len = 0;
        loop {
            line.clear();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed"));
            }
            let l = line.trim();
            if l.is_empty() {
                break;
            }
            if let Some(v) = l.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0; len];
        self.reader.read_exact(&mut body)?;
        let body = String::from_utf8_lossy(&body).into_owned();
        if !status.contains(" 200 ") {
            return Err(std::io::Error::other(format!("{}: {body}", status.trim())));
        }
        Ok(body)
    }

    /// Upgrades to a tunnel; then each line sent is answered by the server's name.
    pub fn upgrade(front: &str) -> Http {
        let mut c = Http::connect(front);
        // RFC 6455's sample key (HAProxy checks the handshake, and the accept key in the answer).
        write!(
            c.stream,
            "GET /ws HTTP/1.1\r\nHost: lab\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        .unwrap();
        let mut line = String::new();
        c.reader.read_line(&mut line).unwrap();
        assert!(line.contains(" 101 "), "upgrade refused: {line}");
        loop {
            line.clear();
            c.reader.read_line(&mut line).unwrap();
            if line.trim().is_empty() {
                break;
            }
        }
        c
    }

    pub fn tunnel_ask(&mut self) -> std::io::Result<String> {
        who(&mut self.stream, &mut self.reader)
    }

    /// True once HAProxy ended this connection (EOF or reset).
    pub fn ended(&mut self) -> bool {
        peer_ended(&self.stream, &mut self.reader)
    }
}

/// HTTP mode: frontends on 127.0.0.10, each backend naming its server in `x-srv`.
pub struct Http1Backend {
    pub name: &'static str,
    pub port: u16,
    pub reuse: &'static str,
    pub servers: Vec<(&'static str, &'static str)>,
}

pub fn hb(
    name: &'static str,
    port: u16,
    reuse: &'static str,
    servers: &[(&'static str, &'static str)],
) -> Http1Backend {
    Http1Backend { name, port, reuse, servers: servers.to_vec() }
}

pub fn http_layout(backends: &[Http1Backend]) -> String {
    let mut cfg = "defaults\n    mode http\n    timeout connect 5s\n    timeout client 1h\n    timeout server 1h\n    \
                   timeout http-keep-alive 1h\n    timeout tunnel 1h\n"
        .to_string();
    for b in backends {
        cfg += &format!("frontend fe_{n}\n    bind 127.0.0.10:{p}\n    default_backend {n}\n", n = b.name, p = b.port);
        // HAProxy tells the origin which server a request went through.
        cfg += &format!("backend {}\n    http-reuse {}\n    http-send-name-header x-srv\n", b.name, b.reuse);
        for (s, addr) in &b.servers {
            cfg += &format!("    server {s} {addr}\n");
        }
    }
    cfg
}

/// HAProxy's sockets to the origin now, by local port.
pub fn to_origin(h: &Haproxy) -> BTreeMap<u16, u64> {
    haproxy_sockets_to(ORIGIN, &h.pids()).iter().map(|s| (s.local().port(), s.cookie())).collect()
}

/// Splits HAProxy's sockets to the origin by the server the origin saw them come from.
pub fn by_server(sockets: &BTreeMap<u16, u64>, seen: &BTreeMap<u16, String>) -> BTreeMap<String, BTreeSet<u16>> {
    let mut out: BTreeMap<String, BTreeSet<u16>> = BTreeMap::new();
    for port in sockets.keys() {
        out.entry(seen.get(port).cloned().unwrap_or_else(|| "unknown".into())).or_default().insert(*port);
    }
    out
}

pub fn run(h: &Haproxy, args: &[&str]) -> (i32, Value, String) {
    let admin = h.sock("admin.sock");
    let mut all = vec!["haproxy", "--json", "--socket", admin.as_str()];
    all.extend_from_slice(args);
    run_json(&all)
}

/// No socket of HAProxy's to the origin with one of `ports`, now and for `period`.
pub fn assert_gone_for(period: Duration, h: &Haproxy, ports: &BTreeSet<u16>) {
    let end = Instant::now() + period;
    loop {
        let left: Vec<u16> = to_origin(h).into_keys().filter(|p| ports.contains(p)).collect();
        assert!(left.is_empty(), "HAProxy sockets still there: {left:?}");
        if Instant::now() >= end {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
