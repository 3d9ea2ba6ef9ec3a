//! The loop's rules, table-driven, without root and in milliseconds: a fake
//! kernel (sockets that appear, reconnect after a destroy, close by
//! themselves, refuse, hide from a lookup) and a fake clock (sleeping
//! advances it; a cancel can be scheduled at any instant).
//!
//! Each rule was checked to fail its test when broken (see the notes on the
//! tests): quiet measured from the last sighting only, grace ignored, passes
//! not extended, refused sockets retried, the pass guard removed.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashSet};
use std::rc::Rc;
use std::time::Duration;

use super::*;
use crate::engine::policy::Policy;
use crate::filter::TcpState;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// What the fake kernel did, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Look { at: Duration, targets: usize },
    Destroy { at: Duration, cookies: Vec<u64> },
}

/// A scheduled change in the world.
#[derive(Debug, Clone)]
enum Change {
    /// `n` new target connections appear.
    Appear(usize),
    /// The owner closes every live target itself.
    CloseAll,
}

#[derive(Debug, Default)]
struct World {
    live: BTreeMap<u64, u32>, // cookie -> retries left for its lineage
    next: u64,
    schedule: Vec<(Duration, Change)>,
    /// After a destroy, the owner reconnects this much later (a connect retry).
    retry_after: Option<Duration>,
    reconnects: Vec<(Duration, u32)>,
    /// Destroys of these are refused for good (EBUSY).
    refuse: HashSet<u64>,
    /// Destroys of these answer ENOENT though they live, this many times more
    /// (a reuseport group: each lookup reaches one member).
    hide: BTreeMap<u64, u32>,
    /// How long destroying one socket takes.
    destroy_cost: Duration,
    /// Looks at or after this time fail.
    fail_look_at: Option<Duration>,
    /// This destroy pass (1-based) fails after its first socket.
    fail_pass: Option<u32>,
    /// A signal lands after this many destroys (of the whole run).
    signal_after: Option<usize>,
    destroyed: usize,
    passes: u32,
    ops: Vec<Op>,
}

impl World {
    fn add(&mut self, n: usize, retries: u32) -> Vec<u64> {
        (0..n)
            .map(|_| {
                self.next += 1;
                self.live.insert(self.next, retries);
                self.next
            })
            .collect()
    }

    fn advance(&mut self, now: Duration) {
        let due: Vec<Change> = {
            let (due, later): (Vec<_>, Vec<_>) = self.schedule.drain(..).partition(|(t, _)| *t <= now);
            self.schedule = later;
            due.into_iter().map(|(_, c)| c).collect()
        };
        for c in due {
            match c {
                Change::Appear(n) => {
                    self.add(n, 0);
                }
                Change::CloseAll => self.live.clear(),
            }
        }
        let (due, later): (Vec<_>, Vec<_>) = self.reconnects.drain(..).partition(|(t, _)| *t <= now);
        self.reconnects = later;
        for (_, left) in due {
            self.add(1, left);
        }
    }
}

fn socket(cookie: u64) -> TcpSocket {
    let local = format!("127.0.0.1:{}", 10_000 + cookie).parse().unwrap();
    TcpSocket::for_test(local, "127.0.0.11:9001".parse().unwrap(), TcpState::SynSent).with_ids(cookie, cookie as u32)
}

#[derive(Clone)]
struct FakeKernel {
    world: Rc<RefCell<World>>,
    now: Rc<Cell<Duration>>,
}

impl Kernel for FakeKernel {
    fn collect(&mut self) -> Result<Vec<TcpSocket>> {
        let now = self.now.get();
        let mut w = self.world.borrow_mut();
        w.advance(now);
        if w.fail_look_at.is_some_and(|t| now >= t) {
            return Err(Error::Decode("a look failed (fake)".into()));
        }
        let sockets: Vec<TcpSocket> = w.live.keys().map(|&c| socket(c)).collect();
        w.ops.push(Op::Look { at: now, targets: sockets.len() });
        // A look takes a millisecond.
        self.now.set(now + ms(1));
        Ok(sockets)
    }

    fn destroy(&mut self, sockets: &[TcpSocket], cancel: Option<&Cancel>, _: Option<&AuditLog>) -> DestroyPass {
        let now = self.now.get();
        let mut w = self.world.borrow_mut();
        w.passes += 1;
        let failing = w.fail_pass == Some(w.passes);
        let mut pass = DestroyPass::default();
        let mut cookies = Vec::new();
        // The owner reconnects after the pass (it sees its connection fail then).
        let end = now + ms(1) + w.destroy_cost * sockets.len() as u32;
        for (i, s) in sockets.iter().enumerate() {
            if w.signal_after == Some(w.destroyed) {
                cancel.inspect(|c| c.cancel());
            }
            if cancel.is_some_and(Cancel::is_cancelled) {
                break;
            }
            w.destroyed += 1;
            if failing && i == 1 {
                pass.error = Some(Error::Decode("a destroy pass failed (fake)".into()));
                break;
            }
            let c = s.cookie();
            let outcome = if w.refuse.contains(&c) {
                Outcome::Failed(libc::EBUSY)
            } else if let Some(n) = w.hide.get_mut(&c).filter(|n| **n > 0) {
                *n -= 1;
                Outcome::AlreadyGone
            } else if let Some(left) = w.live.remove(&c) {
                if let (Some(after), true) = (w.retry_after, left > 0) {
                    w.reconnects.push((end + after, left - 1));
                }
                Outcome::Destroyed
            } else {
                Outcome::AlreadyGone
            };
            cookies.push(c);
            pass.outcomes.push((i, outcome));
        }
        w.ops.push(Op::Destroy { at: now, cookies });
        self.now.set(end);
        pass
    }
}

struct FakeClock {
    now: Rc<Cell<Duration>>,
    /// Cancel requests to raise at these times.
    cancels: Vec<Duration>,
    cancel: Cancel,
}

impl Clock for FakeClock {
    fn now(&self) -> Duration {
        self.now.get()
    }

    fn sleep(&mut self, d: Duration, _: Option<&Cancel>) {
        let end = self.now.get() + d;
        // Every cancel due within the sleep is raised (two signals in a row are two requests).
        let (due, later): (Vec<_>, Vec<_>) = self.cancels.iter().partition(|&&t| t <= end);
        self.cancels = later;
        match due.iter().max() {
            Some(&t) => {
                self.now.set(t.max(self.now.get()));
                due.iter().for_each(|_| self.cancel.cancel());
            }
            None => self.now.set(end),
        }
    }
}

/// Every socket is a target, but those in `ambiguous`; the owner doubts
/// quiet this many times.
#[derive(Default)]
struct Classified {
    ambiguous: HashSet<u64>,
    /// Ambiguous from the second look on (the configuration changed).
    ambiguous_later: HashSet<u64>,
    looks: u32,
    doubts: u32,
    asked: u32,
    /// What the run said its owner closed.
    vanished: Rc<RefCell<Vec<u64>>>,
}

impl Classifier for Classified {
    fn classify(&mut self, sockets: &mut [TcpSocket]) -> Result<Vec<Class>> {
        self.looks += 1;
        let later = self.looks > 1;
        Ok(sockets
            .iter()
            .map(|s| {
                let c = s.cookie();
                if self.ambiguous.contains(&c) || (later && self.ambiguous_later.contains(&c)) {
                    Class::Ambiguous("fake".into())
                } else {
                    Class::Target
                }
            })
            .collect())
    }

    fn vanished(&mut self, sockets: Vec<TcpSocket>, _at_ms: u64) {
        self.vanished.borrow_mut().extend(sockets.iter().map(TcpSocket::cookie));
    }

    fn doubt(&mut self) -> Result<Option<String>> {
        self.asked += 1;
        Ok((self.asked <= self.doubts).then(|| "the owner still names 3 targets".to_string()))
    }
}

/// A question answered at a fixed time.
struct Question {
    now: Rc<Cell<Duration>>,
    at: Duration,
    ends_grace: bool,
    answered: bool,
}

impl Awaited for Question {
    fn poll(&mut self) -> Option<bool> {
        (!self.answered && self.now.get() >= self.at).then(|| {
            self.answered = true;
            self.ends_grace
        })
    }
}

/// The HAProxy mode's policy: no pass limit, grace 2 s, settle 1.5 s, deadline 10 s.
fn haproxy_policy() -> Policy {
    Policy {
        passes: None,
        grace: ms(2000),
        settle: ms(1500),
        deadline: Some(ms(10_000)),
        max: Some(10_000),
        ..Policy::kill()
    }
}

struct Lab {
    world: Rc<RefCell<World>>,
    now: Rc<Cell<Duration>>,
    cancels: Vec<Duration>,
    classifier: Classified,
    question: Option<(Duration, bool)>,
}

impl Lab {
    fn new() -> Lab {
        Lab {
            world: Rc::default(),
            now: Rc::default(),
            cancels: Vec::new(),
            classifier: Classified::default(),
            question: None,
        }
    }

    fn doubting(mut self, times: u32) -> Lab {
        self.classifier.doubts = times;
        self
    }

    fn with(self, f: impl FnOnce(&mut World)) -> Lab {
        f(&mut self.world.borrow_mut());
        self
    }

    fn run(self, policy: Policy) -> (Result<RunReport>, Vec<Op>) {
        let cancel = Cancel::new().unwrap();
        let kernel = FakeKernel { world: self.world.clone(), now: self.now.clone() };
        let clock = FakeClock { now: self.now.clone(), cancels: self.cancels, cancel: cancel.clone() };
        let report = Run::start(kernel, clock, policy, self.classifier, Some(&cancel), None).map(|run| {
            let mut q = self.question.map(|(at, ends_grace)| Question {
                now: self.now.clone(),
                at,
                ends_grace,
                answered: false,
            });
            run.finish_awaiting(q.as_mut().map(|q| q as &mut dyn Awaited)).0
        });
        let ops = self.world.borrow().ops.clone();
        (report, ops)
    }
}

fn destroys(ops: &[Op]) -> Vec<(Duration, usize)> {
    ops.iter()
        .filter_map(|o| match o {
            Op::Destroy { at, cookies } => Some((*at, cookies.len())),
            Op::Look { .. } => None,
        })
        .collect()
}

fn looks(ops: &[Op]) -> Vec<(Duration, usize)> {
    ops.iter()
        .filter_map(|o| match o {
            Op::Look { at, targets } => Some((*at, *targets)),
            Op::Destroy { .. } => None,
        })
        .collect()
}

/// The 3.0/3.1 connect-retry shape: the owner reconnects 1 s after each
/// destroy, three times, and a pass takes a while (80 ms a socket here: the
/// last sighting is longer than `settle` before the pass ends). Clean only
/// once a settle period of empty looks followed the *last* destroy. (The
/// broken rule — quiet counted from the last sighting — calls it clean right
/// after the first pass, before any retry.)
#[test]
fn settle_restarts_after_every_destroy() {
    let lab = Lab::new().with(|w| {
        w.add(20, 3);
        w.retry_after = Some(ms(1000));
        w.destroy_cost = ms(80);
    });
    let (r, ops) = lab.run(Policy { deadline: Some(ms(20_000)), ..haproxy_policy() });
    let r = r.unwrap();
    assert_eq!(r.verdict(), Verdict::Clean, "{r:?}");
    let d = destroys(&ops);
    assert_eq!(d.len(), 4, "the first pass and three retries: {d:?}");
    assert!(d[0].0 >= ms(2000), "nothing destroyed during grace: {d:?}");
    let last = d.last().unwrap().0;
    assert!(r.summary.duration_ms >= (last + ms(1500)).as_millis() as u64, "{} ms", r.summary.duration_ms);
    // Every look after the last destroy was empty, and they span the settle period.
    let after: Vec<_> = looks(&ops).into_iter().filter(|(t, _)| *t > last).collect();
    assert!(after.iter().all(|(_, n)| *n == 0), "{after:?}");
    assert!(after.last().unwrap().0 - after[0].0 >= ms(1300), "{after:?}");
    assert_eq!(r.summary.destroyed, 80);
    assert_eq!(r.summary.appeared_after_first_destroy, 60);
}

/// Grace: nothing is destroyed before it ends; the owner closing everything
/// meanwhile makes the run clean without a destroy.
#[test]
fn grace_gives_the_owner_its_chance() {
    let lab = Lab::new().with(|w| {
        w.add(5, 0);
        w.schedule.push((ms(700), Change::CloseAll));
    });
    let (r, ops) = lab.run(haproxy_policy());
    let r = r.unwrap();
    assert!(destroys(&ops).is_empty(), "{ops:?}");
    assert_eq!(r.verdict(), Verdict::Clean);
    // Quiet counts from the last look that saw a target (before 0.7 s).
    assert!(r.summary.duration_ms >= 2100 && r.summary.duration_ms < 2400, "{}", r.summary.duration_ms);
    // And without the owner closing: the first destroy comes at the end of grace, not before.
    let (r, ops) = Lab::new().with(|w| {
        w.add(5, 0);
    }).run(haproxy_policy());
    assert_eq!(r.unwrap().verdict(), Verdict::Clean);
    let d = destroys(&ops);
    assert!(d[0].0 >= ms(2000) && d[0].0 < ms(2100), "{d:?}");
}

/// A pending question holds the grace period open even when nothing is to
/// be seen; a `Done.` answer ends it early.
#[test]
fn a_pending_answer_holds_grace_and_done_ends_it() {
    let mut lab = Lab::new().with(|w| {
        w.add(3, 0);
    });
    lab.question = Some((ms(400), true));
    let (r, ops) = lab.run(haproxy_policy());
    let r = r.unwrap();
    let d = destroys(&ops);
    assert!(d[0].0 >= ms(400) && d[0].0 < ms(600), "grace ended with the answer: {d:?}");
    assert_eq!(r.verdict(), Verdict::Clean);

    // Nothing to destroy, but the answer is pending: no verdict before it (or grace) comes.
    let mut lab = Lab::new();
    lab.question = Some((ms(1900), false));
    let (r, _) = lab.run(haproxy_policy());
    let r = r.unwrap();
    assert!(r.summary.duration_ms >= 1900, "{}", r.summary.duration_ms);
    // Without a question, an empty start is clean once settled.
    let (r, _) = Lab::new().run(haproxy_policy());
    let r = r.unwrap();
    assert_eq!(r.verdict(), Verdict::Clean);
    assert!(r.summary.duration_ms >= 1500 && r.summary.duration_ms < 1700, "{}", r.summary.duration_ms);
}

/// The deadline while targets keep appearing: not clean, and said in plain words.
#[test]
fn the_deadline_says_what_kept_appearing() {
    let lab = Lab::new().with(|w| {
        w.add(4, 100);
        w.retry_after = Some(ms(1000));
    });
    let policy = Policy { deadline: Some(ms(5000)), ..haproxy_policy() };
    let (r, _) = lab.run(policy);
    let r = r.unwrap();
    assert_eq!(r.end, End::Deadline);
    assert_ne!(r.verdict().exit_code(), 0);
    assert!(!r.summary.verdict.clean());
    let why = r.verdict_reason.clone().unwrap();
    assert!(why.contains("deadline") && why.contains("appeared after the first destroy"), "{why}");
    assert!(r.summary.appeared_after_first_destroy >= 8, "{r:?}");
    assert!(r.summary.duration_ms >= 5000 && r.summary.duration_ms < 5200);
}

/// `--for`: connections made during the window are destroyed as they come;
/// clean is judged after it.
#[test]
fn the_window_destroys_what_comes_and_judges_after() {
    let lab = Lab::new().with(|w| {
        w.add(2, 0);
        w.schedule.push((ms(300), Change::Appear(3)));
        w.schedule.push((ms(900), Change::Appear(1)));
    });
    let policy = Policy { window: Some(ms(1000)), ..Policy::kill() };
    let (r, ops) = lab.run(policy);
    let r = r.unwrap();
    assert_eq!(r.verdict(), Verdict::Clean);
    assert_eq!(r.summary.destroyed, 6);
    assert_eq!(r.summary.new_during_kill, 4);
    assert!(r.summary.duration_ms >= 1000, "judged after the window: {}", r.summary.duration_ms);
    assert!(destroys(&ops).iter().all(|(t, _)| *t < ms(1000)));
}

/// Passes go on while they make progress (a reuseport group hides one member
/// per lookup), beyond the limit of three.
#[test]
fn passes_extend_while_they_make_progress() {
    let lab = Lab::new().with(|w| {
        let c = w.add(6, 0);
        // Each pass reaches only one more: the others answer ENOENT though alive.
        w.hide.extend(c.iter().enumerate().map(|(i, c)| (*c, i as u32)));
    });
    let (r, ops) = lab.run(Policy::kill());
    let r = r.unwrap();
    assert_eq!(r.verdict(), Verdict::Clean, "{r:?}");
    assert_eq!(r.summary.destroyed, 6);
    assert_eq!(r.summary.not_found, 0);
    assert_eq!(destroys(&ops).len(), 6, "six passes, past the limit of three: {ops:?}");
    // Without progress the limit holds: a socket that is never reached.
    let lab = Lab::new().with(|w| {
        let c = w.add(1, 0);
        w.refuse.extend(c);
    });
    let (r, ops) = lab.run(Policy::kill());
    let r = r.unwrap();
    assert_eq!(r.verdict(), Verdict::Remaining);
    assert_eq!(destroys(&ops).len(), 1, "a refused socket is never tried again: {ops:?}");
}

/// A refused socket is not retried, in any phase, even while other targets come and go.
#[test]
fn refused_sockets_are_never_retried() {
    let lab = Lab::new().with(|w| {
        let c = w.add(3, 0);
        w.refuse.insert(c[0]);
        w.schedule.push((ms(2500), Change::Appear(2)));
    });
    let (r, ops) = lab.run(Policy { deadline: Some(ms(6000)), ..haproxy_policy() });
    let r = r.unwrap();
    let tried: usize = ops
        .iter()
        .map(|o| match o {
            Op::Destroy { cookies, .. } => cookies.iter().filter(|c| **c == 1).count(),
            Op::Look { .. } => 0,
        })
        .sum();
    assert_eq!(tried, 1, "{ops:?}");
    assert_eq!(r.summary.failed, 1);
    assert_eq!(r.summary.destroyed, 4);
    assert_eq!(r.verdict(), Verdict::Remaining, "the refused one remains");
}

/// The pass guard: a later pass larger than `max` is not sent.
#[test]
fn a_pass_larger_than_max_is_not_sent() {
    let lab = Lab::new().with(|w| {
        w.add(2, 0);
        w.schedule.push((ms(2050), Change::Appear(10)));
    });
    let policy = Policy { max: Some(5), ..haproxy_policy() };
    let (r, ops) = lab.run(policy);
    let r = r.unwrap();
    assert!(matches!(r.error, Some(Error::PassTooLarge { count: 10, max: 5 })), "{:?}", r.error);
    assert_eq!(r.verdict(), Verdict::Failed { done: true });
    assert_eq!(destroys(&ops).iter().map(|(_, n)| n).sum::<usize>(), 2, "{ops:?}");
    // A first look over `max` is refused before anything is done.
    let lab = Lab::new().with(|w| {
        w.add(6, 0);
    });
    let (r, ops) = lab.run(Policy { max: Some(5), ..Policy::kill() });
    assert!(matches!(r, Err(Error::TooMany { matched: 6, max: 5 })));
    assert!(destroys(&ops).is_empty());
}

/// A cancel in every phase: before anything is done (exit 2), after destroys
/// (exit 1, what remains looked at once more), a second one skips that look.
#[test]
fn a_cancel_in_every_phase() {
    // In grace: nothing destroyed.
    let mut lab = Lab::new().with(|w| {
        w.add(3, 0);
    });
    lab.cancels = vec![ms(500)];
    let (r, ops) = lab.run(haproxy_policy());
    let r = r.unwrap();
    assert_eq!(r.verdict(), Verdict::Interrupted { done: false });
    assert_eq!(r.verdict().exit_code(), 2);
    assert!(destroys(&ops).is_empty());
    assert!(r.summary.duration_ms < 700);

    // In settle, after destroys: done, and the last look says what remains.
    let mut lab = Lab::new().with(|w| {
        w.add(3, 5);
        w.retry_after = Some(ms(1000));
    });
    lab.cancels = vec![ms(2600)];
    let (r, _) = lab.run(haproxy_policy());
    let r = r.unwrap();
    assert_eq!(r.verdict(), Verdict::Interrupted { done: true });
    assert_eq!(r.verdict().exit_code(), 1);
    assert!(r.summary.verified);

    // In a window.
    let mut lab = Lab::new().with(|w| {
        w.add(1, 0);
        w.schedule.push((ms(300), Change::Appear(1)));
    });
    lab.cancels = vec![ms(400)];
    let (r, _) = lab.run(Policy { window: Some(ms(5000)), ..Policy::kill() });
    let r = r.unwrap();
    assert_eq!(r.verdict(), Verdict::Interrupted { done: true });
    assert!(r.summary.duration_ms < 600);

    // Two cancels right after a destroy: abandoned, no last look, what remains unknown.
    let mut lab = Lab::new().with(|w| {
        w.add(2, 0);
    });
    lab.cancels = vec![ms(2001), ms(2002)];
    let (r, ops) = lab.run(haproxy_policy());
    let r = r.unwrap();
    assert!(matches!(r.verdict(), Verdict::Interrupted { .. }));
    let last_destroy = destroys(&ops).last().map(|d| d.0);
    assert!(looks(&ops).iter().all(|(t, _)| Some(*t) < last_destroy) || last_destroy.is_none(), "{ops:?}");
}

/// Targets that come back during settle are destroyed, and settle starts over.
#[test]
fn targets_reappearing_during_settle_are_destroyed() {
    let lab = Lab::new().with(|w| {
        w.add(2, 0);
        w.schedule.push((ms(3000), Change::Appear(2)));
    });
    let (r, ops) = lab.run(haproxy_policy());
    let r = r.unwrap();
    assert_eq!(r.verdict(), Verdict::Clean);
    let d = destroys(&ops);
    assert_eq!(d.len(), 2, "{d:?}");
    assert!(d[1].0 >= ms(3000));
    assert!(r.summary.duration_ms as u128 >= (d[1].0 + ms(1500)).as_millis());
    assert_eq!(r.summary.new_during_kill, 2);
}

/// An error after the first destroy keeps the report: what was destroyed is there.
#[test]
fn errors_after_the_first_destroy_keep_the_report() {
    // The verification look fails.
    let lab = Lab::new().with(|w| {
        w.add(3, 0);
        w.fail_look_at = Some(ms(1));
    });
    let (r, _) = lab.run(Policy::kill());
    let r = r.unwrap();
    assert_eq!(r.summary.destroyed, 3);
    assert_eq!(r.verdict(), Verdict::Failed { done: true });
    assert_eq!(r.verdict().exit_code(), 1);
    assert!(!r.summary.verified);
    // A destroy pass fails midway: its first socket stands, the rest is still there.
    let lab = Lab::new().with(|w| {
        w.add(3, 0);
        w.fail_pass = Some(1);
    });
    let (r, _) = lab.run(Policy::kill());
    let r = r.unwrap();
    assert_eq!(r.summary.destroyed, 1);
    assert_eq!(r.summary.remaining, Some(2));
    assert_eq!(r.verdict(), Verdict::Failed { done: true });
}

/// Ambiguous sockets are never destroyed and never clean.
#[test]
fn ambiguous_sockets_keep_the_run_from_clean() {
    let mut lab = Lab::new().with(|w| {
        w.add(3, 0);
    });
    lab.classifier.ambiguous.insert(2);
    let (r, ops) = lab.run(haproxy_policy());
    let r = r.unwrap();
    assert_eq!(r.verdict(), Verdict::Ambiguous);
    assert!(!r.summary.verdict.clean());
    assert_eq!(r.summary.remaining, Some(0));
    assert_eq!(r.summary.ambiguous, 1);
    assert!(ops.iter().all(|o| !matches!(o, Op::Destroy { cookies, .. } if cookies.contains(&2))));
}

/// A target judged ambiguous by a later look (its owner's configuration
/// changed during the grace) is still there: not closed by its owner.
#[test]
fn a_target_judged_again_is_not_closed_by_its_owner() {
    let mut lab = Lab::new().with(|w| {
        w.add(3, 0);
    });
    lab.classifier.ambiguous_later.insert(2);
    let vanished = lab.classifier.vanished.clone();
    let (r, ops) = lab.run(haproxy_policy());
    let r = r.unwrap();
    assert_eq!(r.verdict(), Verdict::Ambiguous);
    assert!(vanished.borrow().is_empty(), "{:?}", vanished.borrow());
    assert!(ops.iter().all(|o| !matches!(o, Op::Destroy { cookies, .. } if cookies.contains(&2))));
}

/// A dry run looks once; `--no-verify` stops after the first pass.
#[test]
fn dry_runs_and_unverified_runs() {
    let (r, ops) = Lab::new().with(|w| {
        w.add(3, 0);
    }).run(Policy { dry_run: true, ..Policy::kill() });
    let r = r.unwrap();
    assert_eq!((r.verdict(), r.sockets.len()), (Verdict::Remaining, 3));
    assert!(destroys(&ops).is_empty() && looks(&ops).len() == 1);
    let (r, _) = Lab::new().run(Policy { dry_run: true, ..Policy::kill() });
    assert_eq!(r.unwrap().verdict(), Verdict::Clean);

    let (r, ops) = Lab::new().with(|w| {
        w.add(3, 0);
    }).run(Policy { verify: false, ..Policy::kill() });
    let r = r.unwrap();
    assert_eq!(r.verdict(), Verdict::Unverified);
    assert_eq!(r.verdict().exit_code(), 0);
    assert_eq!(r.summary.remaining, None);
    assert_eq!(looks(&ops).len(), 1);
}

/// One signal in the middle of a destroy pass: the pass stops, and the
/// look after it still happens — what remains is counted, not unknown.
#[test]
fn one_signal_mid_destroy_still_looks_once_more() {
    let (r, ops) = Lab::new()
        .with(|w| {
            w.add(10, 0);
            w.signal_after = Some(4);
        })
        .run(Policy::kill());
    let r = r.unwrap();
    assert_eq!(destroys(&ops), vec![(ms(1), 4)]);
    assert_eq!(looks(&ops).len(), 2, "the first look and the last one");
    assert_eq!((r.end, r.summary.verified, r.summary.remaining), (End::Interrupted, true, Some(6)));
    assert_eq!(r.verdict(), Verdict::Interrupted { done: true });
    assert_eq!(r.verdict().exit_code(), 1);
}

/// The owner still names targets when the run would end quiet (HAProxy's
/// streams of the server, no socket found): quiet counts again from each
/// doubt; a doubt still standing at the deadline is the verdict `ambiguous`,
/// in the owner's words; a dry run asks once.
#[test]
fn an_owner_that_still_names_targets_holds_off_clean() {
    let lab = || Lab::new().with(|w| {
        w.add(2, 0);
    });
    let (r, ops) = lab().doubting(2).run(haproxy_policy());
    let r = r.unwrap();
    assert_eq!(r.verdict(), Verdict::Clean);
    assert_eq!(r.doubt, None);
    // Destroyed at 2 s; quiet 1.5 s after it, then after each of the two doubts.
    let last = looks(&ops).last().unwrap().0;
    assert!(last >= ms(2000 + 3 * 1500), "{last:?}");

    let (r, _) = lab().doubting(u32::MAX).run(haproxy_policy());
    let r = r.unwrap();
    assert_eq!((r.verdict(), r.end), (Verdict::Ambiguous, End::Deadline));
    assert_eq!(r.verdict().exit_code(), 1);
    assert!(r.verdict_reason.unwrap().contains("the owner still names 3 targets"));

    let (r, _) = Lab::new().doubting(1).run(Policy { dry_run: true, ..haproxy_policy() });
    let r = r.unwrap();
    assert_eq!(r.verdict(), Verdict::Ambiguous, "a dry run with nothing found, but the owner names targets");
}

/// The machine's own table: each phase's step from a state (pure, no driver).
#[test]
fn the_machine_steps() {
    let p = haproxy_policy();
    let seen = Looked { targets: 2, attemptable: 2 };
    let none = Looked::default();
    let mut m = Machine::new(p.clone(), false);
    assert_eq!(m.on(ms(0), Event::Started(seen)), Step::LookAfter(ms(100)));
    assert_eq!(m.phase(), Phase::Grace);
    assert_eq!(m.on(ms(1950), Event::Looked(seen)), Step::LookAfter(ms(50)), "no look past the end of grace");
    assert_eq!(m.on(ms(2000), Event::Looked(seen)), Step::Destroy);
    assert_eq!(m.on(ms(2001), Event::Destroyed(Pass::default())), Step::LookAfter(ms(100)));
    assert_eq!(m.on(ms(2101), Event::Looked(none)), Step::LookAfter(ms(100)));
    assert_eq!(m.phase(), Phase::Settle);
    assert_eq!(m.on(ms(3450), Event::Looked(none)), Step::LookAfter(ms(51)), "settle ends 1.5 s after the destroy");
    assert_eq!(m.on(ms(3501), Event::Looked(none)), Step::Confirm);
    // The owner still names targets: quiet counts again from the doubt.
    assert_eq!(m.on(ms(3510), Event::Confirmed { doubt: true }), Step::LookAfter(ms(100)));
    assert_eq!(m.on(ms(5009), Event::Looked(none)), Step::LookAfter(ms(1)));
    assert_eq!(m.on(ms(5010), Event::Looked(none)), Step::Confirm);
    assert_eq!(m.on(ms(5011), Event::Confirmed { doubt: false }), Step::Finish(End::Quiet));
    // With no settle period a doubt still waits an interval before asking again.
    let mut z = Machine::new(Policy { settle: ms(0), ..p.clone() }, false);
    z.on(ms(0), Event::Started(none));
    assert_eq!(z.on(ms(2000), Event::Looked(none)), Step::Confirm);
    assert_eq!(z.on(ms(2001), Event::Confirmed { doubt: true }), Step::LookAfter(ms(100)));
    // A kill: destroy at once, look at once, clean.
    let mut k = Machine::new(Policy::kill(), false);
    assert_eq!(k.on(ms(0), Event::Started(seen)), Step::Destroy);
    assert_eq!(k.on(ms(1), Event::Destroyed(Pass::default())), Step::Look);
    assert_eq!(k.on(ms(2), Event::Looked(none)), Step::Confirm);
    assert_eq!(k.on(ms(2), Event::Confirmed { doubt: false }), Step::Finish(End::Quiet));
    // A cancel after a destroy: one more look, then the end.
    let mut c = Machine::new(Policy::kill(), false);
    c.on(ms(0), Event::Started(seen));
    assert_eq!(c.on(ms(1), Event::Destroyed(Pass { cut: true, ..Pass::default() })), Step::FinalLook(End::Interrupted));
    // The signal that cut the pass reaches the machine again as a cancel
    // request: the look is still owed; only a second signal abandons it.
    assert_eq!(c.on(ms(1), Event::Cancelled { abandon: false }), Step::FinalLook(End::Interrupted));
    assert_eq!(c.on(ms(2), Event::Cancelled { abandon: true }), Step::Finish(End::Interrupted));
    let mut a = Machine::new(Policy::kill(), false);
    a.on(ms(0), Event::Started(seen));
    a.on(ms(1), Event::Cancelled { abandon: true });
    assert_eq!(a.on(ms(1), Event::Destroyed(Pass::default())), Step::Finish(End::Interrupted));
}
