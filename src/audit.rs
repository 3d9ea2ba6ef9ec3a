//! A durable audit trail: one JSON line per destroyed socket, appended to a
//! file and synced before the command prints its summary (stderr alone is
//! lost under cron or Ansible).

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use serde::Serialize;

use crate::engine::{Acted, Outcome};
use crate::error::{Error, Result};
use crate::procfs::Owner;

/// An open audit log, shared by the threads that destroy.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    file: Mutex<BufWriter<File>>,
    command: String,
    netns: Option<String>,
}

#[derive(Serialize)]
struct Line<'a> {
    time: String,
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

impl AuditLog {
    /// Opens `path` for appending (created 0600 if missing). `command` is the
    /// command line to record with every line.
    pub fn open(path: &Path, command: String, netns: Option<String>) -> Result<AuditLog> {
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| Error::Other(format!("cannot open audit log {}: {e}", path.display())))?;
        Ok(AuditLog { path: path.to_path_buf(), file: Mutex::new(BufWriter::new(file)), command, netns })
    }

    fn fail(&self, e: io::Error) -> Error {
        Error::Other(format!("writing audit log {}: {e} (stopped before destroying more)", self.path.display()))
    }

    /// Appends a line for every destroyed socket in `acted`.
    pub(crate) fn record(&self, acted: &[Acted]) -> Result<()> {
        let time = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        let mut w = self.file.lock().unwrap_or_else(|p| p.into_inner());
        for a in acted.iter().filter(|a| a.outcome == Outcome::Destroyed) {
            let s = &a.socket;
            let line = Line {
                time: time.clone(),
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
            serde_json::to_writer(&mut *w, &line).map_err(|e| self.fail(io::Error::other(e)))?;
            w.write_all(b"\n").map_err(|e| self.fail(e))?;
        }
        Ok(())
    }

    /// Writes everything out and syncs it to disk.
    pub fn sync(&self) -> Result<()> {
        let mut w = self.file.lock().unwrap_or_else(|p| p.into_inner());
        w.flush().map_err(|e| self.fail(e))?;
        w.get_ref().sync_data().map_err(|e| self.fail(e))
    }
}
