//! FastIM unique ids.
//!
//! Message ids are snowflakes: 41 bits of milliseconds since [`EPOCH_MS`], 10 bits of
//! worker id and 12 bits of sequence within the millisecond, so they are unique
//! across workers and roughly ordered by time. In standalone mode the one process is
//! worker 0; in cluster mode each ID allocator holds its worker id under an etcd
//! lease (see the cluster-mode docs).
//!
//! The generator refuses to issue ids while the clock is behind the last issued
//! timestamp by more than a bound, and waits out smaller steps back, so it never
//! issues a duplicate because of a clock adjustment.
//!
//! [`segment`] hands out dense per-tag ids from counters in etcd, a segment at a
//! time with the next one prefetched; [`service`] serves both kinds over gRPC
//! (`fastim idgen`).
#![forbid(unsafe_code)]

pub mod segment;
pub mod service;

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// 2025-01-01T00:00:00Z: ids count milliseconds from here.
pub const EPOCH_MS: u64 = 1_735_689_600_000;
const WORKER_BITS: u32 = 10;
const SEQ_BITS: u32 = 12;
/// The highest worker id.
pub const MAX_WORKER: u16 = (1 << WORKER_BITS) - 1;
const MAX_SEQ: u64 = (1 << SEQ_BITS) - 1;

/// Why an id could not be issued.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    /// The clock went back further than the tolerated bound.
    #[error("clock moved backwards by {0} ms (more than the tolerated bound); refusing to issue ids")]
    ClockBackwards(u64),
    /// The worker id does not fit in the id layout.
    #[error("worker id {0} is out of range 0..={MAX_WORKER}")]
    WorkerOutOfRange(u16),
    /// The lease on the worker id was lost: another process may hold it now.
    #[error("the worker id lease was lost; refusing to issue ids")]
    WorkerLeaseLost,
}

/// A source of milliseconds since the Unix epoch (real clock in production, fake in tests).
pub trait Clock: Send + Sync {
    /// Current time in milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// A snowflake id generator for one worker id.
pub struct Snowflake<C: Clock = SystemClock> {
    worker: u64,
    clock: C,
    /// Tolerated step back of the clock: smaller steps are waited out.
    max_backwards: Duration,
    /// (last timestamp used, last sequence within it).
    state: Mutex<(u64, u64)>,
    /// Fencing: ids are issued only while this says the worker id is still ours.
    guard: Option<Box<dyn Fn() -> bool + Send + Sync>>,
}

impl Snowflake<SystemClock> {
    /// A generator on the system clock that tolerates a 5 ms step back.
    pub fn new(worker: u16) -> Result<Self, IdError> {
        Snowflake::with_clock(worker, SystemClock, Duration::from_millis(5))
    }
}

impl<C: Clock> Snowflake<C> {
    /// A generator with an explicit clock and backwards tolerance.
    pub fn with_clock(worker: u16, clock: C, max_backwards: Duration) -> Result<Self, IdError> {
        if worker > MAX_WORKER {
            return Err(IdError::WorkerOutOfRange(worker));
        }
        Ok(Snowflake {
            worker: worker as u64,
            clock,
            max_backwards,
            state: Mutex::new((0, 0)),
            guard: None,
        })
    }

    /// Issues ids only while `guard` returns true (e.g. while an etcd lease on the
    /// worker id is alive).
    pub fn guarded(mut self, guard: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        self.guard = Some(Box::new(guard));
        self
    }

    /// Never issue an id at or before `ms` (e.g. the newest timestamp persisted
    /// before a restart).
    pub fn not_before(&self, ms: u64) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.0 < ms {
            *state = (ms, MAX_SEQ);
        }
    }

    /// The next id.
    pub fn next_id(&self) -> Result<u64, IdError> {
        if self.guard.as_ref().is_some_and(|still_ours| !still_ours()) {
            return Err(IdError::WorkerLeaseLost);
        }
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (last, seq) = *state;
        let mut now = self.clock.now_ms().max(EPOCH_MS);
        if now < last {
            let behind = last - now;
            if behind > self.max_backwards.as_millis() as u64 {
                return Err(IdError::ClockBackwards(behind));
            }
            now = last;
        }
        let (ts, seq) = if now == last {
            if seq < MAX_SEQ {
                (now, seq + 1)
            } else {
                // Sequence exhausted in this millisecond: borrow the next one. The
                // clock catches up within a millisecond under any real load.
                (now + 1, 0)
            }
        } else {
            (now, 0)
        };
        *state = (ts, seq);
        Ok(((ts - EPOCH_MS) << (WORKER_BITS + SEQ_BITS)) | (self.worker << SEQ_BITS) | seq)
    }

    /// The millisecond timestamp inside an id.
    pub fn timestamp_ms(id: u64) -> u64 {
        (id >> (WORKER_BITS + SEQ_BITS)) + EPOCH_MS
    }

    /// The worker id inside an id.
    pub fn worker_of(id: u64) -> u16 {
        ((id >> SEQ_BITS) & MAX_WORKER as u64) as u16
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    struct FakeClock(Arc<AtomicU64>);
    impl Clock for FakeClock {
        fn now_ms(&self) -> u64 {
            self.0.load(Ordering::SeqCst)
        }
    }

    #[test]
    fn ids_are_unique_and_increasing_within_a_frozen_millisecond() {
        let t = Arc::new(AtomicU64::new(EPOCH_MS + 1000));
        let g = Snowflake::with_clock(3, FakeClock(t.clone()), Duration::from_millis(5)).unwrap();
        let mut prev = 0;
        let mut seen = HashSet::new();
        for _ in 0..10_000 {
            let id = g.next_id().unwrap();
            assert!(id > prev);
            assert!(seen.insert(id));
            assert_eq!(Snowflake::<FakeClock>::worker_of(id), 3);
            prev = id;
        }
    }

    #[test]
    fn small_clock_steps_back_are_absorbed_large_ones_refused() {
        let t = Arc::new(AtomicU64::new(EPOCH_MS + 1000));
        let g = Snowflake::with_clock(1, FakeClock(t.clone()), Duration::from_millis(5)).unwrap();
        let a = g.next_id().unwrap();
        t.store(EPOCH_MS + 997, Ordering::SeqCst);
        let b = g.next_id().unwrap();
        assert!(b > a);
        t.store(EPOCH_MS + 900, Ordering::SeqCst);
        assert_eq!(g.next_id(), Err(IdError::ClockBackwards(100)));
        t.store(EPOCH_MS + 1001, Ordering::SeqCst);
        assert!(g.next_id().unwrap() > b);
    }

    #[test]
    fn not_before_skips_past_a_persisted_timestamp() {
        let t = Arc::new(AtomicU64::new(EPOCH_MS + 5000));
        let g = Snowflake::with_clock(0, FakeClock(t.clone()), Duration::from_millis(5)).unwrap();
        g.not_before(EPOCH_MS + 5000);
        let id = g.next_id().unwrap();
        assert!(Snowflake::<FakeClock>::timestamp_ms(id) > EPOCH_MS + 5000);
        // A clock far behind what was issued before a restart is refused.
        let late = Snowflake::with_clock(0, FakeClock(t.clone()), Duration::from_millis(5)).unwrap();
        late.not_before(EPOCH_MS + 9000);
        assert_eq!(late.next_id(), Err(IdError::ClockBackwards(4000)));
    }

    #[test]
    fn a_lost_guard_stops_issuing() {
        let ours = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let flag = ours.clone();
        let g = Snowflake::new(2).unwrap().guarded(move || flag.load(Ordering::SeqCst));
        assert!(g.next_id().is_ok());
        ours.store(false, Ordering::SeqCst);
        assert_eq!(g.next_id(), Err(IdError::WorkerLeaseLost));
    }

    #[test]
    fn worker_range_checked() {
        assert_eq!(Snowflake::new(1024).err(), Some(IdError::WorkerOutOfRange(1024)));
    }
}
