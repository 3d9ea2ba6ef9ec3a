//! A Prometheus node_exporter textfile (`--metrics-file`), written atomically:
//! a temporary file in the same directory, synced, then renamed over the target.

use std::fmt::Write as _;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};

/// The numbers of one run.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    /// `kill` or `haproxy`.
    pub command: &'static str,
    pub matched: usize,
    pub destroyed: usize,
    pub already_gone: usize,
    pub failed: usize,
    pub remaining: usize,
    pub duration: Duration,
    pub exit_code: i32,
}

/// The textfile for `m`.
pub fn render(m: &Metrics) -> String {
    let mut out = String::new();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let gauges: [(&str, &str, f64); 8] = [
        ("sockkill_sockets_matched", "Sockets matching the filter at the first dump.", m.matched as f64),
        ("sockkill_sockets_destroyed", "Sockets destroyed.", m.destroyed as f64),
        ("sockkill_sockets_already_gone", "Sockets gone before their destroy arrived.", m.already_gone as f64),
        ("sockkill_sockets_failed", "Destroys the kernel refused or did not acknowledge.", m.failed as f64),
        ("sockkill_sockets_remaining", "Sockets still matching at the end.", m.remaining as f64),
        ("sockkill_duration_seconds", "Wall time of the run.", m.duration.as_secs_f64()),
        ("sockkill_exit_code", "Exit code of the run (0 clean, 1 sockets remain).", f64::from(m.exit_code)),
        ("sockkill_last_run_timestamp_seconds", "When the run ended (Unix time).", now as f64),
    ];
    for (name, help, value) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{command=\"{}\"}} {value}", m.command);
    }
    out
}

/// Writes `m` to `path` atomically.
pub fn write(path: &Path, m: &Metrics) -> Result<()> {
    let fail = |e: std::io::Error| Error::Other(format!("writing metrics file {}: {e}", path.display()));
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().ok_or_else(|| fail(std::io::Error::other("not a file path")))?;
    let tmp = dir.join(format!(".{}.{}.tmp", name.to_string_lossy(), std::process::id()));
    let mut f = std::fs::File::create(&tmp).map_err(fail)?;
    f.write_all(render(m).as_bytes()).and_then(|_| f.sync_all()).map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        fail(e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_gauges_and_writes_atomically() {
        let m =
            Metrics { command: "kill", matched: 4, destroyed: 3, already_gone: 1, remaining: 0, ..Metrics::default() };
        let text = render(&m);
        assert!(
            text.contains("# TYPE sockkill_sockets_destroyed gauge\nsockkill_sockets_destroyed{command=\"kill\"} 3\n")
        );
        assert!(text.contains("sockkill_sockets_matched{command=\"kill\"} 4"));
        let dir = std::env::temp_dir().join(format!("sockkill-metrics-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sockkill.prom");
        write(&path, &m).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 24);
        // Nothing else (no temporary file) is left in the directory.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        assert!(write(&dir.join("missing/x.prom"), &m).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
