//! The JSON document on stdout (`--json`, `schema_version` 1).

use std::io::{self, Write};

use serde::Serialize;
use serde_json::{json, Value};
use sockkill::filter::Filter;
use sockkill::{haproxy, KillReport, TcpSocket};

use crate::cli::exec::Ran;

/// Version of the JSON documents; bumped only on incompatible changes.
pub const SCHEMA_VERSION: u32 = 1;

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

pub(super) fn document(
    out: &mut dyn Write,
    command: &'static str,
    o: &Ran,
    code: u8,
    error: Option<&str>,
) -> io::Result<()> {
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
