//! `list` and `kill` as library calls: a namespace and a filter in, a report out.
//!
//! This is the entry point for a test in someone else's CI: "cut my service's
//! connections to its database inside this namespace, and tell me exactly
//! what happened".

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::audit::AuditLog;
use crate::cancel::Cancel;
use crate::engine::owners::Holders;
use crate::engine::run::{LiveKernel, Run, WallClock};
use crate::engine::{Class, Classifier, Engine, Policy, Query, RunReport, Verdict};
use crate::error::{Error, Result};
use crate::filter::Filter;
use crate::netns::Netns;
use crate::procfs::{self, Owner};
use crate::socket::TcpSocket;

/// Options of [`kill`].
#[derive(Debug, Clone)]
pub struct KillOptions {
    /// Walk the same path but destroy nothing.
    pub dry_run: bool,
    /// Look again after destroying, to report what still matches.
    pub verify: bool,
    /// Destroy passes before giving up on what still matches.
    pub passes: u32,
    /// Fill in the processes holding each socket (scans /proc).
    pub processes: bool,
    /// Refuse, destroying nothing, when the first look matches more than this.
    pub max: Option<usize>,
    /// Allow a filter that does not narrow anything (see [`Filter::is_catch_all`]).
    pub allow_catch_all: bool,
    /// Keep destroying new matching connections until this long after the
    /// start (`--for`), one kernel-filtered dump per `interval`.
    pub window: Option<Duration>,
    /// Time between looks during the window.
    pub interval: Duration,
    /// Stops the run early when raised (e.g. by SIGINT); `None`: never.
    pub cancel: Option<Cancel>,
    /// Record every destroyed socket here.
    pub audit: Option<Arc<AuditLog>>,
}

impl Default for KillOptions {
    fn default() -> Self {
        KillOptions {
            dry_run: false,
            verify: true,
            passes: 3,
            processes: false,
            max: None,
            allow_catch_all: false,
            window: None,
            interval: crate::defaults::INTERVAL,
            cancel: None,
            audit: None,
        }
    }
}

/// The result of [`kill`].
#[derive(Debug, Serialize)]
pub struct KillReport {
    /// What the run did, and its verdict.
    #[serde(flatten)]
    pub report: RunReport,
    /// Processes named with `--pid` that exited during the run (they hold nothing).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub processes_exited: Vec<u32>,
}

impl KillReport {
    /// The run's verdict (exit code, `clean`).
    pub fn verdict(&self) -> Verdict {
        self.report.verdict()
    }
}

/// A kill's report reads as the run's (`report.summary`, `report.sockets`),
/// as its JSON does: the run report is flattened into it.
impl std::ops::Deref for KillReport {
    type Target = RunReport;

    fn deref(&self) -> &RunReport {
        &self.report
    }
}

/// Classifies by owner: with `pids`, only sockets those processes hold are
/// targets; with `processes`, every socket's holders are looked up (once per inode).
#[derive(Debug, Default)]
pub(crate) struct OwnerClassifier {
    holders: Option<Holders>,
    processes: bool,
    known: HashMap<u32, Box<[Owner]>>,
}

impl OwnerClassifier {
    /// A classifier for `filter.pids` (errors when one of them does not exist) that
    /// also looks up every socket's owners when `processes` is set.
    pub fn new(filter: &Filter, processes: bool) -> Result<OwnerClassifier> {
        let holders = (!filter.pids.is_empty()).then(|| Holders::new(&filter.pids)).transpose()?;
        Ok(OwnerClassifier { holders, processes, known: HashMap::new() })
    }

    /// Processes that exited during the run.
    pub fn exited(&mut self) -> Vec<u32> {
        self.holders.as_mut().map(|h| h.exited().to_vec()).unwrap_or_default()
    }
}

impl Classifier for OwnerClassifier {
    fn classify(&mut self, sockets: &mut [TcpSocket]) -> Result<Vec<Class>> {
        if let Some(h) = &mut self.holders {
            h.refresh_for(sockets.iter())?;
            return Ok(sockets
                .iter_mut()
                .map(|s| match h.owners(s) {
                    Some(o) => {
                        s.owners = Some(o);
                        Class::Target
                    }
                    None => Class::Ignore,
                })
                .collect());
        }
        if self.processes {
            let unknown: HashSet<u32> =
                sockets.iter().map(|s| s.inode).filter(|i| *i != 0 && !self.known.contains_key(i)).collect();
            for (inode, owners) in procfs::owners_of(&unknown) {
                self.known.insert(inode, owners.into_boxed_slice());
            }
            for s in sockets.iter_mut() {
                s.owners = Some(self.known.get(&s.inode).cloned().unwrap_or_default());
            }
        }
        Ok(vec![Class::Target; sockets.len()])
    }
}

/// Lists the sockets matching `filter` in `netns` (or the calling thread's
/// namespace), with their owners when `processes` is set. Read-only.
pub fn list(netns: Option<&Netns>, filter: Filter, processes: bool) -> Result<Vec<TcpSocket>> {
    let mut classifier = OwnerClassifier::new(&filter, processes)?;
    let query = Query::new(filter)?;
    let mut engine = Engine::open(netns)?;
    let mut sockets = engine.collect(&query)?;
    let classes = classifier.classify(&mut sockets)?;
    Ok(sockets.into_iter().zip(classes).filter(|(_, c)| *c == Class::Target).map(|(s, _)| s).collect())
}

/// A kill that passed every check that can fail before anything is done:
/// the filter (valid, compiled for the kernel, not a catch-all unless
/// allowed) and the options, turned into the loop's policy once.
#[derive(Debug)]
pub struct KillPlan {
    query: Query,
    policy: Policy,
    options: KillOptions,
}

impl KillPlan {
    /// Checks `filter` and `options` (see [`kill`] for what is refused).
    pub fn new(filter: Filter, options: KillOptions) -> Result<KillPlan> {
        if filter.is_catch_all() && !options.allow_catch_all {
            return Err(Error::CatchAll);
        }
        if options.window.is_some_and(|w| w.is_zero()) || options.interval.is_zero() {
            return Err(Error::Usage("the --for window and the interval must be longer than 0".into()));
        }
        let query = Query::new(filter)?;
        let policy = Policy {
            dry_run: options.dry_run,
            verify: options.verify,
            // Counted from the end of a --for window: inside it, new connections are expected.
            passes: Some(options.passes),
            window: options.window,
            interval: options.interval,
            // A dry run destroys nothing: there is nothing to guard.
            max: options.max.filter(|_| !options.dry_run),
            ..Policy::kill()
        };
        Ok(KillPlan { query, policy, options })
    }

    /// The filter.
    pub fn filter(&self) -> &Filter {
        self.query.filter()
    }

    /// Attaches what stops the run (a signal) and where destroyed sockets are
    /// recorded: decided after the plan, opened only once it is known good.
    pub fn attach(&mut self, cancel: Option<Cancel>, audit: Option<Arc<AuditLog>>) {
        self.options.cancel = cancel;
        self.options.audit = audit;
    }

    /// Runs the kill in `netns` (or the calling thread's namespace).
    pub fn run(self, netns: Option<&Netns>) -> Result<KillReport> {
        let KillPlan { query, policy, options } = self;
        let classifier = OwnerClassifier::new(query.filter(), options.processes)?;
        let mut engine = Engine::open(netns)?;
        let kernel = LiveKernel { engine: &mut engine, query: &query };
        let (cancel, audit) = (options.cancel.as_ref(), options.audit.as_deref());
        let run = Run::start(kernel, WallClock::start(), policy, classifier, cancel, audit)?;
        let (report, mut classifier) = run.finish();
        Ok(KillReport { report, processes_exited: classifier.exited() })
    }
}

/// Destroys every TCP socket matching `filter` in `netns` (or the calling
/// thread's namespace): collects first, checks `max`, destroys each socket by
/// its cookie, and looks again until nothing matches (up to `passes`).
///
/// Fails — with nothing destroyed — on a bad or catch-all filter, a missing
/// namespace or process, or more matches than `max`. Anything that goes wrong
/// after the first destroy is in the report's `error`, next to what was done.
///
/// ```no_run
/// use sockkill::{kill, Filter, KillOptions, filter::parse_cidr};
/// # fn main() -> sockkill::Result<()> {
/// let filter = Filter { dst: vec![parse_cidr("10.0.0.7")?], ..Filter::default() };
/// let report = kill(None, filter, &KillOptions::default())?;
/// assert!(report.verdict().clean());
/// # Ok(()) }
/// ```
pub fn kill(netns: Option<&Netns>, filter: Filter, options: &KillOptions) -> Result<KillReport> {
    KillPlan::new(filter, options.clone())?.run(netns)
}
