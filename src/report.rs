//! Human tables and JSON documents for the results of list, kill and check.
//!
//! The JSON shape (`schema_version` 1) is documented in README.md and stable.

use std::io::{self, Write};

use serde::Serialize;

use crate::check::CheckReport;
use crate::engine::{KillReport, Outcome};
use crate::filter::Filter;
use crate::haproxy::Report as HaproxyReport;
use crate::sock::Socket;

/// Version of the JSON documents; bumped only on incompatible changes.
pub const SCHEMA_VERSION: u32 = 1;

static COLOR: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Colour the action column of tables (only for a terminal, and not with NO_COLOR).
pub fn set_color(on: bool) {
    COLOR.store(on, std::sync::atomic::Ordering::Relaxed);
}

fn color_of(tag: &str) -> Option<&'static str> {
    if !COLOR.load(std::sync::atomic::Ordering::Relaxed) {
        return None;
    }
    match tag {
        "destroyed" => Some("\x1b[32m"),
        "FAILED" | "no-ack" => Some("\x1b[31m"),
        "REMAINS" => Some("\x1b[33m"),
        "would-destroy" => Some("\x1b[36m"),
        _ => None,
    }
}

#[derive(Serialize)]
struct ListDoc<'a> {
    schema_version: u32,
    command: &'static str,
    netns: Option<&'a str>,
    filter: &'a Filter,
    sockets: &'a [Socket],
    summary: ListSummary,
}

#[derive(Serialize)]
struct ListSummary {
    count: usize,
    duration_ms: u64,
}

#[derive(Serialize)]
struct KillDoc<'a> {
    schema_version: u32,
    command: &'static str,
    netns: Option<&'a str>,
    filter: &'a Filter,
    #[serde(flatten)]
    report: &'a KillReport,
}

#[derive(Serialize)]
struct CheckDoc<'a> {
    schema_version: u32,
    command: &'static str,
    #[serde(flatten)]
    report: &'a CheckReport,
}

fn json<W: Write, T: Serialize>(out: &mut W, doc: &T) -> io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, doc).map_err(io::Error::other)?;
    writeln!(out)
}

/// Writes `list` output: a table like `ss`, or the JSON document.
pub fn write_list<W: Write>(
    out: &mut W,
    as_json: bool,
    netns: Option<&str>,
    filter: &Filter,
    sockets: &[Socket],
    duration_ms: u64,
) -> io::Result<()> {
    if as_json {
        let summary = ListSummary { count: sockets.len(), duration_ms };
        return json(
            out,
            &ListDoc { schema_version: SCHEMA_VERSION, command: "list", netns, filter, sockets, summary },
        );
    }
    write_table(out, false, sockets.iter().map(|s| (None, s)))
}

/// Aligned columns like `ss`; `tag` is an optional first column (the kill
/// outcome). Two passes over the rows (widths, then text) with one reused
/// buffer: a table of 100k sockets must not hold 100k rows of strings.
fn write_table<'a, W: Write>(
    out: &mut W,
    tagged: bool,
    rows: impl Iterator<Item = (Option<&'a str>, &'a Socket)> + Clone,
) -> io::Result<()> {
    use std::fmt::Write as _;
    const HEADER: [&str; 8] =
        ["Action", "State", "Local Address:Port", "Peer Address:Port", "UID", "Inode", "Cookie", "Process"];
    let with_process = rows.clone().any(|(_, s)| s.owners.is_some());
    let first = if tagged { 0 } else { 1 };
    let last = if with_process { 8 } else { 7 };
    let mut buf = String::new();
    let cell = |i: usize, tag: Option<&str>, s: &Socket, buf: &mut String| {
        buf.clear();
        let _ = match i {
            0 => write!(buf, "{}", tag.unwrap_or("")),
            1 => write!(buf, "{}", s.state_name()),
            2 => write!(buf, "{}", s.local()),
            3 => write!(buf, "{}", s.peer()),
            4 => write!(buf, "{}", s.uid),
            5 => write!(buf, "{}", s.inode),
            6 => write!(buf, "{}", s.cookie()),
            _ => write!(buf, "{}", s.owners_text()),
        };
    };
    let mut widths: Vec<usize> = HEADER.iter().map(|h| h.len()).collect();
    let mut any = false;
    for (tag, s) in rows.clone() {
        any = true;
        for (i, w) in widths.iter_mut().enumerate().take(last).skip(first) {
            cell(i, tag, s, &mut buf);
            *w = (*w).max(buf.len());
        }
    }
    if !any {
        return Ok(());
    }
    for (i, h) in HEADER.iter().enumerate().take(last).skip(first) {
        if i + 1 == last {
            writeln!(out, "{h}")?;
        } else {
            write!(out, "{h:<w$}  ", w = widths[i])?;
        }
    }
    for (tag, s) in rows {
        for (i, w) in widths.iter().enumerate().take(last).skip(first) {
            cell(i, tag, s, &mut buf);
            let color = if i == 0 { color_of(&buf) } else { None };
            if let Some(c) = color {
                write!(out, "{c}")?;
            }
            if i + 1 == last {
                write!(out, "{buf}")?;
            } else {
                write!(out, "{buf:<w$}")?;
            }
            if color.is_some() {
                write!(out, "\x1b[0m")?;
            }
            if i + 1 == last {
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
        Outcome::Failed => "FAILED",
        Outcome::Unacknowledged => "no-ack",
    }
}

/// Writes `kill` output: one row per socket acted on, what remains, and a summary line.
pub fn write_kill<W: Write>(
    out: &mut W,
    as_json: bool,
    netns: Option<&str>,
    filter: &Filter,
    report: &KillReport,
) -> io::Result<()> {
    if as_json {
        return json(out, &KillDoc { schema_version: SCHEMA_VERSION, command: "kill", netns, filter, report });
    }
    let remaining = report.remaining.as_deref().unwrap_or(&[]);
    let rows =
        report.sockets.iter().map(|a| (Some(outcome_word(a.outcome)), &a.socket)).chain(
            if report.dry_run { None } else { Some(remaining) }.into_iter().flatten().map(|s| (Some("REMAINS"), s)),
        );
    write_table(out, true, rows)?;
    for a in report.sockets.iter() {
        if let Some(e) = a.errno {
            writeln!(out, "failed: {} -> {}: {}", a.socket.local(), a.socket.peer(), crate::engine::errno_text(e))?;
        }
    }
    writeln!(out, "{}", summary_line(report))
}

/// The one-line summary of a kill.
pub fn summary_line(report: &KillReport) -> String {
    let s = &report.summary;
    if report.dry_run {
        return format!("dry run: {} matching sockets, nothing destroyed ({} ms)", s.matched, s.duration_ms);
    }
    let mut line = format!(
        "matched {}, destroyed {}, already gone {}, failed {}",
        s.matched, s.destroyed, s.already_gone, s.failed
    );
    if s.unacknowledged > 0 {
        line += &format!(", unacknowledged {}", s.unacknowledged);
    }
    if s.new_during_kill > 0 {
        line += &format!(", new during kill {}", s.new_during_kill);
    }
    match (s.remaining, s.remaining_original, s.remaining_new) {
        (Some(r), Some(o), Some(n)) => line += &format!("; still matching {r} ({o} original, {n} new)"),
        _ => line += "; not verified (--no-verify)",
    }
    line += &format!("; {} pass{}, {} ms", s.passes, if s.passes == 1 { "" } else { "es" }, s.duration_ms);
    if s.interrupted {
        line += "; INTERRUPTED by a signal";
    }
    line
}

/// Writes `check` output.
pub fn write_check<W: Write>(out: &mut W, as_json: bool, report: &CheckReport) -> io::Result<()> {
    if as_json {
        return json(out, &CheckDoc { schema_version: SCHEMA_VERSION, command: "check", report });
    }
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

#[derive(Serialize)]
struct HaproxyDoc<'a> {
    schema_version: u32,
    command: &'static str,
    #[serde(flatten)]
    report: &'a HaproxyReport,
    summary: HaproxySummary,
}

#[derive(Serialize)]
struct HaproxySummary {
    initial: usize,
    closed_by_haproxy: usize,
    destroyed: usize,
    already_gone: usize,
    failed: usize,
    remaining: usize,
    clean: bool,
}

/// Writes `haproxy` output.
pub fn write_haproxy<W: Write>(out: &mut W, as_json: bool, r: &HaproxyReport) -> io::Result<()> {
    let count = |o: Outcome| r.destroyed.iter().filter(|a| a.outcome == o).count();
    if as_json {
        let summary = HaproxySummary {
            initial: r.initial,
            closed_by_haproxy: r.closed_by_haproxy.len(),
            destroyed: count(Outcome::Destroyed),
            already_gone: count(Outcome::AlreadyGone),
            failed: count(Outcome::Failed) + count(Outcome::Unacknowledged),
            remaining: r.remaining.len(),
            clean: r.clean,
        };
        return json(out, &HaproxyDoc { schema_version: SCHEMA_VERSION, command: "haproxy", report: r, summary });
    }
    let pids: Vec<String> = r.pids.iter().map(u32::to_string).collect();
    let master = r.master_pid.map_or(String::new(), |m| format!(", master {m}"));
    writeln!(out, "HAProxy {} (pids {}{master})", r.haproxy_version, pids.join(", "))?;
    writeln!(out, "server {} at {}", r.server.as_deref().unwrap_or("(unnamed)"), r.server_addr)?;
    if r.dry_run {
        writeln!(out, "dry run: nothing sent to HAProxy, nothing destroyed")?;
    } else if r.commands_sent.is_empty() {
        writeln!(out, "sent to HAProxy: nothing (--no-shutdown or no server name)")?;
    } else {
        writeln!(out, "sent to HAProxy: {}", r.commands_sent.join("; "))?;
    }
    writeln!(out, "sockets to the server at start: {}", r.initial)?;
    if !r.dry_run {
        let last = r.closed_by_haproxy.iter().map(|c| c.at_ms).max();
        writeln!(
            out,
            "closed by HAProxy itself: {}{}",
            r.closed_by_haproxy.len(),
            last.map_or(String::new(), |t| format!(" (last seen gone at {t} ms)"))
        )?;
        let per: Vec<String> = r
            .destroyed_by_pid_state()
            .iter()
            .map(|(pid, states)| {
                let st: Vec<String> = states.iter().map(|(s, n)| format!("{s} {n}")).collect();
                format!("pid {pid}: {}", st.join(", "))
            })
            .collect();
        let times = match (r.destroyed.first(), r.destroyed.last()) {
            (Some(a), Some(b)) => format!(" at {}-{} ms", a.at_ms, b.at_ms),
            _ => String::new(),
        };
        writeln!(
            out,
            "destroyed by sockkill: {}{}{}{}",
            count(Outcome::Destroyed),
            if per.is_empty() { String::new() } else { format!(" ({})", per.join("; ")) },
            times,
            if count(Outcome::AlreadyGone) > 0 {
                format!(", already gone {}", count(Outcome::AlreadyGone))
            } else {
                String::new()
            },
        )?;
    }
    if !r.remaining.is_empty() {
        write_table(out, true, r.remaining.iter().map(|s| (Some("REMAINS"), s)))?;
    }
    writeln!(
        out,
        "HAProxy's session count for the server (scur): {}",
        r.scur.map_or("-".to_string(), |s| s.to_string())
    )?;
    let verdict = match (r.dry_run, r.clean) {
        (true, true) => "no lingering sockets".to_string(),
        (true, false) => format!("{} lingering sockets", r.remaining.len()),
        (false, true) => format!("CLEAN: no socket to the server since {} ms", r.last_seen_ms.unwrap_or(0)),
        (false, false) => format!("NOT CLEAN: {} sockets remain after {} ms", r.remaining.len(), r.duration_ms),
    };
    writeln!(out, "result: {verdict}{}", if r.interrupted { " (interrupted by a signal)" } else { "" })
}
