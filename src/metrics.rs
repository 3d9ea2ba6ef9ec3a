//! A Prometheus node_exporter textfile (`--metrics-file`), written atomically:
//! a fresh temporary file (unpredictable name, created exclusively) in the
//! target's directory, synced, renamed over the target, and the directory
//! synced. The target is checked before a run starts: only a missing path or
//! a regular file is ever replaced.

use std::fmt::Write as _;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::engine::Verdict;
use crate::error::{Error, Result};

/// The numbers of one run.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    /// `kill` or `haproxy`.
    pub command: &'static str,
    /// The server a `haproxy` run was about (`backend/server` or `IP:PORT`): a
    /// label, so that one textfile per server can sit in the same directory.
    pub server: Option<String>,
    /// Targets at the first look.
    pub matched: usize,
    /// Sockets destroyed.
    pub destroyed: usize,
    /// Sockets gone before their destroy arrived.
    pub already_gone: usize,
    /// Destroys refused, unacknowledged, or that did not reach a live socket.
    pub failed: usize,
    /// Targets at the end; `None` when not verified (the gauge is then left out).
    pub remaining: Option<usize>,
    /// Sockets left alone because they could not be attributed (HAProxy mode).
    pub ambiguous: usize,
    /// The run's verdict (`None` for a run without one): `sockkill_clean` and a
    /// `verdict` label on `sockkill_exit_code`.
    pub verdict: Option<Verdict>,
    /// The lingering sweep (`haproxy --lingering`): a `mode="lingering"` label on
    /// every gauge, and one `sockkill_lingering_sockets` series per finding.
    pub lingering: Option<Vec<LingeringSeries>>,
    /// Wall time.
    pub duration: Duration,
    /// The run's exit code.
    pub exit_code: i32,
}

/// One finding of the lingering sweep: connections of one server at one address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LingeringSeries {
    /// The backend.
    pub backend: String,
    /// The server.
    pub server: String,
    /// The connections' peer address.
    pub address: String,
    /// `gone`, `moved` or `maint`.
    pub class: &'static str,
    /// How many connections the sweep found.
    pub sockets: usize,
}

/// The textfile for `m`.
pub fn render(m: &Metrics) -> String {
    let mut out = String::new();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let clean = m.verdict.map(|v| if v.clean() { 1.0 } else { 0.0 });
    let gauges: [(&str, &str, Option<f64>); 10] = [
        ("sockkill_sockets_matched", "Sockets matching the filter at the first look.", Some(m.matched as f64)),
        ("sockkill_sockets_destroyed", "Sockets destroyed.", Some(m.destroyed as f64)),
        ("sockkill_sockets_already_gone", "Sockets gone before their destroy arrived.", Some(m.already_gone as f64)),
        (
            "sockkill_sockets_failed",
            "Destroys refused, unacknowledged, or not reaching a live socket.",
            Some(m.failed as f64),
        ),
        ("sockkill_sockets_remaining", "Sockets still matching at the end.", m.remaining.map(|r| r as f64)),
        (
            "sockkill_sockets_ambiguous",
            "Sockets left alone at the end because their owner could not tell whose they are.",
            Some(m.ambiguous as f64),
        ),
        (
            "sockkill_clean",
            "1 when nothing matching remains and nothing is ambiguous (the verdict is clean), else 0.",
            clean,
        ),
        ("sockkill_duration_seconds", "Wall time of the run.", Some(m.duration.as_secs_f64())),
        (
            "sockkill_exit_code",
            "Exit code of the run (0 clean, 1 sockets remain or stopped after acting, 2 error with nothing destroyed).",
            Some(f64::from(m.exit_code)),
        ),
        ("sockkill_last_run_timestamp_seconds", "When the run ended (Unix time).", Some(now as f64)),
    ];
    let mut labels = format!("command=\"{}\"", m.command);
    if let Some(server) = &m.server {
        labels += &format!(",server=\"{}\"", escape_label(server));
    }
    if m.lingering.is_some() {
        labels += ",mode=\"lingering\"";
    }
    for (name, help, value) in gauges {
        if let Some(value) = value {
            // The verdict's word rides on the exit code (one series per run, never two).
            let extra = match (name, m.verdict) {
                ("sockkill_exit_code", Some(v)) => format!(",verdict=\"{}\"", v.name()),
                _ => String::new(),
            };
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{{labels}{extra}}} {value}");
        }
    }
    if let Some(found) = m.lingering.as_ref().filter(|f| !f.is_empty()) {
        let name = "sockkill_lingering_sockets";
        let _ = writeln!(
            out,
            "# HELP {name} Connections HAProxy holds to a server gone from its configuration, moved, or in maintenance, when the sweep looked.\n# TYPE {name} gauge"
        );
        for l in found {
            let _ = writeln!(
                out,
                "{name}{{command=\"{}\",backend=\"{}\",server=\"{}\",address=\"{}\",class=\"{}\"}} {}",
                m.command,
                escape_label(&l.backend),
                escape_label(&l.server),
                escape_label(&l.address),
                l.class,
                l.sockets
            );
        }
    }
    out
}

/// A label value as the text exposition format wants it.
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn dir_of(path: &Path) -> &Path {
    path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// Checks, before anything is done, that `path` can be replaced by a textfile:
/// its directory exists, and the path is missing or a regular file (never a
/// device, FIFO, socket, directory or symbolic link: `/dev/null` stays `/dev/null`).
pub fn check_target(path: &Path) -> Result<()> {
    let fail = |reason: String| Error::MetricsPath { path: path.to_path_buf(), reason };
    if path.file_name().is_none() {
        return Err(fail("not a file path".into()));
    }
    let dir = dir_of(path);
    match std::fs::metadata(dir) {
        Ok(d) if d.is_dir() => {}
        Ok(_) => return Err(fail(format!("{} is not a directory", dir.display()))),
        Err(e) => return Err(fail(format!("directory {}: {e}", dir.display()))),
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_file() => Ok(()),
        Ok(m) => Err(fail(format!("is {}, not a regular file: refusing to replace it", crate::sys::file_kind(&m)))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(fail(e.to_string())),
    }
}

/// Checks, before anything is done, that `path` can be written the way
/// [`write()`] writes it: [`check_target`], then a probe file of a textfile's
/// size created, written and synced in its directory (and removed), so a
/// read-only filesystem, a full disk or a directory without write permission
/// stops the run while nothing is changed yet.
pub fn probe(path: &Path) -> Result<()> {
    check_target(path)?;
    let fail = |source: std::io::Error| Error::Metrics { path: path.to_path_buf(), source };
    let mut tmp =
        tempfile::Builder::new().prefix(".sockkill-").suffix(".probe.tmp").tempfile_in(dir_of(path)).map_err(fail)?;
    tmp.write_all(render(&Metrics::default()).as_bytes()).map_err(fail)?;
    tmp.as_file().sync_data().map_err(fail)
}

/// Writes `m` to `path` atomically. The file keeps the mode of the one it
/// replaces, or gets 0644 (node_exporter must read it).
pub fn write(path: &Path, m: &Metrics) -> Result<()> {
    check_target(path)?;
    let fail = |source: std::io::Error| Error::Metrics { path: path.to_path_buf(), source };
    let dir = dir_of(path);
    let mode = std::fs::metadata(path).map(|m| m.permissions().mode() & 0o7777).unwrap_or(0o644);
    // An unpredictable name, created with O_EXCL: nothing planted in a shared
    // directory is followed. Dropped (and removed) on any failure below.
    let mut tmp = tempfile::Builder::new().prefix(".sockkill-").suffix(".prom.tmp").tempfile_in(dir).map_err(fail)?;
    tmp.write_all(render(m).as_bytes()).map_err(fail)?;
    tmp.as_file().set_permissions(std::fs::Permissions::from_mode(mode)).map_err(fail)?;
    tmp.as_file().sync_all().map_err(fail)?;
    tmp.persist(path).map_err(|e| fail(e.error))?;
    // The rename itself is durable once the directory is synced.
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("sockkill-metrics-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn renders_one_series_per_lingering_server() {
        let series = |server: &str, class| LingeringSeries {
            backend: "be".into(),
            server: server.into(),
            address: "10.0.0.7:80".into(),
            class,
            sockets: 3,
        };
        let m = Metrics {
            command: "haproxy",
            lingering: Some(vec![series("web\"3", "gone"), series("web4", "moved")]),
            ..Metrics::default()
        };
        let text = render(&m);
        assert!(text.contains("sockkill_sockets_matched{command=\"haproxy\",mode=\"lingering\"} 0\n"), "{text}");
        assert!(text.contains(
            "sockkill_lingering_sockets{command=\"haproxy\",backend=\"be\",server=\"web\\\"3\",address=\"10.0.0.7:80\",class=\"gone\"} 3\n"
        ), "{text}");
        assert_eq!(text.matches("# TYPE sockkill_lingering_sockets gauge").count(), 1);
        // Nothing lingers: no series (an alert on `> 0` stays quiet), the mode label stays.
        let none = render(&Metrics { command: "haproxy", lingering: Some(Vec::new()), ..Metrics::default() });
        assert!(!none.contains("sockkill_lingering_sockets") && none.contains("mode=\"lingering\""), "{none}");
    }

    #[test]
    fn renders_gauges_and_writes_atomically() {
        let m = Metrics {
            command: "kill",
            matched: 4,
            destroyed: 3,
            already_gone: 1,
            remaining: Some(0),
            ..Metrics::default()
        };
        let text = render(&m);
        assert!(
            text.contains("# TYPE sockkill_sockets_destroyed gauge\nsockkill_sockets_destroyed{command=\"kill\"} 3\n")
        );
        assert!(text.contains("sockkill_sockets_matched{command=\"kill\"} 4"));
        assert!(text.contains("sockkill_sockets_remaining{command=\"kill\"} 0"));
        let unverified = render(&Metrics { remaining: None, ..m.clone() });
        assert!(!unverified.contains("sockkill_sockets_remaining"), "{unverified}");
        let labelled = render(&Metrics { command: "haproxy", server: Some("be/\"s1\"".into()), ..m.clone() });
        assert!(labelled.contains("sockkill_exit_code{command=\"haproxy\",server=\"be/\\\"s1\\\"\"} 0"), "{labelled}");
        // No verdict (a run that never got one): no `sockkill_clean`.
        assert!(!text.contains("sockkill_clean"), "{text}");
        // The verdict: `sockkill_clean` and a label on the exit code, the same story.
        let clean = render(&Metrics { verdict: Some(Verdict::Clean), ..m.clone() });
        assert!(clean.contains("sockkill_clean{command=\"kill\"} 1\n"), "{clean}");
        assert!(clean.contains("sockkill_exit_code{command=\"kill\",verdict=\"clean\"} 0\n"), "{clean}");
        let amb = render(&Metrics { verdict: Some(Verdict::Ambiguous), ambiguous: 2, exit_code: 1, ..m.clone() });
        assert!(amb.contains("sockkill_clean{command=\"kill\"} 0\n"), "{amb}");
        assert!(amb.contains("sockkill_sockets_ambiguous{command=\"kill\"} 2\n"), "{amb}");
        assert!(amb.contains("sockkill_exit_code{command=\"kill\",verdict=\"ambiguous\"} 1\n"), "{amb}");

        let dir = scratch("write");
        let path = dir.join("sockkill.prom");
        write(&path, &m).unwrap();
        // Nine gauges of three lines (`sockkill_clean` only with a verdict).
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 27);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o644);
        // The mode of a file it replaces is kept.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        write(&path, &m).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o640);
        // Nothing else (no temporary file) is left in the directory.
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn refuses_what_it_must_not_replace() {
        let dir = scratch("refuse");
        assert!(check_target(&dir.join("missing/x.prom")).is_err());
        assert!(check_target(&dir).is_err()); // a directory
        std::fs::write(dir.join("target"), "x").unwrap();
        std::os::unix::fs::symlink(dir.join("target"), dir.join("link")).unwrap();
        assert!(check_target(&dir.join("link")).unwrap_err().to_string().contains("symbolic link"));
        nix::unistd::mkfifo(&dir.join("fifo"), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        assert!(check_target(&dir.join("fifo")).unwrap_err().to_string().contains("FIFO"));
        assert!(check_target(Path::new("/dev/null")).unwrap_err().to_string().contains("character device"));
        assert!(check_target(&dir.join("target")).is_ok());
        assert!(probe(&dir.join("target")).is_ok());
        // The probe leaves nothing behind.
        assert!(std::fs::read_dir(&dir).unwrap().flatten().all(|e| !e.file_name().to_string_lossy().contains("probe")));
        assert!(check_target(&dir.join("new.prom")).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
