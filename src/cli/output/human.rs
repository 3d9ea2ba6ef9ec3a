//! The human output: tables aligned like `ss`, the summary line, the
//! HAProxy report in words.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};

use sockkill::check::CheckReport;
use sockkill::engine::{Ledger, Spared};
use sockkill::{haproxy, KillReport, Outcome, TcpSocket};

use crate::cli::exec::Ran;

static COLOR: AtomicBool = AtomicBool::new(false);

/// Colour the action column of tables (only for a terminal, and not with NO_COLOR).
pub fn set_color(on: bool) {
    COLOR.store(on, Ordering::Relaxed);
}

pub(super) fn human(out: &mut dyn Write, o: &Ran) -> io::Result<()> {
    match o {
        Ran::List { sockets, .. } => write_table(out, false, sockets.iter().map(|s| (None, s))),
        Ran::Kill { report, .. } => write_kill(out, report),
        Ran::Haproxy(r) => write_haproxy(out, r),
        Ran::Check(r) => write_check(out, r),
        Ran::Text(bytes) => out.write_all(bytes),
        Ran::Written(files) => files.iter().try_for_each(|f| writeln!(out, "{}", f.display())),
        Ran::Failed(_) => Ok(()),
    }
}

fn color_of(tag: &str) -> Option<&'static str> {
    if !COLOR.load(Ordering::Relaxed) {
        return None;
    }
    match tag {
        "destroyed" => Some("\x1b[32m"),
        "FAILED" | "no-ack" | "NOT-FOUND" => Some("\x1b[31m"),
        "REMAINS" | "unsure" => Some("\x1b[33m"),
        "would-destroy" => Some("\x1b[36m"),
        _ => None,
    }
}

/// Aligned columns like `ss`; `tag` is an optional first column (the
/// outcome). Widths from the first rows, then the text, with one reused
/// buffer: a table of 100k sockets must not hold 100k rows of strings.
fn write_table<'a>(
    out: &mut dyn Write,
    tagged: bool,
    rows: impl Iterator<Item = (Option<&'a str>, &'a TcpSocket)> + Clone,
) -> io::Result<()> {
    use std::fmt::Write as _;
    const HEADER: [&str; 9] =
        ["Action", "Netid", "State", "Local Address:Port", "Peer Address:Port", "UID", "Inode", "Cookie", "Process"];
    // Column widths from the first rows only: a table of 100k sockets is then
    // formatted once, not twice (a later, wider cell just pushes its row on).
    const WIDTH_SAMPLE: usize = 4096;
    let with_process = rows.clone().any(|(_, s)| s.owners.is_some());
    // The protocol column only when UDP is in the table (as ss's -A shows it).
    let with_netid = rows.clone().any(|(_, s)| s.is_udp());
    let cols: Vec<usize> = (0..HEADER.len())
        .filter(|&i| (i != 0 || tagged) && (i != 1 || with_netid) && (i != 8 || with_process))
        .collect();
    let last = cols.last().copied().unwrap_or(0);
    let mut buf = String::new();
    let cell = |i: usize, tag: Option<&str>, s: &TcpSocket, buf: &mut String| {
        buf.clear();
        let _ = match i {
            0 => write!(buf, "{}", tag.unwrap_or("")),
            1 => write!(buf, "{}", s.protocol()),
            2 => write!(buf, "{}", s.state_name()),
            3 => write!(buf, "{}", s.local()),
            4 => write!(buf, "{}", s.peer()),
            5 => write!(buf, "{}", s.uid),
            6 => write!(buf, "{}", s.inode),
            7 => write!(buf, "{}", s.cookie()),
            _ => write!(buf, "{}", s.owners_text()),
        };
    };
    let mut widths: Vec<usize> = HEADER.iter().map(|h| h.len()).collect();
    let mut any = false;
    for (tag, s) in rows.clone().take(WIDTH_SAMPLE) {
        any = true;
        for &i in &cols {
            cell(i, tag, s, &mut buf);
            widths[i] = widths[i].max(buf.len());
        }
    }
    if !any {
        return Ok(());
    }
    for &i in &cols {
        let h = HEADER[i];
        if i == last {
            writeln!(out, "{h}")?;
        } else {
            write!(out, "{h:<w$}  ", w = widths[i])?;
        }
    }
    for (tag, s) in rows {
        for &i in &cols {
            let w = widths[i];
            cell(i, tag, s, &mut buf);
            let color = if i == 0 { color_of(&buf) } else { None };
            if let Some(c) = color {
                write!(out, "{c}")?;
            }
            if i == last {
                write!(out, "{buf}")?;
            } else {
                write!(out, "{buf:<w$}")?;
            }
            if color.is_some() {
                write!(out, "\x1b[0m")?;
            }
            if i == last {
                writeln!(out)?;
            } else {
                write!(out, "  ")?;
            }
        }
    }
    Ok(())
}

fn outcome_word(o: Outcome) -> &'static str {
    match o {
        Outcome::WouldDestroy => "would-destroy",
        Outcome::Destroyed => "destroyed",
        Outcome::AlreadyGone => "already-gone",
        Outcome::NotFound => "NOT-FOUND",
        Outcome::Failed(_) => "FAILED",
        Outcome::Unacknowledged => "no-ack",
    }
}

fn entry_rows<'a>(
    entries: &'a Ledger,
    remaining: &'a [TcpSocket],
    spared: &'a [(&'static str, &'a [Spared])],
) -> impl Iterator<Item = (Option<&'a str>, &'a TcpSocket)> + Clone {
    entries
        .iter()
        .map(|e| (Some(outcome_word(e.outcome)), e.socket))
        .chain(remaining.iter().map(|s| (Some("REMAINS"), s)))
        .chain(spared.iter().flat_map(|(tag, list)| list.iter().map(move |s| (Some(*tag), &s.socket))))
}

fn write_reasons(out: &mut dyn Write, entries: &Ledger, spared: &[(&'static str, &[Spared])]) -> io::Result<()> {
    for e in entries.iter() {
        if let Some(why) = e.outcome.error_text() {
            writeln!(out, "failed: {} -> {}: {why}", e.socket.local(), e.socket.peer())?;
        }
    }
    for (tag, list) in spared {
        for s in list.iter() {
            writeln!(out, "{tag}: {} -> {}: {}", s.socket.local(), s.socket.peer(), s.reason)?;
        }
    }
    Ok(())
}

fn write_kill(out: &mut dyn Write, k: &KillReport) -> io::Result<()> {
    let r = &k.report;
    let remaining = if r.dry_run { &[][..] } else { r.remaining.as_deref().unwrap_or(&[]) };
    let spared = [("ambiguous", &r.ambiguous[..]), ("other-server", &r.other_server[..])];
    write_table(out, true, entry_rows(&r.sockets, remaining, &spared))?;
    write_reasons(out, &r.sockets, &spared)?;
    if !k.processes_exited.is_empty() {
        writeln!(out, "processes that exited during the run: {:?}", k.processes_exited)?;
    }
    writeln!(out, "{}", summary_line(k))?;
    match &r.verdict_reason {
        Some(why) if !r.dry_run => writeln!(out, "not clean: {why}"),
        _ => Ok(()),
    }
}

/// The one-line summary of a kill.
pub fn summary_line(k: &KillReport) -> String {
    let r = &k.report;
    let s = &r.summary;
    if r.dry_run {
        return format!("dry run: {} matching sockets, nothing destroyed ({} ms)", s.matched, s.duration_ms);
    }
    let mut line = format!(
        "matched {}, destroyed {}, already gone {}, failed {}",
        s.matched, s.destroyed, s.already_gone, s.failed
    );
    if s.not_found > 0 {
        line += &format!(
            ", not found though alive {} (SO_REUSEPORT group members the kernel's lookup does not reach)",
            s.not_found
        );
    }
    if s.unacknowledged > 0 {
        line += &format!(", unacknowledged {}", s.unacknowledged);
    }
    if s.new_during_kill > 0 {
        line += &format!(", new during kill {}", s.new_during_kill);
    }
    match (s.remaining, s.remaining_original, s.remaining_new) {
        (Some(r), Some(o), Some(n)) => line += &format!("; still matching {r} ({o} original, {n} new)"),
        _ => line += "; not verified",
    }
    line += &format!("; {} pass{}, {} ms", s.passes, if s.passes == 1 { "" } else { "es" }, s.duration_ms);
    if s.interrupted {
        line += "; INTERRUPTED by a signal";
    }
    if r.error.is_some() {
        line += "; STOPPED by an error";
    }
    line
}

fn write_check(out: &mut dyn Write, report: &CheckReport) -> io::Result<()> {
    writeln!(out, "probing in {}", report.netns)?;
    writeln!(out, "CAP_NET_ADMIN: {}", if report.cap_net_admin { "yes" } else { "NO (destroying sockets will fail)" })?;
    for s in &report.steps {
        writeln!(out, "[{}] {}: {}", if s.ok { " ok " } else { "FAIL" }, s.name, s.detail)?;
    }
    writeln!(
        out,
        "{}",
        if report.ok { "result: sockets can be listed and destroyed here" } else { "result: NOT WORKING (see above)" }
    )
}

/// The server, or the lingering sweep's findings.
fn write_target(out: &mut dyn Write, r: &haproxy::Report) -> io::Result<()> {
    let server = r.server.as_deref().unwrap_or("(unnamed)");
    match (&r.lingering, r.server_addr) {
        (Some(found), _) => write_lingering(out, found, &r.not_asked),
        (None, Some(addr)) => writeln!(out, "server {server} at {addr}"),
        (None, None) => writeln!(out, "server {server}"),
    }
}

/// The lingering sweep's findings, a line per class, server and address.
fn write_lingering(out: &mut dyn Write, found: &[haproxy::LingeringReport], not_asked: &[String]) -> io::Result<()> {
    if found.is_empty() {
        writeln!(out, "lingering: nothing (every backend connection's server is configured where it is)")?;
    }
    for l in found {
        let f = &l.found;
        let now = f.now_at.as_ref().map_or(String::new(), |a| format!(" (now at {a})"));
        let what = if f.enforced {
            let left = if l.left > 0 {
                format!(", left {} (judged otherwise since: see below)", l.left)
            } else {
                String::new()
            };
            format!("destroyed {}, remaining {}{left}", l.destroyed, l.remaining)
        } else {
            "left alone (--include-maint ends them)".to_string()
        };
        let pids: Vec<String> = f.pids.iter().map(u32::to_string).collect();
        let class = f.class.name();
        writeln!(
            out,
            "lingering {class:<5} {} at {}{now}: {} sockets in pid {}; {what}",
            f.server,
            f.address,
            f.sockets,
            pids.join(", ")
        )?;
    }
    for n in not_asked {
        writeln!(out, "not asked: {n} (a master CLI, --master-socket, lets sockkill judge old workers)")?;
    }
    Ok(())
}

fn write_haproxy(out: &mut dyn Write, r: &haproxy::Report) -> io::Result<()> {
    let pids: Vec<String> = r.pids.iter().map(u32::to_string).collect();
    let master = r.master_pid.map_or(String::new(), |m| format!(", master {m}"));
    writeln!(out, "HAProxy {} (pids {}{master}; answering {})", r.haproxy_version, pids.join(", "), r.answering_pid)?;
    write_target(out, r)?;
    if r.dry_run {
        writeln!(out, "dry run: nothing sent to HAProxy, nothing destroyed")?;
    } else if r.commands_sent.is_empty() {
        writeln!(out, "sent to HAProxy: nothing (--no-shutdown, no server name, or stopped first)")?;
    } else {
        writeln!(out, "sent to HAProxy: {}", r.commands_sent.join("; "))?;
    }
    if let Some(w) = r.wait_answer {
        writeln!(out, "HAProxy's answer to wait: {w:?}")?;
    }
    writeln!(out, "sockets of the server at start: {}", r.initial)?;
    if !r.dry_run {
        let last = r.closed_by_haproxy.iter().map(|c| c.at_ms).max();
        writeln!(
            out,
            "closed by HAProxy itself: {}{}",
            r.closed_by_haproxy.len(),
            last.map_or(String::new(), |t| format!(" (last seen gone at {t} ms)"))
        )?;
        let mut per: std::collections::BTreeMap<String, std::collections::BTreeMap<&str, usize>> = Default::default();
        for e in r.destroyed.iter().filter(|e| e.outcome == Outcome::Destroyed) {
            let pid = e.socket.owners.as_ref().and_then(|o| o.first()).map_or("?".to_string(), |o| o.pid.to_string());
            *per.entry(pid).or_default().entry(e.socket.state_name()).or_default() += 1;
        }
        let per: Vec<String> = per
            .iter()
            .map(|(pid, states)| {
                let st: Vec<String> = states.iter().map(|(s, n)| format!("{s} {n}")).collect();
                format!("pid {pid}: {}", st.join(", "))
            })
            .collect();
        let times = match (r.destroyed.iter().map(|e| e.at_ms).min(), r.destroyed.iter().map(|e| e.at_ms).max()) {
            (Some(a), Some(b)) => format!(" at {a}-{b} ms"),
            _ => String::new(),
        };
        writeln!(
            out,
            "destroyed by sockkill: {}{}{}{}",
            r.summary.destroyed,
            if per.is_empty() { String::new() } else { format!(" ({})", per.join("; ")) },
            times,
            if r.summary.already_gone > 0 {
                format!(", already gone {}", r.summary.already_gone)
            } else {
                String::new()
            },
        )?;
    }
    if !r.workers_exited.is_empty() {
        writeln!(out, "workers that exited during the run: {:?}", r.workers_exited)?;
    }
    let spared = [("ambiguous", &r.ambiguous[..]), ("other-server", &r.other_server[..])];
    if !r.remaining.is_empty() || !r.ambiguous.is_empty() || !r.other_server.is_empty() {
        let none = Ledger::default();
        write_table(out, true, entry_rows(&none, &r.remaining, &spared))?;
        write_reasons(out, &none, &spared)?;
    }
    writeln!(
        out,
        "HAProxy's session count for the server (scur): {}",
        r.scur.map_or("-".to_string(), |s| s.to_string())
    )?;
    let head = match (r.dry_run, r.verdict.clean()) {
        (true, true) => "no lingering sockets".to_string(),
        (true, false) => "lingering sockets".to_string(),
        (false, true) => format!("CLEAN: no socket to the server since {} ms", r.last_seen_ms.unwrap_or(0)),
        (false, false) => format!("NOT CLEAN ({}) after {} ms", r.verdict.name(), r.duration_ms),
    };
    match &r.verdict_reason {
        Some(why) => writeln!(out, "result: {head}: {why}"),
        None => writeln!(out, "result: {head}"),
    }
}
