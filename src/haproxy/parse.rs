//! Parsers for HAProxy runtime API answers. Pure functions over text; fields
//! are found by the header's names, never by position.

use std::net::IpAddr;

use crate::error::{Error, Result};

/// What `show info` says about the answering process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    pub version: String,
    pub pid: u32,
}

/// One line of `show servers state <backend>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerState {
    pub backend: String,
    pub name: String,
    /// `None` when HAProxy has no address for it (e.g. unresolved FQDN).
    pub addr: Option<IpAddr>,
    /// 0 means "the client's destination port".
    pub port: u16,
}

/// The columns of a `show stat` row that sockkill reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatRow {
    pub proxy: String,
    pub server: String,
    /// Current sessions, as HAProxy counts them.
    pub scur: Option<u64>,
    pub status: String,
}

/// One process listed by the master CLI's `show proc`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcEntry {
    pub pid: u32,
    /// `master`, `worker`, or a program name.
    pub kind: String,
    /// True for workers of an earlier configuration still draining after a reload.
    pub old: bool,
}

/// Turns HAProxy's error answers into errors; anything else passes.
pub fn check_answer(command: &str, answer: &str) -> Result<()> {
    let first = answer.trim_start().lines().next().unwrap_or("").trim();
    let known = [
        "No such server.",
        "No such backend.",
        "Can't find backend.",
        "Permission denied",
        "Unknown command",
        "Require 'backend/server'.",
        "Require backend name.",
    ];
    if known.iter().any(|k| first.starts_with(k)) {
        let what = if first.starts_with("Unknown command") { "Unknown command" } else { first };
        let hint = if first.starts_with("Permission denied") { " (the stats socket needs `level admin`)" } else { "" };
        return Err(Error::Haproxy(format!("`{command}` refused: {what}{hint}")));
    }
    Ok(())
}

/// Parses `show info`. Errors when the text is not an HAProxy `show info` answer.
pub fn parse_info(text: &str) -> Result<Info> {
    let field = |name: &str| {
        text.lines().find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')).map(|v| v.trim().to_string()))
    };
    let not_haproxy = || {
        let shown: String = text.trim().chars().take(60).collect();
        Error::Haproxy(format!("not an HAProxy `show info` answer: {shown:?}"))
    };
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
    let bad = |why: &str| Error::Haproxy(format!("unexpected `show servers state` answer: {why}"));
    let version = lines.next().ok_or_else(|| bad("empty"))?;
    if version.trim() != "1" {
        return Err(bad(&format!("unknown format version {:?}", version.trim())));
    }
    let header = lines.next().and_then(|h| h.strip_prefix('#')).ok_or_else(|| bad("no `#` header line"))?;
    let names: Vec<&str> = header.split_whitespace().collect();
    let col = |name: &str| names.iter().position(|n| *n == name).ok_or_else(|| bad(&format!("no {name} field")));
    let (be, srv, addr, port) = (col("be_name")?, col("srv_name")?, col("srv_addr")?, col("srv_port")?);
    let mut out = Vec::new();
    for line in lines {
        let f: Vec<&str> = line.split_whitespace().collect();
        let get = |i: usize| f.get(i).copied().ok_or_else(|| bad(&format!("short line {line:?}")));
        out.push(ServerState {
            backend: get(be)?.to_string(),
            name: get(srv)?.to_string(),
            addr: get(addr)?.parse().ok(),
            port: get(port)?.parse().map_err(|_| bad(&format!("bad srv_port in {line:?}")))?,
        });
    }
    Ok(out)
}

/// Parses `show stat` CSV by its `# pxname,svname,...` header.
pub fn parse_stat(text: &str) -> Result<Vec<StatRow>> {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let bad = |why: &str| Error::Haproxy(format!("unexpected `show stat` answer: {why}"));
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
/// master and current workers, then `# old workers` and `# programs` sections.
pub fn parse_proc(text: &str) -> Result<Vec<ProcEntry>> {
    if !text.trim_start().starts_with("#<PID>") {
        let shown: String = text.trim().chars().take(60).collect();
        return Err(Error::Haproxy(format!("not an HAProxy master CLI `show proc` answer: {shown:?}")));
    }
    let mut out = Vec::new();
    let mut section = "";
    for line in text.lines().skip(1) {
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
        out.push(ProcEntry { pid, kind: kind.to_string(), old: section == "old" });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "Name: HAProxy\nVersion: 2.6.12-1+deb12u4\nRelease_date: 2026/10/17\nNbthread: 2\nPid: 8966\nUptime: 0d 0h00m00s\n\n";
    const STATE: &str = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port\n3 be 1 s1 127.0.0.11 2 0 1 1 1 1 0 2 0 0 0 0 - 9001 - 0 0 - - 0\n3 be 2 s2 fd00::12 2 0 1 1 1 1 0 2 0 0 0 0 - 0 - 0 0 - - 0\n\n";
    const STAT: &str = "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,weight\nfe,FRONTEND,,,4,4,9979,4,0,0,0,0,0,,,,,OPEN,\nbe,s1,0,0,2,2,,2,0,0,,0,,0,0,0,0,MAINT,1\n\n";
    const PROC: &str = "#<PID>          <type>          <reloads>       <uptime>        <version>      \n8963            master          1 [failed: 0]   0d00h00m01s     2.6.12-1+deb12u4\n# workers\n9100            worker          0               0d00h00m01s     2.6.12-1+deb12u4\n# old workers\n8966            worker          1               0d00h00m05s     2.6.12-1+deb12u4\n# programs\n9200            dataplane       0               0d00h00m05s     -\n\n";

    #[test]
    fn parses_info() {
        assert_eq!(parse_info(INFO).unwrap(), Info { version: "2.6.12-1+deb12u4".into(), pid: 8966 });
        assert!(parse_info("HTTP/1.1 400 Bad Request\r\n\r\n").is_err());
        assert!(parse_info("").is_err());
        assert!(parse_info("Version: 2.6\nPid: x\n").is_err());
    }

    #[test]
    fn compares_versions() {
        assert!(!version_at_least("2.6.12-1+deb12u4", 3, 0));
        assert!(version_at_least("3.0.5", 3, 0));
        assert!(version_at_least("3.2-dev1", 3, 0));
        assert!(!version_at_least("garbage", 3, 0));
    }

    #[test]
    fn parses_servers_state_by_field_name() {
        let s = parse_servers_state(STATE).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(
            s[0],
            ServerState {
                backend: "be".into(),
                name: "s1".into(),
                addr: Some("127.0.0.11".parse().unwrap()),
                port: 9001
            }
        );
        assert_eq!(s[1].addr, Some("fd00::12".parse().unwrap()));
        assert_eq!(s[1].port, 0);
        // Fields in another order are still found by name.
        let swapped = "1\n# srv_port be_name srv_name srv_addr\n80 web a 10.0.0.1\n";
        let s = parse_servers_state(swapped).unwrap();
        assert_eq!((s[0].port, s[0].addr), (80, Some("10.0.0.1".parse().unwrap())));
        assert!(parse_servers_state("Can't find backend.\n").is_err());
        assert!(parse_servers_state("1\n# be_name srv_name\n").is_err());
        assert!(parse_servers_state("1\n# be_name srv_name srv_addr srv_port\nbe s1\n").is_err());
    }

    #[test]
    fn parses_stat_by_field_name() {
        let rows = parse_stat(STAT).unwrap();
        assert_eq!(rows[1], StatRow { proxy: "be".into(), server: "s1".into(), scur: Some(2), status: "MAINT".into() });
        assert!(parse_stat("garbage").is_err());
    }

    #[test]
    fn parses_show_proc_with_old_workers() {
        let p = parse_proc(PROC).unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!(p[0], ProcEntry { pid: 8963, kind: "master".into(), old: false });
        assert_eq!(p[1], ProcEntry { pid: 9100, kind: "worker".into(), old: false });
        assert_eq!(p[2], ProcEntry { pid: 8966, kind: "worker".into(), old: true });
        assert!(parse_proc("Unknown command\n").is_err());
    }

    #[test]
    fn recognizes_error_answers() {
        assert!(check_answer("x", "\n").is_ok());
        assert!(check_answer("x", "").is_ok());
        for e in [
            "No such server.\n",
            "No such backend.\n",
            "Can't find backend.\n",
            "Permission denied\n",
            "Unknown command, but maybe...\n  help\n",
        ] {
            assert!(check_answer("x", e).is_err(), "{e}");
        }
        assert!(check_answer("x", "Permission denied\n").unwrap_err().to_string().contains("level admin"));
    }
}
