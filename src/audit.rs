//! A durable audit trail (`--audit-log`): JSON lines appended to a file.
//!
//! Events: `start` (written and synced before anything is destroyed, so an
//! unwritable log stops the run while nothing is changed yet), `destroyed`
//! (one per destroyed socket, written after every batch of destroys), and
//! `end` (the run's counts and exit code). The file is synced at the start,
//! after every destroy pass and at the end: stderr alone is lost under cron or
//! Ansible.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use serde::Serialize;
use serde_json::json;

use crate::diag::Outcome;
use crate::error::{Error, Result};
use crate::procfs::Owner;
use crate::socket::TcpSocket;

/// Lines are written in batches of about this many bytes, each batch whole lines.
const WRITE_CHUNK: usize = 64 * 1024;

/// An open audit log, shared by the threads that destroy.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    /// Written whole lines at a time (one `write` per batch of whole lines,
    /// O_APPEND): a process killed mid-run leaves no torn line.
    file: Mutex<File>,
    command: String,
    netns: Option<String>,
}

#[derive(Serialize)]
struct Destroyed<'a> {
    time: &'a str,
    event: &'static str,
    local: std::net::SocketAddr,
    peer: std::net::SocketAddr,
    state: &'static str,
    cookie: u64,
    inode: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    owners: Option<&'a [Owner]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    netns: Option<&'a str>,
    command: &'a str,
}

fn now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// Checks that `path` can be an audit log without opening it: it is missing
/// (it will be created) or a regular file. A FIFO, device or directory is
/// refused before anything could block on it.
pub fn check_path(path: &Path) -> Result<()> {
    let fail = |reason: String| Error::AuditPath { path: path.to_path_buf(), reason };
    // A symbolic link is refused, not followed (as --metrics-file): a dangling
    // one would create the log wherever it points.
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => Err(fail("is a symbolic link: refusing to follow it".into())),
        Ok(m) if m.is_file() => Ok(()),
        Ok(m) => Err(fail(format!("is {}, not a regular file", crate::sys::file_kind(&m)))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
            match std::fs::metadata(dir) {
                Ok(d) if d.is_dir() => Ok(()),
                Ok(_) => Err(fail(format!("{} is not a directory", dir.display()))),
                Err(e) => Err(fail(format!("cannot open: directory {}: {e}", dir.display()))),
            }
        }
        Err(e) => Err(fail(format!("cannot open: {e}"))),
    }
}

impl AuditLog {
    /// Opens `path` for appending (created 0600 if missing), and writes and
    /// syncs the `start` event. `command` is the command line to record with
    /// every line. Errors when the file cannot be opened, is not a regular
    /// file, or the start event cannot be written to disk.
    pub fn open(path: &Path, command: String, netns: Option<String>) -> Result<AuditLog> {
        check_path(path)?;
        let fail = |op: &'static str| move |source| Error::Audit { path: path.to_path_buf(), op, source };
        // Non-blocking: should the path turn into a FIFO after the check, open fails instead of waiting.
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NOFOLLOW)
            .open(path)
            .map_err(fail("cannot open"))?;
        let meta = file.metadata().map_err(fail("stat"))?;
        if !meta.is_file() {
            let reason = format!("is {}, not a regular file", crate::sys::file_kind(&meta));
            return Err(Error::AuditPath { path: path.to_path_buf(), reason });
        }
        let log = AuditLog { path: path.to_path_buf(), file: Mutex::new(file), command, netns };
        let start = json!({
            "time": now(),
            "event": "start",
            "pid": std::process::id(),
            "version": env!("CARGO_PKG_VERSION"),
            "netns": log.netns,
            "command": log.command,
        });
        log.write_line(&start)?;
        log.sync()?;
        Ok(log)
    }

    fn fail(&self, e: impl Into<io::Error>) -> Error {
        Error::Audit { path: self.path.clone(), op: "writing", source: e.into() }
    }

    fn write_line<T: Serialize>(&self, value: &T) -> Result<()> {
        let mut line = serde_json::to_vec(value).map_err(|e| self.fail(e))?;
        line.push(b'\n');
        self.append(&line)
    }

    /// Appends whole lines in one `write` (the file is O_APPEND).
    fn append(&self, lines: &[u8]) -> Result<()> {
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        f.write_all(lines).map_err(|e| self.fail(e))
    }

    /// Appends a `destroyed` line for every destroyed socket of one batch and
    /// writes them to the file.
    pub(crate) fn record<'a>(&self, batch: impl Iterator<Item = (&'a TcpSocket, Outcome)>) -> Result<()> {
        let time = now();
        let mut lines = Vec::new();
        for (s, _) in batch.filter(|(_, o)| *o == Outcome::Destroyed) {
            let line = Destroyed {
                time: &time,
                event: "destroyed",
                local: s.local(),
                peer: s.peer(),
                state: s.state_name(),
                cookie: s.cookie(),
                inode: s.inode,
                owners: s.owners.as_deref(),
                netns: self.netns.as_deref(),
                command: &self.command,
            };
            serde_json::to_writer(&mut lines, &line).map_err(|e| self.fail(e))?;
            lines.push(b'\n');
            // Bounded writes, each of whole lines.
            if lines.len() >= WRITE_CHUNK {
                self.append(&lines)?;
                lines.clear();
            }
        }
        if lines.is_empty() {
            return Ok(());
        }
        self.append(&lines)
    }

    /// Appends the `end` event: the run's exit code, verdict, counts and error.
    pub fn end(
        &self,
        exit_code: i32,
        verdict: Option<&str>,
        summary: &impl Serialize,
        error: Option<&str>,
    ) -> Result<()> {
        let line = json!({
            "time": now(),
            "event": "end",
            "exit_code": exit_code,
            "verdict": verdict,
            "summary": summary,
            "error": error,
            "command": self.command,
        });
        self.write_line(&line)?;
        self.sync()
    }

    /// Syncs what was written to disk.
    pub fn sync(&self) -> Result<()> {
        let f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        f.sync_data().map_err(|e| self.fail(e))
    }
}
