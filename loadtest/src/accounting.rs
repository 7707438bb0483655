//! Correctness accounting: from the write log and what each subscription received, what was missing,
//! duplicated, out of order or unexpected, and the change-to-client latency of every delivery.
//!
//! Pure: no I/O, no clock. The harness builds a [`WriteLog`] from the database after the run (writer,
//! sequence, filter-column values, commit time) and hands every subscription's [`SubRecord`] to
//! [`account`].
//!
//! The rules:
//! - A write is **expected** by a subscription when it matches the subscription's filter and was committed
//!   after the subscription's `init` arrived and no later than the moment the client began to leave (churn)
//!   or the server closed it. Writes committed before the `init` may arrive in the `init` data or as an
//!   event (the snapshot/stream boundary is the server's business); either is fine, both is a duplicate.
//!   A write whose commit time is unknown is never expected but is still checked for duplicates.
//! - **missing**: expected and never delivered.
//! - **duplicated**: the same write delivered to the same subscription more than once (counting `init`
//!   rows as deliveries).
//! - **out of order**: a write delivered after a later write of the same writer. Each writer commits its
//!   own sequence in order on one connection, so per writer the sequence must rise.
//! - **unexpected**: a delivery of a write that does not match the subscription's filter, or of no write
//!   in the log at all.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};

/// The filter a subscription was made with, as the harness chose it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SubFilter {
    /// `room == n` (fanout, filters, churn, write-heavy, soak).
    Room(i32),
    /// `owner == user n` through a `$CURRENT_USER` permission (per-user).
    Owner(u32),
}

/// One committed write.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Write {
    pub writer: u32,
    pub seq: u32,
    pub room: i32,
    pub owner: Option<u32>,
    /// Commit time, µs since the Unix epoch (`pg_xact_commit_timestamp`, or the writer's acknowledgement
    /// time); `None` when unknown.
    pub commit_us: Option<i64>,
}

/// One received row: which write, and when it arrived (µs since the Unix epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    pub writer: u32,
    pub seq: u32,
    pub at_us: i64,
}

/// Everything one subscription saw, in arrival order.
#[derive(Debug, Clone, PartialEq)]
pub struct SubRecord {
    pub filter: SubFilter,
    /// When its `init` arrived.
    pub init_at_us: i64,
    /// When the client began to leave or the server closed the connection; `None` = it stayed to the end.
    pub end_at_us: Option<i64>,
    /// Rows of the `init` snapshot (writer, seq).
    pub init_rows: Vec<(u32, u32)>,
    pub deliveries: Vec<Delivery>,
}

/// The write log, indexed for accounting.
pub struct WriteLog {
    writes: Vec<Write>,
    by_key: HashMap<(u32, u32), u32>,
    by_room: HashMap<i32, Vec<u32>>,
    by_owner: HashMap<u32, Vec<u32>>,
    writers: usize,
}

impl WriteLog {
    pub fn new(writes: Vec<Write>) -> WriteLog {
        let mut by_key = HashMap::with_capacity(writes.len());
        let mut by_room: HashMap<i32, Vec<u32>> = HashMap::new();
        let mut by_owner: HashMap<u32, Vec<u32>> = HashMap::new();
        let mut writers = 0;
        for (i, w) in writes.iter().enumerate() {
            by_key.insert((w.writer, w.seq), i as u32);
            by_room.entry(w.room).or_default().push(i as u32);
            if let Some(o) = w.owner {
                by_owner.entry(o).or_default().push(i as u32);
            }
            writers = writers.max(w.writer as usize + 1);
        }
        WriteLog {
            writes,
            by_key,
            by_room,
            by_owner,
            writers,
        }
    }

    pub fn len(&self) -> usize {
        self.writes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }

    pub fn writes(&self) -> &[Write] {
        &self.writes
    }

    fn matching(&self, f: SubFilter) -> &[u32] {
        match f {
            SubFilter::Room(r) => self.by_room.get(&r).map_or(&[], Vec::as_slice),
            SubFilter::Owner(o) => self.by_owner.get(&o).map_or(&[], Vec::as_slice),
        }
    }
}

fn matches(f: SubFilter, w: &Write) -> bool {
    match f {
        SubFilter::Room(r) => w.room == r,
        SubFilter::Owner(o) => w.owner == Some(o),
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    pub subscriptions: u64,
    /// Writes every subscription had to receive, summed.
    pub expected: u64,
    /// Rows received as events (first receipt of a write per subscription, plus duplicates).
    pub delivered: u64,
    /// Events for writes that were not required (committed before the `init` or after the client left).
    pub delivered_optional: u64,
    pub missing: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    pub unexpected: u64,
}

impl Tally {
    pub fn add(&mut self, o: &Tally) {
        self.subscriptions += o.subscriptions;
        self.expected += o.expected;
        self.delivered += o.delivered;
        self.delivered_optional += o.delivered_optional;
        self.missing += o.missing;
        self.duplicated += o.duplicated;
        self.out_of_order += o.out_of_order;
        self.unexpected += o.unexpected;
    }

    pub fn errors(&self) -> u64 {
        self.missing + self.duplicated + self.out_of_order + self.unexpected
    }
}

/// One concrete problem, for the report (a bounded number are kept).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    pub kind: String,
    pub filter: String,
    pub writer: u32,
    pub seq: u32,
}

/// How many example problems to keep per accounting pass.
pub const MAX_EXAMPLES: usize = 20;

/// Highest latency a histogram records (µs); larger values saturate.
const HIST_MAX_US: u64 = 3_600_000_000;

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_US, 3).expect("valid histogram bounds")
}

/// The result of accounting many subscriptions.
pub struct Outcome {
    pub tally: Tally,
    /// Commit → receive latency (µs) of every first delivery with a known commit time.
    pub latency: Histogram<u64>,
    /// The same, split by phase (ramp step) of the write's commit time; see [`Outcome::new`].
    pub phase_latency: Vec<Histogram<u64>>,
    /// Deliveries that arrived before their commit time (clocks of different machines).
    pub negative_latency: u64,
    pub examples: Vec<Problem>,
    phases: Vec<i64>,
    seen: HashSet<u32>,
    last_seq: Vec<Option<u32>>,
}

impl Outcome {
    /// `phases`: start times (µs) of consecutive phases, ascending; a write committed before the first
    /// phase belongs to none.
    pub fn new(phases: Vec<i64>) -> Outcome {
        Outcome {
            tally: Tally::default(),
            latency: new_histogram(),
            phase_latency: phases.iter().map(|_| new_histogram()).collect(),
            negative_latency: 0,
            examples: Vec::new(),
            phases,
            seen: HashSet::new(),
            last_seq: Vec::new(),
        }
    }

    fn example(&mut self, kind: &str, f: SubFilter, writer: u32, seq: u32) {
        if self.examples.len() < MAX_EXAMPLES {
            self.examples.push(Problem {
                kind: kind.into(),
                filter: format!("{f:?}"),
                writer,
                seq,
            });
        }
    }
}

fn is_expected(sub: &SubRecord, commit: Option<i64>) -> bool {
    commit.is_some_and(|c| c > sub.init_at_us && sub.end_at_us.is_none_or(|end| c <= end))
}

/// Account one subscription into `out`.
pub fn account(log: &WriteLog, sub: &SubRecord, out: &mut Outcome) {
    out.tally.subscriptions += 1;
    out.seen.clear();
    out.last_seq.clear();
    out.last_seq.resize(log.writers, None);
    for &(writer, seq) in &sub.init_rows {
        match log.by_key.get(&(writer, seq)) {
            Some(&i) if matches(sub.filter, &log.writes[i as usize]) && !out.seen.insert(i) => {
                out.tally.duplicated += 1;
                out.example("duplicated (twice in init)", sub.filter, writer, seq);
            }
            Some(&i) if matches(sub.filter, &log.writes[i as usize]) => {}
            // Rows of other runs or other filters in the snapshot are the server's business only if they
            // are ours: a row of ours that does not match is a wrong snapshot.
            Some(_) => {
                out.tally.unexpected += 1;
                out.example("unexpected (init)", sub.filter, writer, seq);
            }
            None => {}
        }
    }
    for d in &sub.deliveries {
        let Some(&i) = log.by_key.get(&(d.writer, d.seq)) else {
            out.tally.unexpected += 1;
            out.example("unexpected (unknown write)", sub.filter, d.writer, d.seq);
            continue;
        };
        let w = log.writes[i as usize];
        if !matches(sub.filter, &w) {
            out.tally.unexpected += 1;
            out.example("unexpected (filter)", sub.filter, d.writer, d.seq);
            continue;
        }
        out.tally.delivered += 1;
        if !out.seen.insert(i) {
            out.tally.duplicated += 1;
            out.example("duplicated", sub.filter, d.writer, d.seq);
            continue;
        }
        let last = &mut out.last_seq[d.writer as usize];
        match *last {
            Some(l) if d.seq < l => {
                out.tally.out_of_order += 1;
                out.example("out of order", sub.filter, d.writer, d.seq);
            }
            _ => *last = Some(d.seq),
        }
        if !is_expected(sub, w.commit_us) {
            out.tally.delivered_optional += 1;
        }
        if let Some(c) = w.commit_us {
            let lat = d.at_us - c;
            if lat < 0 {
                out.negative_latency += 1;
            }
            let v = lat.max(1) as u64;
            out.latency.saturating_record(v);
            let phase = out.phases.partition_point(|&p| p <= c);
            if phase > 0 {
                out.phase_latency[phase - 1].saturating_record(v);
            }
        }
    }
    for &i in log.matching(sub.filter) {
        let w = log.writes[i as usize];
        if is_expected(sub, w.commit_us) {
            out.tally.expected += 1;
            if !out.seen.contains(&i) {
                out.tally.missing += 1;
                out.example("missing", sub.filter, w.writer, w.seq);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writer 0 writes seq 0..10 to room 1 at t = 1000 + 10·seq; writer 1 writes seq 0..10 to room 2.
    fn log() -> WriteLog {
        let mut w = Vec::new();
        for writer in 0..2u32 {
            for seq in 0..10u32 {
                w.push(Write {
                    writer,
                    seq,
                    room: writer as i32 + 1,
                    owner: Some(writer),
                    commit_us: Some(1000 + 10 * seq as i64),
                });
            }
        }
        WriteLog::new(w)
    }

    fn sub(filter: SubFilter, seqs: &[(u32, u32)]) -> SubRecord {
        SubRecord {
            filter,
            init_at_us: 500,
            end_at_us: None,
            init_rows: Vec::new(),
            deliveries: seqs
                .iter()
                .map(|&(writer, seq)| Delivery {
                    writer,
                    seq,
                    at_us: 2000 + seq as i64,
                })
                .collect(),
        }
    }

    fn run(s: &SubRecord) -> Outcome {
        let mut out = Outcome::new(vec![0, 1050]);
        account(&log(), s, &mut out);
        out
    }

    fn all(writer: u32) -> Vec<(u32, u32)> {
        (0..10).map(|s| (writer, s)).collect()
    }

    #[test]
    fn a_complete_ordered_delivery_is_clean() {
        let out = run(&sub(SubFilter::Room(1), &all(0)));
        assert_eq!(
            out.tally,
            Tally {
                subscriptions: 1,
                expected: 10,
                delivered: 10,
                ..Tally::default()
            }
        );
        assert_eq!(out.latency.len(), 10);
        // Latency of seq s: (2000 + s) − (1000 + 10 s) = 1000 − 9 s.
        assert_eq!(out.latency.max(), 1000);
        assert_eq!(out.phase_latency[0].len(), 5, "commits 1000..1040");
        assert_eq!(out.phase_latency[1].len(), 5, "commits 1050..1090");
        assert!(out.examples.is_empty());
    }

    #[test]
    fn a_missing_delivery_is_caught() {
        let mut got = all(0);
        got.remove(4);
        let out = run(&sub(SubFilter::Room(1), &got));
        assert_eq!(out.tally.missing, 1);
        assert_eq!(out.tally.errors(), 1);
        assert_eq!(
            out.examples,
            vec![Problem {
                kind: "missing".into(),
                filter: "Room(1)".into(),
                writer: 0,
                seq: 4
            }]
        );
    }

    #[test]
    fn a_duplicated_delivery_is_caught() {
        let mut got = all(0);
        got.insert(5, (0, 4));
        let out = run(&sub(SubFilter::Room(1), &got));
        assert_eq!(out.tally.duplicated, 1);
        assert_eq!(out.tally.missing, 0);
        assert_eq!(
            out.tally.out_of_order, 0,
            "a duplicate is not also a reorder"
        );
        assert_eq!(out.tally.errors(), 1);
        assert_eq!(out.examples[0].kind, "duplicated");
    }

    #[test]
    fn a_reordered_delivery_is_caught() {
        let mut got = all(0);
        got.swap(3, 4);
        let out = run(&sub(SubFilter::Room(1), &got));
        assert_eq!(out.tally.out_of_order, 1);
        assert_eq!(out.tally.missing, 0);
        assert_eq!(out.tally.duplicated, 0);
        assert_eq!(out.tally.errors(), 1);
        assert_eq!(out.examples[0].seq, 3, "seq 3 arrived after seq 4");
    }

    #[test]
    fn order_is_per_writer_and_interleaving_is_fine() {
        let log = WriteLog::new(
            (0..2u32)
                .flat_map(|writer| {
                    (0..3u32).map(move |seq| Write {
                        writer,
                        seq,
                        room: 1,
                        owner: None,
                        commit_us: Some(1000),
                    })
                })
                .collect(),
        );
        let s = sub(
            SubFilter::Room(1),
            &[(1, 0), (0, 0), (0, 1), (1, 1), (1, 2), (0, 2)],
        );
        let mut out = Outcome::new(vec![]);
        account(&log, &s, &mut out);
        assert_eq!(out.tally.errors(), 0, "{:?}", out.examples);
        assert_eq!(out.tally.expected, 6);
    }

    #[test]
    fn a_delivery_outside_the_filter_is_unexpected() {
        let mut got = all(0);
        got.push((1, 3));
        got.push((7, 7));
        let out = run(&sub(SubFilter::Room(1), &got));
        assert_eq!(out.tally.unexpected, 2);
        assert_eq!(out.tally.errors(), 2);
    }

    #[test]
    fn per_user_filters_match_on_owner() {
        let out = run(&sub(SubFilter::Owner(1), &all(1)));
        assert_eq!(out.tally.expected, 10);
        assert_eq!(out.tally.errors(), 0);
        let out = run(&sub(SubFilter::Owner(0), &all(1)));
        assert_eq!(out.tally.unexpected, 10);
        assert_eq!(out.tally.missing, 10);
    }

    #[test]
    fn writes_before_init_may_arrive_once_in_init_or_as_event_but_not_twice() {
        // init at 1035: seqs 0..=3 (commits 1000..1030) are optional.
        let mut s = sub(
            SubFilter::Room(1),
            &(2..10).map(|q| (0, q)).collect::<Vec<_>>(),
        );
        s.init_at_us = 1035;
        s.init_rows = vec![(0, 0), (0, 1)];
        let out = {
            let mut o = Outcome::new(vec![]);
            account(&log(), &s, &mut o);
            o
        };
        assert_eq!(out.tally.errors(), 0, "{:?}", out.examples);
        assert_eq!(out.tally.expected, 6, "seqs 4..=9");
        assert_eq!(out.tally.delivered_optional, 2, "seqs 2 and 3");

        // The same write in the init and as an event: a duplicate.
        s.init_rows.push((0, 2));
        let mut o = Outcome::new(vec![]);
        account(&log(), &s, &mut o);
        assert_eq!(o.tally.duplicated, 1);

        // A write committed after the init that arrives nowhere is missing; one before it is not.
        let mut s = sub(
            SubFilter::Room(1),
            &(5..10).map(|q| (0, q)).collect::<Vec<_>>(),
        );
        s.init_at_us = 1035;
        let mut o = Outcome::new(vec![]);
        account(&log(), &s, &mut o);
        assert_eq!(o.tally.missing, 1, "seq 4 (commit 1040)");
    }

    #[test]
    fn writes_after_the_client_left_are_optional() {
        let mut s = sub(
            SubFilter::Room(1),
            &(0..6).map(|q| (0, q)).collect::<Vec<_>>(),
        );
        s.end_at_us = Some(1050);
        let mut o = Outcome::new(vec![]);
        account(&log(), &s, &mut o);
        assert_eq!(o.tally.errors(), 0, "{:?}", o.examples);
        assert_eq!(o.tally.expected, 6, "commits up to 1050");
        // Leaving at 1060 but without seq 6 (commit 1060): missing.
        s.end_at_us = Some(1060);
        let mut o = Outcome::new(vec![]);
        account(&log(), &s, &mut o);
        assert_eq!(o.tally.missing, 1);
    }

    #[test]
    fn unknown_commit_times_are_never_expected() {
        let log = WriteLog::new(vec![Write {
            writer: 0,
            seq: 0,
            room: 1,
            owner: None,
            commit_us: None,
        }]);
        let s = sub(SubFilter::Room(1), &[]);
        let mut o = Outcome::new(vec![]);
        account(&log, &s, &mut o);
        assert_eq!(o.tally.expected, 0);
        assert_eq!(o.tally.errors(), 0);
    }
}
