//! The one place that turns an outcome into output: the audit log's `end`
//! event, the metrics textfile, the human table or the JSON document on
//! stdout (`schema_version` 1, documented in README.md and
//! docs/sockkill.schema.json), the error line on stderr, and the exit code.

use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::Serialize;
use serde_json::{json, Value};
use sockkill::audit::AuditLog;
use sockkill::check::CheckReport;
use sockkill::engine::{Ledger, Spared};
use sockkill::filter::Filter;
use sockkill::metrics::{self, Metrics};
use sockkill::{haproxy, KillReport, Outcome, TcpSocket, Verdict};

use super::exec::Ran;
use super::plan::Global;

/// Version of the JSON documents; bumped only on incompatible changes.
pub const SCHEMA_VERSION: u32 = 1;

static COLOR: AtomicBool = AtomicBool::new(false);

/// Colour the action column of tables (only for a terminal, and not with NO_COLOR).
pub fn set_color(on: bool) {
    COLOR.store(on, Ordering::Relaxed);
}

/// Writes a line on stderr; a closed or full stderr is not worth a panic.
pub fn stderr_line(text: &str) {
    let _ = writeln!(io::stderr(), "{text}");
}

/// The verdict of a run that may destroy (`kill`, `haproxy`), and whether
/// it did anything; a command that failed before doing anything is
/// `failed` (or `interrupted`, for a signal) with nothing done.
fn verdict_of(ran: &Ran) -> Option<(Verdict, bool)> {
    match ran {
        Ran::Kill { report, .. } => Some((report.verdict(), report.report.destroyed_any())),
        Ran::Haproxy(r) => {
            let done = r.summary.destroyed > 0 || r.engine.unacknowledged > 0 || !r.commands_sent.is_empty();
            Some((r.verdict(), done))
        }
        Ran::Failed(sockkill::Error::Interrupted(_)) => Some((Verdict::Interrupted { done: false }, false)),
        Ran::Failed(_) => Some((Verdict::Failed { done: false }, false)),
        _ => None,
    }
}

/// A record that could not be written after the run (metrics, stdout, the
/// audit `end`): what it says, and its kind for `error_kind`.
struct Late {
    text: String,
    kind: &'static str,
}

/// The run's story after a late failure: the verdict becomes `failed`
/// (keeping whether anything was done), the reason and the error kind say
/// why — set in the report itself, so every record written from now on
/// derives from it. Returns whether the verdict changed.
fn degrade(ran: &mut Ran, late: &Late) -> bool {
    let Some((v, done)) = verdict_of(ran) else { return false };
    let after = v.after_late_error(done);
    let reason = Some(format!("a record of the run could not be written: {}", late.text));
    match ran {
        Ran::Kill { report, .. } => {
            let r = &mut report.report;
            r.summary.verdict = after;
            r.summary.clean = after.clean();
            r.verdict_reason = reason;
            r.error_kind.get_or_insert(late.kind);
        }
        Ran::Haproxy(r) => {
            r.verdict = after;
            r.clean = after.clean();
            r.summary.verdict = after;
            r.summary.clean = after.clean();
            r.verdict_reason = reason;
            r.error_kind.get_or_insert(late.kind);
        }
        _ => {}
    }
    after != v
}

/// The exit code of what ran: the verdict's for kill and haproxy; `list`
/// and the others 0, `check` 2 when the probe failed, 2 when nothing ran.
fn exit_code(ran: &Ran) -> u8 {
    match ran {
        Ran::List { .. } | Ran::Text(_) | Ran::Written(_) => 0,
        Ran::Check(r) => {
            if r.ok {
                0
            } else {
                2
            }
        }
        Ran::Kill { .. } | Ran::Haproxy(_) | Ran::Failed(_) => verdict_of(ran).map_or(2, |(v, _)| v.exit_code()),
    }
}

fn error_of(ran: &Ran) -> Option<String> {
    match ran {
        Ran::Kill { report, .. } => report.report.error.as_ref().map(|e| e.to_string()),
        Ran::Haproxy(r) => r.error.clone(),
        Ran::Failed(e) => Some(e.to_string()),
        _ => None,
    }
}

/// Finishes a run: metrics, stdout, audit `end` event, stderr. Returns the
/// exit code. Every record derives from the one report; a record that
/// fails turns the verdict into `failed` (see [`degrade`]) before the next
/// one is written. The order: the metrics first (rewritten, atomically,
/// whenever a later record fails), then stdout, then the audit `end` last of
/// all — the authority. Only when that last write itself fails can stdout,
/// already delivered, show the earlier verdict.
pub fn finish(
    global: &Global,
    command: &'static str,
    mut ran: Ran,
    audit: Option<&AuditLog>,
    metrics_file: Option<&Path>,
    server: Option<String>,
) -> u8 {
    let mut late: Vec<Late> = Vec::new();
    let write_metrics = |ran: &Ran| -> Result<(), Late> {
        match metrics_file {
            Some(path) => metrics::write(path, &Metrics { server: server.clone(), ..metrics_of(command, ran) })
                .map_err(|e| Late { text: e.to_string(), kind: e.kind() }),
            None => Ok(()),
        }
    };
    let mut metrics_ok = true;
    if let Err(e) = write_metrics(&ran) {
        degrade(&mut ran, &e);
        late.push(e);
        metrics_ok = false;
    }
    let after_failure = |ran: &mut Ran, e: Late, late: &mut Vec<Late>| {
        if degrade(ran, &e) && metrics_ok {
            if let Err(again) = write_metrics(ran) {
                late.push(again);
            }
        }
        late.push(e);
    };
    let code = exit_code(&ran);
    let error = error_of(&ran).or_else(|| (!late.is_empty()).then(|| joined(&late)));
    let written =
        write_stdout(
            |out| {
                if global.json {
                    json_doc(out, command, &ran, code, error.as_deref())
                } else {
                    human(out, &ran)
                }
            },
        );
    if let Err(e) = written {
        after_failure(&mut ran, Late { text: format!("writing output: {e}"), kind: "output" }, &mut late);
    }
    if let Some(log) = audit {
        let verdict = verdict_of(&ran).map(|(v, _)| v.name());
        let error = error_of(&ran).or_else(|| (!late.is_empty()).then(|| joined(&late)));
        if let Err(e) = log.end(i32::from(exit_code(&ran)), verdict, &summary_value(&ran), error.as_deref()) {
            after_failure(&mut ran, Late { text: e.to_string(), kind: e.kind() }, &mut late);
        }
    }
    let code = exit_code(&ran);
    if let Some(e) = error_of(&ran) {
        // A run that started and stopped on an error before destroying anything says so.
        let nothing = code == 2 && matches!(ran, Ran::Kill { .. } | Ran::Haproxy(_));
        stderr_line(&format!("sockkill: error: {e}{}", if nothing { " (nothing was destroyed)" } else { "" }));
    }
    for e in &late {
        stderr_line(&format!("sockkill: error: {}", e.text));
    }
    // A report that could not be delivered is no success, also for `list` and `check`.
    if code == 0 && !late.is_empty() {
        return 2;
    }
    code
}

fn joined(late: &[Late]) -> String {
    late.iter().map(|l| l.text.as_str()).collect::<Vec<_>>().join("; ")
}

/// Writes through a buffered stdout; a reader that went away (EPIPE) is a normal end.
fn write_stdout(f: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> io::Result<()> {
    // Block-buffered: Rust's stdout alone writes once per line (100k rows = 100k syscalls).
    let mut out = io::BufWriter::with_capacity(1 << 16, io::stdout().lock());
    match f(&mut out).and_then(|()| out.flush()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

fn summary_value(ran: &Ran) -> Value {
    match ran {
        Ran::Kill { report, .. } => serde_json::to_value(&report.report.summary).unwrap_or(Value::Null),
        Ran::Haproxy(r) => serde_json::to_value(&r.summary).unwrap_or(Value::Null),
        _ => Value::Null,
    }
}

fn metrics_of(command: &'static str, ran: &Ran) -> Metrics {
    let base = Metrics { command, exit_code: i32::from(exit_code(ran)), ..Metrics::default() };
    let verdict = verdict_of(ran).map(|(v, _)| v);
    match ran {
        Ran::Kill { report, .. } => {
            let s = &report.report.summary;
            Metrics {
                matched: s.matched,
                destroyed: s.destroyed,
                already_gone: s.already_gone,
                failed: s.unsuccessful(),
                remaining: s.remaining,
                ambiguous: s.ambiguous,
                verdict,
                duration: Duration::from_millis(s.duration_ms),
                ..base
            }
        }
        Ran::Haproxy(r) => Metrics {
            matched: r.summary.initial,
            destroyed: r.summary.destroyed,
            already_gone: r.summary.already_gone,
            failed: r.summary.failed,
            remaining: Some(r.summary.remaining),
            ambiguous: r.summary.ambiguous,
            verdict,
            duration: Duration::from_millis(r.duration_ms),
            ..base
        },
        Ran::Failed(_) => Metrics { verdict, ..base },
        _ => base,
    }
}

fn json<T: Serialize + ?Sized>(out: &mut dyn Write, doc: &T) -> io::Result<()> {
    // serde_json keeps the io::Error (and its kind: EPIPE stays EPIPE).
    serde_json::to_writer_pretty(&mut *out, doc).map_err(io::Error::from)?;
    writeln!(out)
}

#[derive(Serialize)]
struct Doc<'a, T: Serialize> {
    schema_version: u32,
    command: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    exit_code: Option<u8>,
    #[serde(flatten)]
    body: &'a T,
}

fn json_doc(out: &mut dyn Write, command: &'static str, o: &Ran, code: u8, error: Option<&str>) -> io::Result<()> {
    match o {
        Ran::List { netns, filter, sockets, duration_ms } => {
            #[derive(Serialize)]
            struct List<'a> {
                netns: &'a Option<String>,
                filter: &'a Filter,
                sockets: &'a [TcpSocket],
                summary: Value,
            }
            let body =
                List { netns, filter, sockets, summary: json!({"count": sockets.len(), "duration_ms": duration_ms}) };
            json(out, &Doc { schema_version: SCHEMA_VERSION, command, exit_code: None, body: &body })
        }
        Ran::Kill { netns, filter, report } => {
            #[derive(Serialize)]
            struct Kill<'a> {
                netns: &'a Option<String>,
                filter: &'a Filter,
                #[serde(flatten)]
                report: &'a KillReport,
                #[serde(skip_serializing_if = "Option::is_none")]
                error: Option<&'a str>,
            }
            // The report carries its own error; a late one (audit end, metrics) is added here.
            let late = error.filter(|_| report.report.error.is_none());
            let body = Kill { netns, filter, report, error: late };
            json(out, &Doc { schema_version: SCHEMA_VERSION, command, exit_code: Some(code), body: &body })
        }
        Ran::Haproxy(r) => {
            #[derive(Serialize)]
            struct Haproxy<'a> {
                #[serde(flatten)]
                report: &'a haproxy::Report,
                #[serde(skip_serializing_if = "Option::is_none")]
                error: Option<&'a str>,
            }
            let late = error.filter(|_| r.error.is_none());
            let body = Haproxy { report: r, error: late };
            json(out, &Doc { schema_version: SCHEMA_VERSION, command, exit_code: Some(code), body: &body })
        }
        Ran::Check(r) => json(out, &Doc { schema_version: SCHEMA_VERSION, command, exit_code: None, body: r }),
        Ran::Text(bytes) => out.write_all(bytes),
        Ran::Written(files) => {
            let body = json!({ "files": files });
            json(out, &Doc { schema_version: SCHEMA_VERSION, command, exit_code: None, body: &body })
        }
        Ran::Failed(e) => error_doc(out, command, error.unwrap_or("error"), e.kind()),
    }
}

/// The document printed when a command fails before doing anything (exit 2).
pub fn error_doc(out: &mut dyn Write, command: &str, error: &str, kind: &str) -> io::Result<()> {
    let mut doc = json!({
        "schema_version": SCHEMA_VERSION,
        "command": command,
        "exit_code": 2,
        "error": error,
        "error_kind": kind,
    });
    if command == "haproxy" {
        // Nothing was sent: the server's state in HAProxy is as it was.
        doc["commands_sent"] = json!([]);
        doc["server_left_in_maintenance"] = json!(false);
    }
    json(out, &doc)
}

fn human(out: &mut dyn Write, o: &Ran) -> io::Result<()> {
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
    const HEADER: [&str; 8] =
        ["Action", "State", "Local Address:Port", "Peer Address:Port", "UID", "Inode", "Cookie", "Process"];
    // Column widths from the first rows only: a table of 100k sockets is then
    // formatted once, not twice (a later, wider cell just pushes its row on).
    const WIDTH_SAMPLE: usize = 4096;
    let with_process = rows.clone().any(|(_, s)| s.owners.is_some());
    let first = if tagged { 0 } else { 1 };
    let last = if with_process { 8 } else { 7 };
    let mut buf = String::new();
    let cell = |i: usize, tag: Option<&str>, s: &TcpSocket, buf: &mut String| {
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
    for (tag, s) in rows.clone().take(WIDTH_SAMPLE) {
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
    writeln!(out, "{}", summary_line(k))
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

fn write_haproxy(out: &mut dyn Write, r: &haproxy::Report) -> io::Result<()> {
    let pids: Vec<String> = r.pids.iter().map(u32::to_string).collect();
    let master = r.master_pid.map_or(String::new(), |m| format!(", master {m}"));
    writeln!(out, "HAProxy {} (pids {}{master}; answering {})", r.haproxy_version, pids.join(", "), r.answering_pid)?;
    writeln!(out, "server {} at {}", r.server.as_deref().unwrap_or("(unnamed)"), r.server_addr)?;
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
    let head = match (r.dry_run, r.clean) {
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
