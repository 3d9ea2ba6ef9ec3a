//! Parsers for HAProxy runtime API answers. Pure functions over text; fields
//! are found by the header's names (or by `key=` in `show sess`), never by
//! position. Tested against answers captured from HAProxy 2.4, 2.6, 2.8, 3.0,
//! 3.1 and 3.2 (`tests/fixtures/haproxy/`).

use std::net::{IpAddr, SocketAddr};

use crate::error::{HaproxyError, Result};

/// What `show info` says about the answering process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    /// `Version:`.
    pub version: String,
    /// `Pid:`, as HAProxy sees it (in its own pid namespace).
    pub pid: u32,
}

/// One line of `show servers state`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServerState {
    /// The backend's name.
    pub backend: String,
    /// The server's name.
    pub name: String,
    /// `None` when HAProxy has no address for it (e.g. unresolved FQDN).
    pub addr: Option<IpAddr>,
    /// 0 means "the client's destination port".
    pub port: u16,
    /// In maintenance (`srv_admin_state` & `SRV_ADMF_MAINT`: forced, inherited, or
    /// for a failed resolution).
    pub maint: bool,
    /// Where its health checks and agent checks go when not to its own address
    /// (`srv_check_addr`/`srv_check_port`, `srv_agent_addr`/`srv_agent_port`):
    /// connections there are checks, never lingering sessions.
    pub checks: Vec<SocketAddr>,
}


/// The columns of a `show stat` row that sockkill reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatRow {
    /// `pxname`.
    pub proxy: String,
    /// `svname`.
    pub server: String,
    /// Current sessions, as HAProxy counts them.
    pub scur: Option<u64>,
    /// `status`.
    pub status: String,
}

/// One process listed by the master CLI's `show proc`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcEntry {
    /// The pid as HAProxy sees it (in its own pid namespace).
    pub pid: u32,
    /// `master`, `worker`, or a program name.
    pub kind: String,
    /// True for workers of an earlier configuration still draining after a reload.
    pub old: bool,
    /// Its HAProxy version (the last column; an old worker may run an older
    /// binary than the current one after an upgrade and a reload).
    pub version: Option<String>,
}

/// One stream of `show sess`: the backend and server of its server-side
/// connection, and that connection's fd in the process that printed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stream {
    /// `be=` (`None` for `<NONE>`).
    pub backend: Option<String>,
    /// `srv=` (`None` for `<none>`).
    pub server: Option<String>,
    /// The server-side connection's fd: `scb=[..,fd=N,..]` (2.6+) or
    /// `s1=[..,fd=N,..]` (2.4); `None` when it has none (also in a state
    /// without a connection, whatever fd is printed).
    pub fd: Option<u32>,
    /// The server side's state, the first number in `scb=[` / `s1=[`
    /// (`SC_ST_*`, `SI_ST_*` before 2.6: the same numbers on 2.2–3.4).
    pub state: Option<u8>,
    /// `age=`: seconds since the stream was accepted (HAProxy prints at most
    /// two units, so this is a lower bound: `1h2m` is 3720).
    pub age: Option<u64>,
}

impl Stream {
    /// The server side is still waiting for, connecting to or connected to
    /// its server: queued (2), turn-around before a retry (3), assigned (4),
    /// connecting (5), a failed attempt (6), ready (7), established (8) —
    /// not closing (9, 10) nor before a server was chosen (0, 1).
    pub fn server_side_live(&self) -> bool {
        self.state.is_some_and(|s| (2..=8).contains(&s))
    }
}

/// What `wait <delay> srv-removable` answered (HAProxy >= 3.0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WaitAnswer {
    /// `Done.`: the server has no session left and could be removed.
    Done,
    /// `Wait delay expired.`: sessions were still there when the delay ran out.
    Expired,
    /// `Failed.`: HAProxy cannot purge this server (tracked, `use-server`, not in maintenance...).
    Failed,
}

/// A known refusal in `answer`: its first line and a hint when one helps.
fn refusal(answer: &str) -> Option<(&'static str, &'static str)> {
    let first = answer.trim_start().lines().next().unwrap_or("").trim();
    let known = [
        "No such server.",
        "No such backend.",
        "Can't find backend.",
        "Can't find server.",
        "Permission denied",
        "Unknown command",
        "Require 'backend/server'.",
        "Require backend name.",
        "Server is not in maintenance",
    ];
    let hit = known.iter().find(|k| first.starts_with(**k))?;
    let hint = match *hit {
        "Permission denied" => " (the stats socket needs `level admin`)",
        "Unknown command" => " (this HAProxy version does not know the command)",
        _ => "",
    };
    Some((hit, hint))
}

/// HAProxy's `human_time` (`4s`, `1m20s`, `2h5m`, `3d4h`) in seconds; `None`
/// for `?` or anything else.
pub fn parse_age(v: &str) -> Option<u64> {
    let mut total = 0u64;
    let mut num = String::new();
    for c in v.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let unit = match c {
            'd' => 86400,
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return None,
        };
        total = total.checked_add(num.parse::<u64>().ok()?.checked_mul(unit)?)?;
        num.clear();
    }
    num.is_empty().then_some(total).filter(|_| !v.is_empty())
}

/// Who answered a `show info;<command>` exchange: `(pid, stopping)` from the
/// `show info` part (HAProxy's own pid; `Stopping: 1` once a reload made it an
/// old worker), and the command's answer after it. `None`: not that shape.
pub fn split_pinned(answer: &str) -> Option<((u32, bool), &str)> {
    let (info, rest) = answer.split_once("\n\n")?;
    let field = |name: &str| info.lines().find_map(|l| l.strip_prefix(name)).map(str::trim);
    let pid = field("Pid:")?.parse().ok()?;
    let stopping = field("Stopping:").is_some_and(|v| v != "0");
    Some(((pid, stopping), rest))
}

/// Turns HAProxy's known error answers to a query into errors; other text passes.
pub fn check_query(command: &str, answer: &str) -> Result<()> {
    match refusal(answer) {
        Some((hit, hint)) => {
            Err(HaproxyError::Refused { command: command.to_string(), answer: hit.to_string(), hint }.into())
        }
        None => Ok(()),
    }
}

/// Checks the answer to a state-changing command that answers nothing on
/// success (`set server ... state maint`, `shutdown sessions server ...`):
/// a known refusal, or any other text, is an error naming the command.
pub fn expect_empty(command: &str, answer: &str) -> Result<()> {
    check_query(command, answer)?;
    if answer.trim().is_empty() {
        Ok(())
    } else {
        Err(unexpected(command, answer))
    }
}

/// Parses the answer to `wait <delay> srv-removable`: `Done.`, `Wait delay
/// expired.` or `Failed.`; anything else is an error naming the command.
pub fn parse_wait(command: &str, answer: &str) -> Result<WaitAnswer> {
    check_query(command, answer)?;
    match answer.trim() {
        "Done." => Ok(WaitAnswer::Done),
        "Wait delay expired." => Ok(WaitAnswer::Expired),
        "Failed." => Ok(WaitAnswer::Failed),
        _ => Err(unexpected(command, answer)),
    }
}

fn shown(text: &str) -> String {
    text.trim().chars().take(80).collect()
}

fn unexpected(command: &str, answer: &str) -> crate::error::Error {
    HaproxyError::Unexpected { command: command.to_string(), answer: shown(answer) }.into()
}

fn malformed(command: &'static str, why: String) -> crate::error::Error {
    HaproxyError::Malformed { command, why }.into()
}

/// Parses `show info`. Errors when the text is not an HAProxy `show info` answer.
pub fn parse_info(text: &str) -> Result<Info> {
    let field = |name: &str| {
        text.lines().find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')).map(|v| v.trim().to_string()))
    };
    // A whole answer ends with an empty line; one cut short before it is truncated, not foreign.
    if text.starts_with("Name:") && !text.ends_with("\n\n") {
        return Err(malformed(
            "show info",
            format!("truncated: the connection closed after {} bytes, before the answer's end", text.len()),
        ));
    }
    let not_haproxy = || malformed("show info", format!("not an HAProxy one: {:?}", shown(text)));
    let version = field("Version").filter(|v| !v.is_empty()).ok_or_else(not_haproxy)?;
    let pid = field("Pid").and_then(|p| p.parse().ok()).ok_or_else(not_haproxy)?;
    Ok(Info { version, pid })
}

/// Whether an HAProxy version string (`2.6.12-1+deb12u4`) is at least `major.minor`.
pub fn version_at_least(version: &str, major: u32, minor: u32) -> bool {
    let mut parts = version.split(|c: char| !c.is_ascii_digit()).filter(|p| !p.is_empty()).map(|p| p.parse::<u32>());
    match (parts.next(), parts.next()) {
        (Some(Ok(ma)), Some(Ok(mi))) => (ma, mi) >= (major, minor),
        _ => false,
    }
}

/// Parses `show servers state [<backend>]`: a format-version line, then a
/// `# be_id be_name ...` header, then one space-separated line per server.
pub fn parse_servers_state(text: &str) -> Result<Vec<ServerState>> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let bad = |why: &str| malformed("show servers state", why.to_string());
    let version = lines.next().ok_or_else(|| bad("empty"))?;
    if version.trim() != "1" {
        return Err(bad(&format!("unknown format version {:?}", shown(version))));
    }
    // Every branch (2.4 to 3.4, direct and through the master CLI) ends an
    // answer with an empty line. One cut short lacks servers, whose
    // connections would look gone: refused, not guessed at.
    if !text.ends_with("\n\n") {
        return Err(bad(&format!("truncated: the connection closed after {} bytes, before the answer's end", text.len())));
    }
    let header = lines.next().and_then(|h| h.strip_prefix('#')).ok_or_else(|| bad("no `#` header line"))?;
    let names: Vec<&str> = header.split_whitespace().collect();
    let col = |name: &str| names.iter().position(|n| *n == name).ok_or_else(|| bad(&format!("no {name} field")));
    let (be, srv, addr, port) = (col("be_name")?, col("srv_name")?, col("srv_addr")?, col("srv_port")?);
    // Optional columns (older versions lack some).
    let opt = |name: &str| names.iter().position(|n| *n == name);
    let admin = opt("srv_admin_state");
    let checks = [("srv_check_addr", "srv_check_port"), ("srv_agent_addr", "srv_agent_port")].map(|(a, p)| (opt(a), opt(p)));
    let mut out = Vec::new();
    for line in lines {
        // Later backends of an unfiltered dump repeat the header.
        if line.starts_with('#') {
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        let get = |i: usize| f.get(i).copied().ok_or_else(|| bad(&format!("short line {line:?}")));
        let addr: Option<IpAddr> = get(addr)?.parse().ok();
        let port = srv_port(get(port)?).ok_or_else(|| bad(&format!("bad srv_port in {line:?}")))?;
        let field = |i: Option<usize>| i.and_then(|i| f.get(i).copied());
        // A check with no address of its own goes to the server's; port 0: the server's port.
        let checks = checks
            .iter()
            .filter_map(|(a, p)| {
                let ip = field(*a).and_then(|v| v.parse::<IpAddr>().ok()).filter(|ip| !ip.is_unspecified()).or(addr)?;
                let port = field(*p).and_then(|v| v.parse::<u16>().ok()).filter(|p| *p != 0)?;
                Some(SocketAddr::new(ip, port))
            })
            .collect();
        out.push(ServerState {
            backend: get(be)?.to_string(),
            name: get(srv)?.to_string(),
            addr,
            port,
            maint: field(admin).and_then(|v| v.parse::<u32>().ok()).is_some_and(|a| a & 0x23 != 0),
            checks,
        });
    }
    Ok(out)
}

/// `srv_port` as a port or a port offset's size. HAProxy prints an offset
/// unmarked (`+1000` as `1000`), and a negative one (`-1000`) through an
/// unsigned format (`4294966296`) or a signed one: either is the offset's
/// size, taken, like a positive one, added to or from a listening port.
fn srv_port(v: &str) -> Option<u16> {
    const WRAP: i64 = 1 << 32;
    match v.parse::<i64>().ok()? {
        p @ 0..=65535 => u16::try_from(p).ok(),
        p @ -65535..=-1 => u16::try_from(-p).ok(),
        p if (WRAP - 65535..WRAP).contains(&p) => u16::try_from(WRAP - p).ok(),
        _ => None,
    }
}

/// Parses `show stat` CSV by its `# pxname,svname,...` header.
pub fn parse_stat(text: &str) -> Result<Vec<StatRow>> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let bad = |why: &str| malformed("show stat", why.to_string());
    let header = lines.next().and_then(|h| h.strip_prefix("# ")).ok_or_else(|| bad("no `# pxname,...` header"))?;
    let names: Vec<&str> = header.split(',').collect();
    let col = |name: &str| names.iter().position(|n| *n == name).ok_or_else(|| bad(&format!("no {name} field")));
    let (px, sv, scur, status) = (col("pxname")?, col("svname")?, col("scur")?, col("status")?);
    Ok(lines
        .map(|line| {
            let f: Vec<&str> = line.split(',').collect();
            let get = |i: usize| f.get(i).copied().unwrap_or("").to_string();
            StatRow { proxy: get(px), server: get(sv), scur: get(scur).parse().ok(), status: get(status) }
        })
        .collect())
}

/// Parses the master CLI's `show proc`: a `#<PID> <type> ...` header, the
/// master and current workers, then `# old workers` and (before 3.1)
/// `# programs` sections. Only the first two columns are read (2.4 has a
/// `<relative PID>` column the others lack).
pub fn parse_proc(text: &str) -> Result<Vec<ProcEntry>> {
    if !text.trim_start().starts_with("#<PID>") {
        return Err(malformed("show proc", format!("not an HAProxy master CLI's: {:?}", shown(text))));
    }
    let mut out = Vec::new();
    let mut section = "workers";
    for line in text.trim_start().lines().skip(1) {
        let line = line.trim();
        if let Some(s) = line.strip_prefix('#') {
            section = if s.contains("old") {
                "old"
            } else if s.contains("program") {
                "programs"
            } else {
                "workers"
            };
            continue;
        }
        let mut f = line.split_whitespace();
        let (Some(pid), Some(kind)) = (f.next(), f.next()) else { continue };
        let Ok(pid) = pid.parse() else { continue };
        if section == "programs" {
            continue;
        }
        let version = line.split_whitespace().last().filter(|v| v.contains('.') && v.starts_with(|c: char| c.is_ascii_digit()));
        out.push(ProcEntry { pid, kind: kind.to_string(), old: section == "old", version: version.map(str::to_string) });
    }
    Ok(out)
}

/// Parses `show sess` (the one-line-per-stream form). The format is not
/// documented upstream and differs between branches, so it is read
/// tolerantly: a stream is a line starting with `0x`, fields are `key=value`
/// tokens, and only `be`, `srv` and the server-side endpoint's `fd` are used.
pub fn parse_sess(text: &str) -> Vec<Stream> {
    text.lines()
        .filter(|l| l.starts_with("0x"))
        .map(|line| {
            let mut s = Stream { backend: None, server: None, fd: None, state: None, age: None };
            let mut legacy = (None, None);
            for token in line.split_whitespace() {
                let Some((key, value)) = token.split_once('=') else { continue };
                let named = |v: &str| (!v.starts_with('<')).then(|| v.to_string());
                match key {
                    "be" => s.backend = named(value),
                    "srv" => s.server = named(value),
                    "scb" => (s.fd, s.state) = (endpoint_fd(value), endpoint_state(value)),
                    "s1" => legacy = (endpoint_fd(value), endpoint_state(value)),
                    "age" => s.age = parse_age(value),
                    _ => {}
                }
            }
            s.fd = s.fd.or(legacy.0);
            s.state = s.state.or(legacy.1);
            // Only connecting (5), ready (7) and established (8) are sure to hold
            // their connection: 2.4 prints the failed attempt's fd for a stream
            // waiting to retry (3), a number another connection may hold by now,
            // and a failed attempt's (6) is being released.
            if s.state.is_some_and(|st| !matches!(st, 5 | 7 | 8)) {
                s.fd = None;
            }
            s
        })
        .collect()
}

/// One connection of `show fd`: its fd, its ports, and the server it is
/// connected to (`sv=`), when it is a server-side connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdConn {
    /// The fd in the process that printed it.
    pub fd: u32,
    /// `back=1`: a server-side connection.
    pub back: bool,
    /// `lport=`: the connection's local port.
    pub lport: Option<u16>,
    /// `rport=`: the peer's port.
    pub rport: Option<u16>,
    /// `sv=`: `(backend, server)`.
    pub server: Option<(String, String)>,
}

/// Parses `show fd` (all fds, or one: `show fd N`). The format is meant for
/// developers and differs between branches, so it is read tolerantly: a line
/// is `<fd> : key=value ...`; only `back`, `lport`, `rport` and `sv` are used.
/// `sv=` is `BACKEND/SERVER` since 2.5 and `SERVER/BACKEND` in 2.4
/// (`server_first`).
pub fn parse_fd(text: &str, server_first: bool) -> Vec<FdConn> {
    text.lines()
        .filter_map(|line| {
            let (fd, rest) = line.trim_start().split_once(':')?;
            let fd = fd.trim().parse().ok()?;
            let mut c = FdConn { fd, back: false, lport: None, rport: None, server: None };
            for token in rest.split_whitespace() {
                let Some((key, value)) = token.split_once('=') else { continue };
                match key {
                    "back" => c.back = value == "1",
                    "lport" => c.lport = value.parse().ok(),
                    "rport" => c.rport = value.parse().ok(),
                    "sv" => {
                        c.server = value.split_once('/').map(|(a, b)| {
                            let (be, srv) = if server_first { (b, a) } else { (a, b) };
                            (be.to_string(), srv.to_string())
                        })
                    }
                    _ => {}
                }
            }
            Some(c)
        })
        .collect()
}

/// Whether this version prints `show fd`'s `sv=` as `SERVER/BACKEND` (2.4; fixed in 2.5).
pub fn fd_server_first(version: &str) -> bool {
    !version_at_least(version, 2, 5)
}

/// The `fd=N` inside an endpoint's `[...]` (negative: none).
fn endpoint_fd(value: &str) -> Option<u32> {
    let inner = value.strip_prefix('[')?.strip_suffix(']')?;
    inner.split(',').find_map(|f| f.strip_prefix("fd="))?.parse::<i64>().ok().and_then(|fd| u32::try_from(fd).ok())
}

/// The state number that opens an endpoint's `[...]`.
fn endpoint_state(value: &str) -> Option<u8> {
    value.strip_prefix('[')?.split([',', ']']).next()?.parse().ok()
}

/// The master CLI address in an HAProxy command line: the first `-S` value,
/// without its options (`-S /run/master.sock,mode,600`) or `unix@` prefix.
/// `ipv4@`/`ipv6@` addresses come back as `HOST:PORT`; abstract sockets are not usable.
pub fn master_cli_arg(args: &[String]) -> Option<String> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let value = if a == "-S" {
            it.next()?.clone()
        } else if let Some(v) = a.strip_prefix("-S") {
            v.to_string()
        } else {
            continue;
        };
        let addr = value.split(',').next().unwrap_or("").to_string();
        if let Some(p) = addr.strip_prefix("unix@") {
            return Some(p.to_string());
        }
        for prefix in ["ipv4@", "ipv6@", "tcp@", "tcp4@", "tcp6@"] {
            if let Some(a) = addr.strip_prefix(prefix) {
                return Some(a.to_string());
            }
        }
        if addr.contains('@') || addr.is_empty() {
            continue; // abns@, sockpair@...
        }
        return Some(addr);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Answers captured from each HAProxy branch (tests/fixtures/haproxy/VERSION/).
    macro_rules! fixtures {
        ($name:literal) => {
            [
                ("2.4", include_str!(concat!("../../tests/fixtures/haproxy/2.4/", $name))),
                ("2.6", include_str!(concat!("../../tests/fixtures/haproxy/2.6/", $name))),
                ("2.8", include_str!(concat!("../../tests/fixtures/haproxy/2.8/", $name))),
                ("3.0", include_str!(concat!("../../tests/fixtures/haproxy/3.0/", $name))),
                ("3.1", include_str!(concat!("../../tests/fixtures/haproxy/3.1/", $name))),
                ("3.2", include_str!(concat!("../../tests/fixtures/haproxy/3.2/", $name))),
            ]
        };
    }

    #[test]
    fn parses_info_of_every_branch() {
        for (v, text) in fixtures!("info") {
            let info = parse_info(text).unwrap_or_else(|e| panic!("{v}: {e}"));
            assert!(info.version.starts_with(v), "{v}: {info:?}");
            assert!(info.pid > 0);
        }
        assert!(parse_info("HTTP/1.1 400 Bad Request\r\n\r\n").is_err());
        assert!(parse_info("").is_err());
        assert!(parse_info("Version: 2.6\nPid: x\n").is_err());
        // Cut short before the empty line that ends every answer: truncated, said so.
        let whole = fixtures!("info")[0].1;
        let cut = &whole[..whole.len() / 2];
        assert!(parse_info(cut).unwrap_err().to_string().contains("truncated"), "{cut}");
    }

    #[test]
    fn parses_sess_of_every_branch() {
        for (v, text) in fixtures!("sess") {
            let streams = parse_sess(text);
            // The lab: four clients through `fe` to `be` (two on s1, two on s2), and the CLI session itself.
            let to = |srv: &str| streams.iter().filter(|s| s.server.as_deref() == Some(srv)).count();
            assert_eq!((to("s1"), to("s2")), (2, 2), "{v}: {streams:?}");
            for s in streams.iter().filter(|s| s.server.is_some()) {
                assert_eq!(s.backend.as_deref(), Some("be"), "{v}");
                assert!(s.fd.is_some_and(|fd| fd > 2), "{v}: {s:?}");
                assert_eq!(s.state, Some(8), "{v}: established: {s:?}");
                assert!(s.age.is_some(), "{v}: age: {s:?}");
            }
            // The CLI's own stream has no backend, no server and no server-side fd.
            assert!(streams.iter().any(|s| s.backend.is_none() && s.server.is_none() && s.fd.is_none()), "{v}");
        }
    }

    #[test]
    fn sess_reads_the_server_side_fd_not_the_client_side_one() {
        let line = "0x1: proto=tcpv4 src=1.2.3.4:5 fe=fe be=be srv=s1 ts=00 scf=[8,0h,fd=14] scb=[8,1h,fd=16] exp=3s\n";
        assert_eq!(parse_sess(line)[0].fd, Some(16));
        let legacy = "0x1: proto=tcpv4 src=1.2.3.4:5 fe=fe be=be srv=s1 s0=[8,200008h,fd=14,ex=] s1=[8,200018h,fd=15,ex=] exp=3s\n";
        assert_eq!(
            parse_sess(legacy)[0],
            Stream { backend: Some("be".into()), server: Some("s1".into()), fd: Some(15), state: Some(8), age: None }
        );
        let unconnected = "0x1: proto=tcpv4 be=be srv=s1 scb=[8,1h,fd=-1]\n";
        assert_eq!(parse_sess(unconnected)[0].fd, None);
        // A stream in turn-around before its next connect attempt: live, no socket.
        let retrying = parse_sess("0x1: proto=tcpv4 be=be srv=s1 scf=[8,0h,fd=14] scb=[3,1h,fd=-1]\n");
        assert_eq!((retrying[0].state, retrying[0].fd, retrying[0].server_side_live()), (Some(3), None, true));
        // 2.4 keeps the failed attempt's fd in a stream waiting to retry: no socket of its own.
        let stale = "0x1: proto=tcpv4 be=be srv=b s0=[8,200008h,fd=14,ex=] s1=[3,18h,fd=6,ex=0s] exp=0s\n";
        assert_eq!((parse_sess(stale)[0].fd, parse_sess(stale)[0].server_side_live()), (None, true));
        // Closed on the server side, or before a server was chosen: not the server's any more.
        for state in [0, 1, 9, 10] {
            assert!(!parse_sess(&format!("0x1: be=be srv=s1 scb=[{state},1h,fd=-1]\n"))[0].server_side_live());
        }
        assert!(parse_sess("Unknown command\n").is_empty());
    }

    #[test]
    fn parses_fd_lines_in_both_orders() {
        let v26 = "     13 : st=0x010421(cL heOpi W:sRa R:srA) ref=0 gid=1 tmask=0x1 umask=0x0 owner=0x55 iocb=0x55(sock_conn_iocb) back=1 cflg=0x00000300 cerr=0 fam=ipv4 lport=41060 rport=9001 sv=be/s1 mux=H1 ctx=0x55 h1c.flg=0x80002200 .sub=1 xprt=RAW\n\
                      12 : st=0x000020(cl heopi W:sRa R:sra) iocb=0x55(sock_conn_iocb) back=0 cflg=0x00000300 cerr=0 fam=ipv4 lport=8000 rport=37430 fe=fe mux=H1 ctx=0x55 xprt=RAW\n\
                       4 : st=0x100121(cl heopI W:sRa R:srA) iocb=0x55(sock_accept_iocb) l.st=RDY fe=fe fam=ipv4 lport=8000\n";
        let conns = parse_fd(v26, fd_server_first("2.6.12-1+deb12u4"));
        assert_eq!(conns.len(), 3);
        assert_eq!(
            conns[0],
            FdConn {
                fd: 13,
                back: true,
                lport: Some(41060),
                rport: Some(9001),
                server: Some(("be".into(), "s1".into()))
            }
        );
        assert!(!conns[1].back && conns[1].server.is_none());
        assert_eq!(conns[2].fd, 4);
        // 2.4 prints the server first.
        let v24 = "     21 : st=0x22(R:pRa W:pRa) ev=0x00(heopi) [lc] tmask=0x1 umask=0x0 owner=0x1 iocb=0x2(sock_conn_iocb) back=1 cflg=0x00000300 fe=fe sv=s1/be mux=PASS ctx=0x3 xprt=RAW\n";
        assert!(fd_server_first("2.4.0-4ce7d8a"));
        assert_eq!(parse_fd(v24, true)[0].server, Some(("be".into(), "s1".into())));
        assert!(parse_fd("Unknown command\n", false).is_empty());
        assert!(parse_fd("", false).is_empty());
    }

    #[test]
    fn parses_servers_state_of_every_branch() {
        for (v, text) in fixtures!("servers_state") {
            let s = parse_servers_state(text).unwrap_or_else(|e| panic!("{v}: {e}"));
            let s1 = s.iter().find(|x| x.backend == "be" && x.name == "s1").unwrap();
            assert_eq!((s1.addr, s1.port), (Some("127.0.0.11".parse().unwrap()), 9001), "{v}");
            // be_b/b1 shares s1's address.
            let b1 = s.iter().find(|x| x.backend == "be_b" && x.name == "b1").unwrap();
            assert_eq!((b1.addr, b1.port), (s1.addr, s1.port), "{v}");
        }
        // Fields in another order are still found by name.
        let swapped = "1\n# srv_port be_name srv_name srv_addr\n80 web a 10.0.0.1\n\n";
        let s = parse_servers_state(swapped).unwrap();
        assert_eq!((s[0].port, s[0].addr), (80, Some("10.0.0.1".parse().unwrap())));
        // Maintenance (srv_admin_state & 0x23) and check/agent addresses.
        let header = "1\n# be_name srv_name srv_addr srv_admin_state srv_port srv_check_port srv_check_addr srv_agent_addr srv_agent_port\n";
        let s = parse_servers_state(&format!(
            "{header}be a 10.0.0.1 1 80 8080 - 10.0.0.9 5555\nbe b 10.0.0.2 8 80 0 - - 0\nbe c 10.0.0.3 32 80 81 10.0.0.7 - 0\n\n"
        ))
        .unwrap();
        assert!(s[0].maint && !s[1].maint && s[2].maint, "{s:?}");
        let sa = |x: &str| x.parse::<SocketAddr>().unwrap();
        assert_eq!(s[0].checks, vec![sa("10.0.0.1:8080"), sa("10.0.0.9:5555")]);
        assert!(s[1].checks.is_empty());
        assert_eq!(s[2].checks, vec![sa("10.0.0.7:81")]);
        assert!(parse_servers_state("Can't find backend.\n").is_err());
        assert!(parse_servers_state("1\n# be_name srv_name\n").is_err());
        assert!(parse_servers_state("1\n# be_name srv_name srv_addr srv_port\nbe s1\n").is_err());
        // Cut short at a line's end (HAProxy gone mid-answer): refused, every branch.
        for (v, text) in fixtures!("servers_state") {
            let cut = &text[..text.trim_end().rfind('\n').unwrap_or(0) + 1];
            assert!(parse_servers_state(cut).unwrap_err().to_string().contains("truncated"), "{v}");
        }
    }

    /// `server s 127.0.0.1:-1000` and `:+1000`, as HAProxy 2.4, 2.6 and 3.4
    /// print them (the negative offset through an unsigned format).
    #[test]
    fn port_offsets_either_way() {
        let text = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port\n\
            3 be 1 s 127.0.0.1 2 0 1 1 0 1 0 2 0 0 0 0 - 4294966296 - 0 0 - - 0\n\
            3 be 2 p 127.0.0.1 2 0 1 1 0 1 0 2 0 0 0 0 - 1000 - 0 0 - - 0\n\n";
        let st = parse_servers_state(text).unwrap();
        assert_eq!(st.iter().map(|s| s.port).collect::<Vec<_>>(), vec![1000, 1000]);
        assert_eq!((srv_port("-1000"), srv_port("65535"), srv_port("0")), (Some(1000), Some(65535), Some(0)));
        assert_eq!((srv_port("65536"), srv_port("4294901760"), srv_port("x")), (None, None, None));
    }

    #[test]
    fn parses_stat_of_every_branch() {
        for (v, text) in fixtures!("stat") {
            let rows = parse_stat(text).unwrap_or_else(|e| panic!("{v}: {e}"));
            let s1 = rows.iter().find(|r| r.proxy == "be" && r.server == "s1").unwrap();
            assert_eq!(s1.scur, Some(2), "{v}");
            assert_eq!(s1.status, "no check", "{v}");
        }
        assert!(parse_stat("garbage").is_err());
    }

    #[test]
    fn parses_show_proc_of_every_branch() {
        for (v, text) in fixtures!("proc_after_reload") {
            let p = parse_proc(text).unwrap_or_else(|e| panic!("{v}: {e}"));
            assert_eq!(p.iter().filter(|e| e.kind == "master").count(), 1, "{v}: {p:?}");
            assert_eq!(p.iter().filter(|e| e.kind == "worker" && !e.old).count(), 1, "{v}: {p:?}");
            assert_eq!(p.iter().filter(|e| e.kind == "worker" && e.old).count(), 1, "{v}: {p:?}");
            assert!(p.iter().all(|e| e.version.as_deref().is_some_and(|x| x.starts_with(v))), "{v}: {p:?}");
        }
        for (v, text) in fixtures!("proc") {
            let p = parse_proc(text).unwrap();
            assert!(p.iter().all(|e| !e.old), "{v}");
        }
        let with_program = "#<PID> <type>\n1 master 0\n# workers\n3 worker 0\n# programs\n9200 dataplane 0\n";
        assert_eq!(parse_proc(with_program).unwrap().len(), 2);
        assert!(parse_proc("Unknown command\n").is_err());
    }

    #[test]
    fn every_wait_answer_is_known() {
        let cmd = "wait 1s srv-removable be/s1";
        for (v, text) in fixtures!("ans_wait") {
            let want = if v.starts_with('2') { None } else { Some(WaitAnswer::Done) };
            assert_eq!(parse_wait(cmd, text).ok(), want, "{v}: {text}");
        }
        for (v, text) in fixtures!("ans_wait_s2") {
            if !v.starts_with('2') {
                assert_eq!(parse_wait(cmd, text).unwrap(), WaitAnswer::Failed, "{v}");
            }
        }
        assert_eq!(parse_wait(cmd, "Wait delay expired.\n").unwrap(), WaitAnswer::Expired);
        assert!(parse_wait(cmd, "Done. Maybe.\n").is_err());
        assert!(parse_wait(cmd, "").is_err());
    }

    #[test]
    fn state_changing_answers_are_checked() {
        assert!(expect_empty("x", "\n").is_ok());
        assert!(expect_empty("x", "").is_ok());
        for (v, text) in fixtures!("ans_nosrv").into_iter().chain(fixtures!("ans_nobe")) {
            assert!(expect_empty("set server", text).is_err(), "{v}: {text}");
        }
        for e in ["Permission denied\n", "Unknown command, but maybe...\n  help\n", "Something new.\n"] {
            let err = expect_empty("shutdown sessions server be/s1", e).unwrap_err().to_string();
            assert!(err.contains("shutdown sessions server be/s1"), "{err}");
        }
        assert!(expect_empty("x", "Permission denied\n").unwrap_err().to_string().contains("level admin"));
        assert!(check_query("show stat", "# pxname,svname\n").is_ok());
    }

    #[test]
    fn compares_versions() {
        assert!(!version_at_least("2.6.12-1+deb12u4", 3, 0));
        assert!(version_at_least("3.0.5", 3, 0));
        assert!(version_at_least("3.2-dev1", 3, 0));
        assert!(!version_at_least("garbage", 3, 0));
    }

    #[test]
    fn finds_the_master_cli_in_a_command_line() {
        let args = |s: &str| s.split_whitespace().map(str::to_string).collect::<Vec<_>>();
        assert_eq!(master_cli_arg(&args("haproxy -W -db -S /run/m.sock -f h.cfg")), Some("/run/m.sock".into()));
        assert_eq!(master_cli_arg(&args("haproxy -W -S /run/m.sock,mode,600")), Some("/run/m.sock".into()));
        assert_eq!(master_cli_arg(&args("haproxy -W -S unix@/run/m.sock")), Some("/run/m.sock".into()));
        assert_eq!(master_cli_arg(&args("haproxy -W -S ipv4@127.0.0.1:9999")), Some("127.0.0.1:9999".into()));
        assert_eq!(master_cli_arg(&args("haproxy -W -S abns@m -S /run/b.sock")), Some("/run/b.sock".into()));
        assert_eq!(master_cli_arg(&args("haproxy -sf 10 -x sockpair@3 -W -db -S /m.sock")), Some("/m.sock".into()));
        assert_eq!(master_cli_arg(&args("haproxy -W -f h.cfg")), None);
        assert_eq!(master_cli_arg(&args("haproxy -S")), None);
    }

    #[test]
    fn stream_ages() {
        assert_eq!(parse_age("4s"), Some(4));
        assert_eq!(parse_age("0s"), Some(0));
        assert_eq!(parse_age("1m20s"), Some(80));
        assert_eq!(parse_age("2h5m"), Some(7500));
        assert_eq!(parse_age("3d4h"), Some(3 * 86400 + 4 * 3600));
        for bad in ["?", "", "12", "4x", "s"] {
            assert_eq!(parse_age(bad), None, "{bad}");
        }
        let line = "0x55d0 : proto=tcpv4 src=127.0.0.1:1 fe=fe be=be srv=a ts=00 epoch=0 age=1m2s calls=3 scb=[8,1h,fd=20,ex=]";
        assert_eq!(parse_sess(line)[0].age, Some(62));
    }

    #[test]
    fn who_answered_a_pinned_exchange() {
        let a = "Name: HAProxy\nPid: 42\nStopping: 0\nTainted: 0\n\n1\n# be_id\n\n";
        assert_eq!(split_pinned(a), Some(((42, false), "1\n# be_id\n\n")));
        let stopping = "Pid: 42\nStopping: 1\n\nrest";
        assert_eq!(split_pinned(stopping), Some(((42, true), "rest")));
        assert_eq!(split_pinned("Unknown command.\n\n"), None);
        assert_eq!(split_pinned("Pid: 42"), None);
    }
}
