//! A run never loses its report: a watched process that exits, an error after
//! the first destroy, a signal in the middle — the report is printed, the
//! records are written, and the exit code follows the rule (0 clean, 1 something
//! remains or the run stopped after destroying, 2 nothing was destroyed).

#[macro_use]
mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// `--pid P --for 1s`, where P exits once its connections die: not an error;
/// the report says P went away, and every connection P had was destroyed.
#[test]
fn a_watched_process_that_exits_is_not_an_error() {
    require!(Netns);
    in_private_netns(|| {
        let up = Echo::start("127.0.0.2:0");
        let port = up.addr.port();
        // Three connections; the process ends when the first read fails.
        let script = format!(
            "exec 3<>/dev/tcp/127.0.0.2/{port} 4<>/dev/tcp/127.0.0.2/{port} 5<>/dev/tcp/127.0.0.2/{port}; echo ready; cat <&3; exit 0"
        );
        let mut child =
            Command::new("bash").args(["-c", &script]).stdout(Stdio::piped()).stdin(Stdio::null()).spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready");
        let pid = child.id();
        let held = sockkill::procfs::socket_inodes(pid).unwrap();
        let theirs: BTreeSet<u64> =
            dump_dst("127.0.0.2").iter().filter(|s| held.contains(&s.inode)).map(|s| s.cookie()).collect();
        assert_eq!(theirs.len(), 3);
        let guard = ChildGuard(child);

        let out =
            sockkill_in_netns(&["kill", "--json", "--dst", "127.0.0.2", "--pid", &pid.to_string(), "--for", "1s"]);
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        let doc = json(&out);
        let destroyed = destroyed_cookies(&doc, "sockets");
        assert_eq!(destroyed, theirs, "{doc}");
        assert_eq!(doc["processes_exited"], serde_json::json!([pid]), "{doc}");
        assert_eq!(doc["summary"]["remaining"], 0);
        assert!(dump_dst("127.0.0.2").is_empty());
        drop(guard);
    });
}

/// An audit log that fills up after the first destroys (a tiny tmpfs in a
/// private mount namespace): the run stops there, exit 1, and the report says
/// exactly what was destroyed, as the kernel confirms; the metrics are written.
#[test]
fn an_error_after_the_first_destroy_keeps_the_report() {
    require!(Root);
    in_private_netns(|| {
        let up = Echo::start("127.0.0.2:0");
        let conns: Vec<std::net::TcpStream> =
            (0..1200).map(|_| std::net::TcpStream::connect(up.addr).unwrap()).collect();
        let before: BTreeSet<u64> = dump_dst("127.0.0.2").iter().map(|s| s.cookie()).collect();
        assert_eq!(before.len(), 1200);
        let dir = std::env::temp_dir().join(format!("sockkill-full-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("mnt")).unwrap();
        let prom = dir.join("sockkill.prom");
        assert_not_root_netns();
        // 16 KiB: the start event fits, a batch of 256 destroyed lines does not.
        let script = format!(
            "mount -t tmpfs -o size=16k sockkill-test {mnt} && exec \"$0\" kill --json --max 0 --dst 127.0.0.2 --audit-log {mnt}/audit.log --metrics-file {prom}",
            mnt = dir.join("mnt").display(),
            prom = prom.display()
        );
        let out = Command::new("unshare").args(["-m", "sh", "-c", &script, BIN]).stdin(Stdio::null()).output().unwrap();
        assert_eq!(code(&out), 1, "{}", stderr(&out));
        let doc = json(&out);
        assert!(doc["error"].as_str().is_some_and(|e| e.contains("audit log")), "{doc}");
        assert!(stderr(&out).contains("audit log"), "{}", stderr(&out));
        let destroyed = destroyed_cookies(&doc, "sockets");
        assert!(!destroyed.is_empty() && destroyed.len() < 1200, "stopped part-way: {}", destroyed.len());
        // The kernel agrees: exactly the reported sockets are gone.
        let left: BTreeSet<u64> = dump_dst("127.0.0.2").iter().map(|s| s.cookie()).collect();
        let gone: BTreeSet<u64> = before.difference(&left).copied().collect();
        assert_eq!(gone, destroyed);
        assert_eq!(doc["summary"]["destroyed"].as_u64().unwrap() as usize, destroyed.len());
        let metrics = std::fs::read_to_string(&prom).unwrap();
        assert!(metrics.contains("sockkill_exit_code{command=\"kill\",verdict=\"failed\"} 1"), "{metrics}");
        assert!(metrics.contains(&format!("sockkill_sockets_destroyed{{command=\"kill\"}} {}", destroyed.len())));
        drop(conns);
        let _ = std::fs::remove_dir_all(&dir);
    });
}

/// SIGTERM in the middle of a `--for` window: exit 1, the partial report
/// (interrupted, never clean), printed at once.
#[test]
fn sigterm_during_a_window_prints_the_partial_report() {
    require!(Netns);
    in_private_netns(|| {
        let up = Echo::start("127.0.0.2:0");
        let mut conns: Vec<Conn> = (0..5).map(|_| Conn::open(up.addr)).collect();
        assert_not_root_netns();
        let child = Command::new(BIN)
            .args(["kill", "--json", "--dst", "127.0.0.2", "--for", "3s"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        for c in &mut conns {
            wait_until(Duration::from_secs(5), "the first pass", || c.ended().is_some());
        }
        let sent = Instant::now();
        kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(sent.elapsed() < Duration::from_secs(2), "{:?}", sent.elapsed());
        assert_eq!(code(&out), 1, "{}", stderr(&out));
        let doc = json(&out);
        assert_eq!(doc["summary"]["interrupted"], true, "{doc}");
        assert_eq!(doc["summary"]["destroyed"], 5, "{doc}");
        assert_eq!(doc["exit_code"], 1, "{doc}");
    });
}

/// A SIGTERM before anything could be destroyed (nothing matched yet in the
/// window) ends the run with exit 2: nothing was done.
#[test]
fn a_signal_before_anything_was_destroyed_exits_2() {
    require!(Netns);
    in_private_netns(|| {
        let child = Command::new(BIN)
            .args(["kill", "--json", "--dst", "127.0.0.9", "--for", "10s"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        kill(Pid::from_raw(child.id() as i32), Signal::SIGHUP).unwrap();
        let out = child.wait_with_output().unwrap();
        assert_eq!(code(&out), 2, "{}", stderr(&out));
        assert_eq!(json(&out)["summary"]["interrupted"], true);
    });
}

/// Arguments need not be UTF-8: a path that is not is used as given, and
/// the audit log records the command line lossily (no panic).
#[test]
fn non_utf8_paths_work() {
    require!(Netns);
    in_private_netns(|| {
        use std::os::unix::ffi::OsStringExt;
        let up = Echo::start("127.0.0.2:0");
        let mut c = Conn::open(up.addr);
        let dir = std::env::temp_dir().join(format!("sockkill-utf8-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut name = dir.into_os_string().into_vec();
        name.extend_from_slice(b"/audit-\xff.log");
        let path = std::path::PathBuf::from(std::ffi::OsString::from_vec(name));
        assert_not_root_netns();
        let out = Command::new(BIN)
            .args(["kill", "--dst", "127.0.0.2", "--audit-log"])
            .arg(&path)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        c.assert_killed();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\\u{fffd}") || text.contains('\u{fffd}'), "{text}");
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    });
}

/// Records that cannot be written tell one story with the exit code and the
/// kernel: a read-only metrics directory is found before anything is
/// destroyed (exit 2, every connection still there); stdout on /dev/full
/// after the destroys makes the run `failed` (exit 1) in the metrics and in
/// the audit `end` alike, with the JSON and the human output; a dangling
/// symbolic link as the audit log is refused and creates nothing.
#[test]
fn failing_records_tell_one_story() {
    require!(Root);
    in_private_netns(|| {
        let up = Echo::start("127.0.0.2:0");
        let dir = std::env::temp_dir().join(format!("sockkill-records-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("ro")).unwrap();
        assert_not_root_netns();

        let conns: Vec<std::net::TcpStream> = (0..10).map(|_| std::net::TcpStream::connect(up.addr).unwrap()).collect();
        let script = format!(
            "mount -t tmpfs -o ro sockkill-ro {ro} && exec \"$0\" kill --json --dst 127.0.0.2 --metrics-file {ro}/x.prom",
            ro = dir.join("ro").display()
        );
        let out = Command::new("unshare").args(["-m", "sh", "-c", &script, BIN]).stdin(Stdio::null()).output().unwrap();
        assert_eq!(code(&out), 2, "{}", stderr(&out));
        assert_eq!(json(&out)["error_kind"], "metrics_file");
        assert_eq!(dump_dst("127.0.0.2").len(), 10, "nothing may be destroyed");

        let dangling = dir.join("audit-link");
        std::os::unix::fs::symlink(dir.join("elsewhere.log"), &dangling).unwrap();
        let out = sockkill_in_netns(&["kill", "--dst", "127.0.0.2", "--audit-log", &dangling.to_string_lossy()]);
        assert_eq!(code(&out), 2, "{}", stderr(&out));
        assert!(stderr(&out).contains("symbolic link"), "{}", stderr(&out));
        assert!(!dir.join("elsewhere.log").exists());
        assert_eq!(dump_dst("127.0.0.2").len(), 10);
        drop(conns);

        for json_flag in [true, false] {
            let conns: Vec<std::net::TcpStream> =
                (0..10).map(|_| std::net::TcpStream::connect(up.addr).unwrap()).collect();
            let (audit, prom) = (dir.join(format!("a-{json_flag}.log")), dir.join(format!("m-{json_flag}.prom")));
            let mut args = vec!["kill", "--dst", "127.0.0.2"];
            if json_flag {
                args.push("--json");
            }
            let (a, p) = (audit.to_string_lossy().into_owned(), prom.to_string_lossy().into_owned());
            args.extend(["--audit-log", &a, "--metrics-file", &p]);
            let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
            let out = Command::new(BIN).args(&args).stdin(Stdio::null()).stdout(full).output().unwrap();
            assert_eq!(code(&out), 1, "destroyed, then the report failed: {}", stderr(&out));
            assert!(dump_dst("127.0.0.2").is_empty(), "the kernel: every connection was destroyed");
            let metrics = std::fs::read_to_string(&prom).unwrap();
            assert!(metrics.contains("sockkill_exit_code{command=\"kill\",verdict=\"failed\"} 1"), "{metrics}");
            assert!(metrics.contains("sockkill_clean{command=\"kill\"} 0"), "{metrics}");
            let log = std::fs::read_to_string(&audit).unwrap();
            let end: serde_json::Value = serde_json::from_str(log.lines().last().unwrap()).unwrap();
            assert_eq!(
                (end["event"].as_str(), end["exit_code"].as_i64(), end["verdict"].as_str()),
                (Some("end"), Some(1), Some("failed")),
                "{log}"
            );
            assert!(end["error"].as_str().is_some_and(|e| e.contains("writing output")), "{end}");
            drop(conns);
        }
        let _ = std::fs::remove_dir_all(&dir);
    });
}

/// One SIGTERM at a seeded random moment of a kill of 10,000 connections
/// (before the first look, during the destroys, after them): whatever the
/// moment, the exit code, the JSON, the metrics and the audit log agree with
/// each other and with the kernel — what the report says remains is what
/// the kernel still holds (never `null` after destroys), what it says was
/// destroyed is what the kernel lost, and no audit line is torn.
#[test]
fn one_signal_at_random_moments_tells_the_kernels_story() {
    require!(Root);
    in_private_netns(|| {
        let dir = std::env::temp_dir().join(format!("sockkill-sig-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut seed: u64 = 0x5eed_2023;
        for trial in 0..6 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let delay = Duration::from_millis(seed % 60);
            let farm = common::farm::Farm::build(&[common::farm::Group::new("127.50.0.1", 10_000)]).expect("farm");
            let before = dump_dst("127.50.0.1").len();
            assert_eq!(before, 10_000);
            let (audit, prom) = (dir.join(format!("a{trial}.log")), dir.join(format!("m{trial}.prom")));
            assert_not_root_netns();
            let child = Command::new(BIN)
                .args(["kill", "--json", "--max", "0", "--dst", "127.50.0.1"])
                .arg("--audit-log")
                .arg(&audit)
                .arg("--metrics-file")
                .arg(&prom)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                // Not read until the end: a pipe would fill with log lines and stall the run.
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            std::thread::sleep(delay);
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            let out = child.wait_with_output().unwrap();
            let (rc, doc) = (code(&out), json(&out));
            let left = dump_dst("127.50.0.1").len();
            let what = format!("trial {trial}, SIGTERM after {delay:?}: exit {rc}, {left} left; {}", doc["summary"]);
            let log = std::fs::read_to_string(&audit).unwrap_or_default();
            let lines: Vec<serde_json::Value> = log
                .lines()
                .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("torn line {l:?}: {e}")))
                .collect();
            let metrics = std::fs::read_to_string(&prom).unwrap();
            assert!(metrics.contains("sockkill_exit_code{command=\"kill\",verdict="), "{metrics}");
            assert!(metrics.contains(&format!("}} {rc}\n")), "{what}");
            if let Some(end) = lines.last().filter(|l| l["event"] == "end") {
                assert_eq!(end["exit_code"].as_i64(), Some(i64::from(rc)), "{what}\n{log}");
            }
            let destroyed_lines = lines.iter().filter(|l| l["event"] == "destroyed").count();
            eprintln!("trial {trial}: SIGTERM after {delay:?}: exit {rc}, {left} of {before} left");
            match rc {
                2 => assert_eq!(left, before, "exit 2 means nothing destroyed: {what}"),
                0 | 1 => {
                    let s = &doc["summary"];
                    assert_eq!(s["remaining"].as_u64(), Some(left as u64), "remaining is the kernel's: {what}");
                    assert_eq!(s["destroyed"].as_u64(), Some((before - left) as u64), "{what}");
                    assert_eq!(destroyed_lines, before - left, "one audit line per destroyed socket: {what}");
                    assert!(
                        metrics.contains(&format!("sockkill_sockets_remaining{{command=\"kill\"}} {left}\n")),
                        "{metrics}"
                    );
                    assert_eq!(rc == 0, left == 0 && s["verdict"] == "clean", "{what}");
                    assert_eq!(s["clean"], rc == 0, "{what}");
                }
                _ => panic!("exit {rc}: {what}"),
            }
            drop(farm);
        }
        let _ = std::fs::remove_dir_all(&dir);
    });
}
