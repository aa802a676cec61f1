//! Derived timeframes: folds the closed and forming candles of ONE base series
//! (normally `1m`) into coarser timeframes (`5m`, `15m`, `1h`, `4h`, `1d`, …).
//!
//! Owns, per target timeframe, the base candles held for buckets still in flight
//! (at most [`MAX_PENDING_BUCKETS`] of them) and a ledger of finished buckets,
//! so that a derived closed candle is produced exactly when every base candle
//! of its bucket has been seen — also when the last ones arrive late, healed
//! over REST — and never twice.
//!
//! Must never: read a clock, touch the store, throttle (the engine throttles
//! each series itself), or let the forming path change what the closed path
//! holds. The reference system's forming path cleared the finalized minutes
//! and so silently lost a derived bucket whenever a closed flush came after the
//! first forming update of the next bucket.
//!
//! Restarts: the engine reads the base candles of the current buckets back from
//! the store ([`DerivedFold::restore_start`]) and hands them to
//! [`DerivedFold::restore`] with each derived series' stored head, so a bucket
//! that straddles a restart still completes.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};

use crate::model::{Candle, SeriesId, Timeframe};

/// Incomplete buckets held per target. When a base candle opens one more, the
/// oldest incomplete bucket is dropped (and counted): it is the least likely
/// to be healed. Memory per target is bounded by this × base candles per bucket.
pub const MAX_PENDING_BUCKETS: usize = 4;

/// Finished buckets remembered individually above the ledger floor. Past this
/// the floor rises, and older buckets can no longer be healed: this is the
/// healing horizon, counted in buckets of the target timeframe.
pub const FINISHED_LEDGER_CAP: usize = 64;

/// Merge rule (the reference's): open of the first, max high, min low, close of
/// the last, sum of volumes, stamped with the bucket's open time. `candles`
/// must be ascending by time. `None` when there is nothing to merge.
fn merge<'a>(bucket_open: i64, candles: impl IntoIterator<Item = &'a Candle>) -> Option<Candle> {
    let mut merged: Option<Candle> = None;
    for c in candles {
        match merged.as_mut() {
            None => merged = Some(Candle { candle_time: bucket_open, ..*c }),
            Some(m) => {
                m.high = m.high.max(c.high);
                m.low = m.low.min(c.low);
                m.close = c.close;
                m.volume = add_volumes(m.volume, c.volume);
            }
        }
    }
    merged
}

/// Volume decimals the exchange prints (Binance: 8, `"14274.62500000"`).
const VOLUME_DECIMALS: i32 = 8;

/// `a + b` summed exactly at the exchange's precision: both are taken as whole
/// units of 10^-8 and the integer sum is turned back into the nearest `f64`, so
/// a derived volume prints what the exchange's own interval kline prints
/// (`14274.625`, never the float noise `14274.625000000002` of `a + b`).
/// Beyond 2^53 units (volumes over ~90 million) the result is the nearest
/// `f64` of the exact sum, which is all an `f64` can hold.
///
/// Volumes below 2^62 units (~4.6e10) are summed in `i64`, the rest in `i128`:
/// the same exact integer sum, the same nearest `f64` (a replay profile put
/// the `i128` conversions, software routines on x86-64, at ~3% of its time).
fn add_volumes(a: f64, b: f64) -> f64 {
    const SMALL: f64 = (1u64 << 62) as f64;
    let scale = 10f64.powi(VOLUME_DECIMALS);
    let (x, y) = ((a * scale).round(), (b * scale).round());
    if x.abs() < SMALL && y.abs() < SMALL {
        return (x as i64 + y as i64) as f64 / scale;
    }
    (x as i128 + y as i128) as f64 / scale
}

/// How many base candles make one bucket of `tf`, when `tf` is a whole
/// multiple of `base` larger than it.
fn slots_per_bucket(base: Timeframe, tf: Timeframe) -> Option<usize> {
    let (b, t) = (base.seconds(), tf.seconds());
    (t > b && t % b == 0).then(|| (t / b) as usize)
}

/// Complete buckets of `tf` built from `base` candles (the derived initial
/// backfill). A bucket is emitted only when every base candle in it is present;
/// candles not aligned to `base_tf` are ignored. `base` should be ascending;
/// when it is not, it is sorted first (equal times: the later one wins).
/// Returns nothing when `tf` is not a whole multiple of `base_tf`.
pub fn rollup(base: &[Candle], base_tf: Timeframe, tf: Timeframe) -> Vec<Candle> {
    let slots = if tf == base_tf {
        1
    } else {
        match slots_per_bucket(base_tf, tf) {
            Some(n) => n,
            None => return Vec::new(),
        }
    };
    let strictly_ascending = base.windows(2).all(|w| w[0].candle_time < w[1].candle_time);
    let sorted;
    let base = if strictly_ascending {
        base
    } else {
        sorted = sorted_last_wins(base);
        &sorted[..]
    };

    let aligned: Vec<&Candle> =
        base.iter().filter(|c| c.candle_time.rem_euclid(base_tf.seconds()) == 0).collect();
    let mut out = Vec::new();
    let mut run_start = 0usize;
    while run_start < aligned.len() {
        let bucket = tf.bucket_open(aligned[run_start].candle_time);
        let run_len = aligned[run_start..]
            .iter()
            .take_while(|c| tf.bucket_open(c.candle_time) == bucket)
            .count();
        if run_len == slots {
            out.extend(merge(bucket, aligned[run_start..run_start + run_len].iter().copied()));
        }
        run_start += run_len;
    }
    out
}

/// Stable sort by time, keeping the last of equal times.
fn sorted_last_wins(candles: &[Candle]) -> Vec<Candle> {
    let mut v = candles.to_vec();
    v.sort_by_key(|c| c.candle_time);
    let mut out: Vec<Candle> = Vec::with_capacity(v.len());
    for c in v {
        match out.last_mut() {
            Some(last) if last.candle_time == c.candle_time => *last = c,
            _ => out.push(c),
        }
    }
    out
}

/// Which buckets of one target are finished (emitted, or abandoned below the
/// floor). Everything below `floor` is finished; above it, `finished` lists
/// emitted buckets one by one, bounded by [`FINISHED_LEDGER_CAP`]. In steady
/// state buckets finish in order and the set stays empty: the floor just moves.
#[derive(Debug, Clone)]
struct FinishedLedger {
    floor: i64,
    finished: BTreeSet<i64>,
}

impl FinishedLedger {
    fn new() -> Self {
        FinishedLedger { floor: i64::MIN, finished: BTreeSet::new() }
    }

    fn starting_after(head: Option<i64>, tf_s: i64) -> Self {
        let floor = head.map_or(i64::MIN, |h| h.saturating_add(tf_s));
        FinishedLedger { floor, finished: BTreeSet::new() }
    }

    fn is_finished(&self, bucket: i64) -> bool {
        bucket < self.floor || self.finished.contains(&bucket)
    }

    /// Records `bucket` as emitted; returns the floor (which may have risen).
    fn mark(&mut self, bucket: i64, tf_s: i64) -> i64 {
        self.finished.insert(bucket);
        if self.finished.len() > FINISHED_LEDGER_CAP {
            if let Some(oldest) = self.finished.pop_first() {
                self.floor = self.floor.max(oldest.saturating_add(tf_s));
            }
        }
        // Contiguous finished buckets at the floor fold into it.
        while self.finished.remove(&self.floor) {
            self.floor = self.floor.saturating_add(tf_s);
        }
        self.floor
    }
}

/// Counters of a fold, for metrics and the debug snapshot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DerivedCounters {
    /// Incomplete buckets evicted to keep memory bounded (never emitted).
    pub dropped_incomplete: u64,
    /// Base candles for buckets already finished (re-deliveries, or too late
    /// to heal), or older than every held bucket when the pending set is full.
    pub ignored_late: u64,
    /// Base candles whose time is not aligned to the base timeframe.
    pub ignored_misaligned: u64,
}

/// One derived timeframe of a base series, with its fold state.
#[derive(Debug, Clone)]
pub struct DerivedTarget {
    series: SeriesId,
    tf: Timeframe,
    slots: usize,
    pending: BTreeMap<i64, PendingBucket>,
    ledger: FinishedLedger,
    /// The buffer of the last completed bucket, reused for the next one so the
    /// steady state allocates nothing.
    spare: Vec<Candle>,
    counters: DerivedCounters,
    /// `[open, end)` of the last bucket looked up: every base candle of a bucket
    /// falls in it, so [`Self::bucket_of`] skips the division (two 64-bit
    /// divisions per target per frame were a third of the forming path).
    last_bucket: Cell<(i64, i64)>,
}

/// What the closed path did with one base candle for one target.
enum Absorbed {
    Held,
    Completed(Candle),
    Ignored,
}

impl DerivedTarget {
    fn new(series: SeriesId, tf: Timeframe, slots: usize) -> Self {
        DerivedTarget {
            series,
            tf,
            slots,
            pending: BTreeMap::new(),
            ledger: FinishedLedger::new(),
            spare: Vec::new(),
            counters: DerivedCounters::default(),
            last_bucket: Cell::new((0, 0)),
        }
    }

    /// `self.tf().bucket_open(t)`, remembered for the bucket last asked about.
    #[inline]
    pub fn bucket_of(&self, t: i64) -> i64 {
        let (open, end) = self.last_bucket.get();
        if open <= t && t < end {
            return open;
        }
        let open = self.tf.bucket_open(t);
        self.last_bucket.set((open, open.saturating_add(self.tf.seconds())));
        open
    }

    /// The derived series id (base id with this timeframe).
    pub fn series(&self) -> &SeriesId {
        &self.series
    }

    pub fn tf(&self) -> Timeframe {
        self.tf
    }

    pub fn counters(&self) -> DerivedCounters {
        self.counters
    }

    /// Open times of the incomplete buckets currently held, ascending.
    pub fn pending_buckets(&self) -> impl Iterator<Item = i64> + '_ {
        self.pending.keys().copied()
    }

    /// Base candles currently held across all pending buckets.
    pub fn held_candles(&self) -> usize {
        self.pending.values().map(|p| p.minutes.len()).sum()
    }

    fn absorb_closed(&mut self, c: &Candle) -> Absorbed {
        let bucket = self.bucket_of(c.candle_time);
        if self.ledger.is_finished(bucket) {
            self.counters.ignored_late += 1;
            return Absorbed::Ignored;
        }
        if !self.make_room_for(bucket) {
            self.counters.ignored_late += 1;
            return Absorbed::Ignored;
        }
        let spare = &mut self.spare;
        let held = self
            .pending
            .entry(bucket)
            .or_insert_with(|| PendingBucket::new(bucket, std::mem::take(spare)));
        held.insert(*c);
        if held.minutes.len() < self.slots {
            return Absorbed::Held;
        }
        self.complete(bucket)
    }

    /// Ensures `bucket` has (or can get) a pending slot: when the pending set
    /// is full, the oldest incomplete bucket is dropped — unless `bucket` is
    /// itself older than all of them, in which case it is refused.
    fn make_room_for(&mut self, bucket: i64) -> bool {
        if self.pending.contains_key(&bucket) || self.pending.len() < MAX_PENDING_BUCKETS {
            return true;
        }
        match self.pending.first_key_value() {
            Some((&oldest, _)) if oldest < bucket => {
                self.drop_pending(oldest);
                true
            }
            _ => false,
        }
    }

    fn drop_pending(&mut self, bucket: i64) {
        if self.pending.remove(&bucket).is_some() {
            self.counters.dropped_incomplete += 1;
        }
    }

    fn complete(&mut self, bucket: i64) -> Absorbed {
        let Some(PendingBucket { mut minutes, merged, .. }) = self.pending.remove(&bucket) else {
            return Absorbed::Ignored;
        };
        minutes.clear();
        self.spare = minutes;
        let floor = self.ledger.mark(bucket, self.tf.seconds());
        // A risen floor abandons whatever incomplete buckets lie below it.
        while let Some((&oldest, _)) = self.pending.first_key_value() {
            if oldest >= floor {
                break;
            }
            self.drop_pending(oldest);
        }
        match merged {
            Some(c) => Absorbed::Completed(c),
            None => Absorbed::Ignored,
        }
    }

    /// The derived forming candle for `forming`, if it is not stale: held
    /// closed candles of its bucket followed by the forming one. Reads only.
    fn forming_candle(&self, forming: &Candle) -> Option<Candle> {
        if !self.forming_live(forming) {
            return None;
        }
        let bucket = self.bucket_of(forming.candle_time);
        let Some(held) = self.pending.get(&bucket) else {
            return merge(bucket, [forming]);
        };
        // O(1) whatever the bucket size: the held minutes are merged already.
        merge(bucket, held.merged.iter().chain([forming]))
    }

    /// Whether `forming_candle` has a candle for `forming`: its bucket is not
    /// finished, and no closed candle at or after it is held (a stale update).
    fn forming_live(&self, forming: &Candle) -> bool {
        let bucket = self.bucket_of(forming.candle_time);
        !self.ledger.is_finished(bucket)
            && !self.pending.get(&bucket).is_some_and(|held| held.newest.is_some_and(|t| t >= forming.candle_time))
    }

    fn reset(&mut self, head: Option<i64>) {
        self.pending.clear();
        self.ledger = FinishedLedger::starting_after(head, self.tf.seconds());
    }
}

/// The base candles held for one incomplete bucket, and their merge so far.
#[derive(Debug, Clone)]
struct PendingBucket {
    open: i64,
    /// Ascending, unique times.
    minutes: Vec<Candle>,
    /// The time of `minutes.last()`, kept beside it: the forming path reads only
    /// this and `merged`, so it never touches the minutes' heap buffer (on a
    /// 500-series replay that load was a cache miss, half of the forming fold).
    newest: Option<i64>,
    /// `merge(open, minutes)`, kept up to date so the forming path and the
    /// completion need no pass over the minutes.
    merged: Option<Candle>,
}

impl PendingBucket {
    fn new(open: i64, mut buffer: Vec<Candle>) -> Self {
        buffer.clear();
        PendingBucket { open, minutes: buffer, newest: None, merged: None }
    }

    /// Inserts `c` keeping the minutes ascending with unique times; an equal
    /// time is replaced (the later delivery wins, as in the base dedupe). The
    /// common case, a newer candle, is a push that extends the merge; anything
    /// else recomputes it, so the result is always the ascending fold.
    fn insert(&mut self, c: Candle) {
        let newest = self.newest.is_none_or(|last| last < c.candle_time);
        // The minutes stay ascending, so the last one is the newest time.
        self.newest = Some(self.newest.map_or(c.candle_time, |last| last.max(c.candle_time)));
        if newest {
            self.minutes.push(c);
            self.merged = match self.merged {
                None => merge(self.open, [&c]),
                Some(m) => merge(self.open, [&m, &c]),
            };
        } else {
            match self.minutes.binary_search_by_key(&c.candle_time, |m| m.candle_time) {
                Ok(i) => self.minutes[i] = c,
                Err(i) => self.minutes.insert(i, c),
            }
            self.merged = merge(self.open, &self.minutes);
        }
        debug_assert_eq!(self.newest, self.minutes.last().map(|m| m.candle_time));
    }
}

/// The derived-timeframe fold of one base series.
#[derive(Debug, Clone)]
pub struct DerivedFold {
    base: SeriesId,
    base_tf: Timeframe,
    targets: Vec<DerivedTarget>,
    ignored_misaligned: u64,
}

impl DerivedFold {
    /// A fold from `base` to `targets`. Targets equal to the base timeframe or
    /// not a whole multiple of it are skipped (as in the reference); duplicates
    /// are removed; the order given is kept and is the order of the output.
    pub fn new(base: &SeriesId, targets: &[Timeframe]) -> DerivedFold {
        let base_tf = base.timeframe();
        let mut kept: Vec<DerivedTarget> = Vec::with_capacity(targets.len());
        for &tf in targets {
            let Some(slots) = slots_per_bucket(base_tf, tf) else { continue };
            if kept.iter().any(|t| t.tf == tf) {
                continue;
            }
            kept.push(DerivedTarget::new(base.with_timeframe(tf), tf, slots));
        }
        DerivedFold { base: base.clone(), base_tf, targets: kept, ignored_misaligned: 0 }
    }

    pub fn base(&self) -> &SeriesId {
        &self.base
    }

    /// The kept targets; output candles carry an index into this slice.
    pub fn targets(&self) -> &[DerivedTarget] {
        &self.targets
    }

    /// Closed path. `candles` are closed base candles, ascending, deduplicated
    /// by the caller. Appends `(target index, derived closed candle)` for every
    /// bucket this completes — grouped by target in target order, ascending by
    /// time within a target unless a late candle healed an older bucket.
    pub fn on_base_closed(&mut self, candles: &[Candle], out: &mut Vec<(usize, Candle)>) {
        let base_s = self.base_tf.seconds();
        let misaligned = candles.iter().filter(|c| c.candle_time.rem_euclid(base_s) != 0).count();
        self.ignored_misaligned += misaligned as u64;
        for (index, target) in self.targets.iter_mut().enumerate() {
            for c in candles.iter().filter(|c| c.candle_time.rem_euclid(base_s) == 0) {
                if let Absorbed::Completed(derived) = target.absorb_closed(c) {
                    out.push((index, derived));
                }
            }
        }
    }

    /// Forming path. Appends, for every target, the derived forming candle:
    /// the closed base candles already held for `forming`'s bucket merged with
    /// `forming`. Never changes what is held. Targets whose bucket is finished,
    /// or that already hold a closed candle at or after `forming`, get nothing.
    pub fn on_base_forming(&mut self, forming: &Candle, out: &mut Vec<(usize, Candle)>) {
        if forming.candle_time.rem_euclid(self.base_tf.seconds()) != 0 {
            self.ignored_misaligned += 1;
            return;
        }
        for (index, target) in self.targets.iter().enumerate() {
            if let Some(derived) = target.forming_candle(forming) {
                out.push((index, derived));
            }
        }
    }

    /// [`on_base_forming`] for the targets `wanted` names. Any other target
    /// that would get a candle gets `forming` itself in its place, unmerged:
    /// a caller whose unwanted targets have no receiver learns which would
    /// have been published without building (or sending) them.
    ///
    /// [`on_base_forming`]: DerivedFold::on_base_forming
    pub fn on_base_forming_where(&mut self, forming: &Candle, wanted: impl Fn(usize) -> bool, out: &mut Vec<(usize, Candle)>) {
        if forming.candle_time.rem_euclid(self.base_tf.seconds()) != 0 {
            self.ignored_misaligned += 1;
            return;
        }
        for (index, target) in self.targets.iter().enumerate() {
            let derived = if wanted(index) { target.forming_candle(forming) } else { target.forming_live(forming).then_some(*forming) };
            if let Some(derived) = derived {
                out.push((index, derived));
            }
        }
    }

    /// How many seconds of base candles a restore needs: the largest target
    /// timeframe (one whole bucket of it).
    pub fn restore_window(&self) -> i64 {
        self.targets.iter().map(|t| t.tf.seconds()).max().unwrap_or(0)
    }

    /// The earliest base candle time the engine must read back from the store
    /// (through `base_head`, the newest stored base candle) for [`restore`]:
    /// the open of the bucket each target is filling next, the earliest of them.
    ///
    /// [`restore`]: DerivedFold::restore
    pub fn restore_start(&self, base_head: i64) -> i64 {
        let tfs: Vec<Timeframe> = self.targets.iter().map(|t| t.tf).collect();
        crate::model::restore_start(self.base_tf, &tfs, base_head)
    }

    /// Rebuilds the fold at job start so restarts lose no bucket.
    ///
    /// `base_candles`: the stored base candles from [`restore_start`] on,
    /// ascending. `heads`: `(target index, stored head time)` of each derived
    /// series — buckets at or before a head are treated as already emitted.
    /// Targets not listed are treated as having no stored rows.
    ///
    /// Pending buckets are refilled so the next closing base candle completes
    /// its bucket. A bucket found complete in `base_candles` but newer than
    /// its derived head (the derived write was missed) is appended to `out`:
    /// the engine should persist it.
    ///
    /// [`restore_start`]: DerivedFold::restore_start
    pub fn restore(
        &mut self,
        base_candles: &[Candle],
        heads: &[(usize, Option<i64>)],
        out: &mut Vec<(usize, Candle)>,
    ) {
        for target in &mut self.targets {
            target.reset(None);
        }
        for &(index, head) in heads {
            if let Some(target) = self.targets.get_mut(index) {
                target.reset(head);
            }
        }
        self.on_base_closed(base_candles, out);
    }

    /// Counters summed over all targets.
    pub fn counters(&self) -> DerivedCounters {
        let mut sum = DerivedCounters { ignored_misaligned: self.ignored_misaligned, ..Default::default() };
        for t in &self.targets {
            sum.dropped_incomplete += t.counters.dropped_incomplete;
            sum.ignored_late += t.counters.ignored_late;
        }
        sum
    }

    /// Incomplete buckets dropped to keep memory bounded, over all targets.
    pub fn dropped_incomplete(&self) -> u64 {
        self.counters().dropped_incomplete
    }
}

/// Example tests state the expected candles as literal numbers (worked out
/// by hand from `minute(t)`'s prices), never by calling `merge`/`rollup`: a
/// wrong merge rule must fail them, not agree with itself. The property tests
/// at the end compare the streaming fold with the batch `rollup` on purpose
/// (two code paths that must agree), and `rollup` has literal tests of its own.
#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tf(s: &str) -> Timeframe {
        Timeframe::parse(s).unwrap()
    }

    proptest::proptest! {
        /// The remembered bucket never changes an answer, whatever the order of
        /// the times asked about (weeks included, with their Monday offset).
        #[test]
        fn bucket_of_is_bucket_open(
            tf_name in proptest::sample::select(&["5m", "15m", "1h", "4h", "1d", "1w"][..]),
            times in proptest::collection::vec(-2_000_000i64..2_000_000_000, 1..60),
        ) {
            let tf = tf(tf_name);
            let target = DerivedTarget::new(sid(), tf, 1);
            for t in times {
                for t in [t, t + 1, t - 1, t + 60] {
                    proptest::prop_assert_eq!(target.bucket_of(t), tf.bucket_open(t));
                }
            }
        }
    }

    fn sid() -> SeriesId {
        SeriesId::parse("binance:futures:BTC/USDT:1m").unwrap()
    }

    fn c(t: i64, o: f64, h: f64, l: f64, cl: f64, v: f64) -> Candle {
        Candle { candle_time: t, open: o, high: h, low: l, close: cl, volume: v }
    }

    /// A plain minute whose values identify its time.
    fn minute(t: i64) -> Candle {
        let p = 100.0 + (t / 60) as f64;
        c(t, p, p + 1.0, p - 1.0, p + 0.5, 1.0)
    }

    fn minutes(range: std::ops::Range<i64>) -> Vec<Candle> {
        range.step_by(60).map(minute).collect()
    }

    fn fold(targets: &[&str]) -> DerivedFold {
        let tfs: Vec<Timeframe> = targets.iter().map(|s| tf(s)).collect();
        DerivedFold::new(&sid(), &tfs)
    }

    fn closed(f: &mut DerivedFold, candles: &[Candle]) -> Vec<(usize, Candle)> {
        let mut out = Vec::new();
        f.on_base_closed(candles, &mut out);
        out
    }

    fn forming(f: &mut DerivedFold, candle: Candle) -> Vec<(usize, Candle)> {
        let mut out = Vec::new();
        f.on_base_forming(&candle, &mut out);
        out
    }

    #[test]
    fn targets_skip_base_non_multiples_and_duplicates_keeping_order() {
        let f = fold(&["1h", "5m", "1m", "5m", "1d"]);
        let names: Vec<String> = f.targets().iter().map(|t| t.series().to_string()).collect();
        assert_eq!(
            names,
            ["binance:futures:BTC/USDT:1h", "binance:futures:BTC/USDT:5m", "binance:futures:BTC/USDT:1d"]
        );
        let base5 = SeriesId::parse("binance:spot:ETH/USDT:5m").unwrap();
        let f = DerivedFold::new(&base5, &[tf("1m"), tf("7m"), tf("15m")]);
        assert_eq!(f.targets().len(), 1);
        assert_eq!(f.targets()[0].tf(), tf("15m"));
    }

    /// Reference: test_rollup_closed_candles_5m_happy_path.
    #[test]
    fn derived_volume_is_the_exact_decimal_sum() {
        let v = [2797.964, 3606.372, 4154.893, 1375.438, 1113.39];
        let naive: f64 = v.iter().sum();
        assert_eq!(naive.to_string(), "13048.056999999999", "the float sum carries noise");
        let base: Vec<Candle> = v.iter().enumerate().map(|(i, v)| c(i as i64 * 60, 1.0, 1.0, 1.0, 1.0, *v)).collect();
        let rolled = rollup(&base, tf("1m"), tf("5m"));
        assert_eq!(rolled[0].volume.to_string(), "13048.057");
        let mut f = fold(&["5m"]);
        let out = closed(&mut f, &base);
        assert_eq!(out[0].1.volume.to_string(), "13048.057", "the live fold sums the same way");
        assert_eq!(add_volumes(0.1, 0.2).to_string(), "0.3");
    }

    proptest::proptest! {
        /// The `i64` fast path sums exactly what the `i128` sum gives, on both
        /// sides of its bound (~4.6e10) and for any finite volume.
        #[test]
        fn volume_sum_fast_path_matches_the_i128_sum(
            a in proptest::prop_oneof![0.0..1e6f64, 4.0e10..5.0e10f64, -1e12..1e12f64, -1e25..1e25f64],
            b in proptest::prop_oneof![0.0..1e6f64, 4.0e10..5.0e10f64, -1e12..1e12f64, -1e25..1e25f64],
        ) {
            let scale = 10f64.powi(VOLUME_DECIMALS);
            let units = |v: f64| (v * scale).round() as i128;
            let reference = (units(a) + units(b)) as f64 / scale;
            proptest::prop_assert_eq!(add_volumes(a, b).to_bits(), reference.to_bits());
        }
    }

    #[test]
    fn rollup_5m_happy_path() {
        let base = vec![
            c(0, 10.0, 11.0, 9.5, 10.5, 1.0),
            c(60, 10.5, 12.0, 9.0, 11.0, 2.0),
            c(120, 11.0, 13.0, 10.0, 12.0, 3.0),
            c(180, 12.0, 12.5, 11.0, 11.5, 4.0),
            c(240, 11.5, 12.6, 11.2, 12.4, 5.0),
        ];
        let got = rollup(&base, Timeframe::M1, tf("5m"));
        assert_eq!(got, vec![c(0, 10.0, 13.0, 9.0, 12.4, 15.0)]);
    }

    #[test]
    fn rollup_keeps_complete_buckets_only() {
        let mut base = minutes(0..600);
        base.remove(7); // a hole in the second bucket
        let got = rollup(&base, Timeframe::M1, tf("5m"));
        assert_eq!(got.iter().map(|c| c.candle_time).collect::<Vec<_>>(), vec![0]);
        assert!(rollup(&minutes(0..600), tf("5m"), tf("7m")).is_empty());
        // Unsorted input with a duplicate: sorted, the later one wins.
        let mut shuffled = minutes(0..300);
        shuffled.reverse();
        shuffled.push(c(60, 1.0, 500.0, 1.0, 1.0, 1.0));
        assert_eq!(rollup(&shuffled, Timeframe::M1, tf("5m"))[0].high, 500.0);
    }

    /// Reference: test_fanout_emits_derived_closed_when_bucket_complete.
    #[test]
    fn fanout_emits_5m_when_bucket_complete_and_only_once() {
        let base = vec![
            c(0, 1.0, 1.5, 0.8, 1.2, 1.0),
            c(60, 1.2, 3.0, 1.0, 2.0, 1.0),
            c(120, 2.0, 2.5, 0.5, 1.1, 1.0),
            c(180, 1.1, 2.2, 1.0, 2.1, 1.0),
            c(240, 2.1, 2.4, 2.0, 2.3, 1.0),
        ];
        let mut f = fold(&["5m"]);
        assert_eq!(closed(&mut f, &base), vec![(0, c(0, 1.0, 3.0, 0.5, 2.3, 5.0))]);
        assert_eq!(closed(&mut f, &base), vec![]);
        assert_eq!(f.counters().ignored_late, 5);
    }

    #[test]
    fn incomplete_bucket_is_never_emitted() {
        let mut f = fold(&["5m"]);
        let mut base = minutes(0..600);
        base.remove(2);
        let out = closed(&mut f, &base);
        assert_eq!(out.iter().map(|(_, c)| c.candle_time).collect::<Vec<_>>(), vec![300]);
        assert_eq!(f.targets()[0].pending_buckets().collect::<Vec<_>>(), vec![0]);
    }

    /// Regression for the reference bug: a forming update of the next bucket
    /// arriving before the deferred closed flush of the bucket's last minute.
    #[test]
    fn forming_between_closed_minutes_does_not_lose_the_bucket() {
        let mut f = fold(&["5m", "15m"]);
        assert!(closed(&mut f, &minutes(0..240)).is_empty());
        let next = forming(&mut f, minute(300));
        assert_eq!(next.len(), 2);
        assert_eq!(next[0].1, Candle { candle_time: 300, ..minute(300) });
        // The 15m forming includes the closed minutes already held.
        // Minutes 0..240 (prices 100..103) and the forming 300 (105).
        assert_eq!(next[1].1, c(0, 100.0, 106.0, 99.0, 105.5, 5.0));
        let out = closed(&mut f, &[minute(240)]);
        assert_eq!(out, vec![(0, c(0, 100.0, 105.0, 99.0, 104.5, 5.0))]);
    }

    #[test]
    fn forming_merges_held_minutes_and_skips_stale_updates() {
        let mut f = fold(&["5m"]);
        closed(&mut f, &minutes(0..120));
        let out = forming(&mut f, minute(120));
        assert_eq!(out, vec![(0, c(0, 100.0, 103.0, 99.0, 102.5, 3.0))]);
        // Forming for a time already closed is stale.
        assert!(forming(&mut f, minute(60)).is_empty());
        // Forming of an emitted bucket is stale too.
        closed(&mut f, &minutes(120..300));
        assert!(forming(&mut f, minute(240)).is_empty());
        assert_eq!(f.targets()[0].held_candles(), 0);
    }

    #[test]
    fn late_healed_minute_completes_older_pending_bucket_exactly_once() {
        let mut f = fold(&["5m"]);
        let mut base = minutes(0..900);
        let late = base.remove(3); // t=180, bucket 0
        let out = closed(&mut f, &base);
        assert_eq!(out.iter().map(|(_, c)| c.candle_time).collect::<Vec<_>>(), vec![300, 600]);
        let out = closed(&mut f, &[late]);
        assert_eq!(out, vec![(0, c(0, 100.0, 105.0, 99.0, 104.5, 5.0))]);
        // Healing the same range again changes nothing.
        assert!(closed(&mut f, &minutes(0..900)).is_empty());
        assert_eq!(f.dropped_incomplete(), 0);
    }

    #[test]
    fn restore_completes_the_bucket_that_straddles_a_restart() {
        // Before the restart: the 5m bucket at 300 was half seen; bucket 0 was
        // stored (head 0); the 1h bucket had no derived rows.
        let stored = minutes(0..480);
        let mut f = fold(&["5m", "1h"]);
        assert_eq!(f.restore_window(), 3600);
        assert_eq!(f.restore_start(420), 0);
        let mut out = Vec::new();
        f.restore(&stored, &[(0, Some(0)), (1, None)], &mut out);
        assert!(out.is_empty(), "bucket 0 is already stored: {out:?}");
        let out = closed(&mut f, &minutes(480..600));
        assert_eq!(out, vec![(0, c(300, 105.0, 110.0, 104.0, 109.5, 5.0))]);
        let out = closed(&mut f, &minutes(600..3600));
        let hour: Vec<_> = out.iter().filter(|(i, _)| *i == 1).map(|(_, c)| *c).collect();
        assert_eq!(hour, vec![c(0, 100.0, 160.0, 99.0, 159.5, 60.0)]);
    }

    #[test]
    fn restore_emits_stored_complete_bucket_missing_from_derived() {
        let stored = minutes(0..600);
        let mut f = fold(&["5m"]);
        let mut out = Vec::new();
        f.restore(&stored, &[(0, Some(0))], &mut out);
        assert_eq!(out, vec![(0, c(300, 105.0, 110.0, 104.0, 109.5, 5.0))]);
    }

    #[test]
    fn one_day_from_1440_minutes() {
        let day = 19_700 * 86_400;
        let mut f = fold(&["5m", "15m", "1h", "4h", "1d"]);
        let base = minutes(day..day + 86_400);
        let mut out = Vec::new();
        for chunk in base.chunks(7) {
            f.on_base_closed(chunk, &mut out);
        }
        let per_target = |i: usize| out.iter().filter(|(j, _)| *j == i).count();
        assert_eq!([0, 1, 2, 3, 4].map(per_target), [288, 96, 24, 6, 1]);
        let daily: Vec<_> = out.iter().filter(|(i, _)| *i == 4).map(|(_, c)| *c).collect();
        // Prices 100 + minute number: 28,368,100 at the day's first minute.
        assert_eq!(daily, vec![c(day, 28_368_100.0, 28_369_540.0, 28_368_099.0, 28_369_539.5, 1440.0)]);
    }

    #[test]
    fn pending_buckets_are_bounded_and_drops_counted() {
        let mut f = fold(&["5m"]);
        // Only the first minute of each of 10 buckets: all incomplete.
        let firsts: Vec<Candle> = (0..10).map(|b| minute(b * 300)).collect();
        assert!(closed(&mut f, &firsts).is_empty());
        let t = &f.targets()[0];
        assert_eq!(t.pending_buckets().collect::<Vec<_>>(), vec![1800, 2100, 2400, 2700]);
        assert_eq!(f.dropped_incomplete(), 6);
        // A minute for a bucket older than all held ones is refused, not held.
        assert!(closed(&mut f, &[minute(60)]).is_empty());
        assert_eq!(f.targets()[0].pending_buckets().next(), Some(1800));
        assert_eq!(f.dropped_incomplete(), 6);
        assert!(f.targets()[0].held_candles() <= MAX_PENDING_BUCKETS * 5);
    }

    #[test]
    fn misaligned_base_candles_are_ignored_and_counted() {
        let mut f = fold(&["5m"]);
        let mut base = minutes(0..300);
        base.insert(1, minute(61));
        assert_eq!(closed(&mut f, &base).len(), 1);
        assert!(forming(&mut f, minute(301)).is_empty());
        assert_eq!(f.counters().ignored_misaligned, 2);
    }

    #[test]
    fn ledger_floor_rises_and_abandons_old_incomplete_buckets() {
        let mut f = fold(&["5m"]);
        let mut base = minutes(0..300 * 80);
        base.remove(0); // bucket 0 never completes
        let out = closed(&mut f, &base);
        assert_eq!(out.len(), 79);
        // After FINISHED_LEDGER_CAP newer buckets the floor passed bucket 0,
        // abandoning it: a heal that late is ignored.
        assert_eq!(f.dropped_incomplete(), 1);
        assert!(closed(&mut f, &minutes(0..300)).is_empty());
        assert!(f.targets()[0].ledger.finished.len() <= FINISHED_LEDGER_CAP);
    }

    const DAY: i64 = 19_700 * 86_400;
    const SPAN_MINUTES: usize = 360;
    const TARGETS: [&str; 4] = ["5m", "15m", "1h", "4h"];

    fn scenario() -> impl Strategy<Value = (i64, Vec<Candle>, Vec<usize>, Vec<bool>)> {
        (
            0i64..1440,
            prop::collection::btree_set(0..SPAN_MINUTES, 0..6),
            prop::collection::vec((1.0f64..100.0, 0.0f64..5.0, 0.0f64..5.0, 0.0f64..10.0), SPAN_MINUTES),
            prop::collection::vec(1usize..12, 1..80),
            prop::collection::vec(any::<bool>(), 1..80),
        )
            .prop_map(|(offset, holes, values, chunks, formings)| {
                let start = DAY + offset * 60;
                let candles = (0..SPAN_MINUTES)
                    .filter(|i| !holes.contains(i))
                    .map(|i| {
                        let (o, up, down, v) = values[i];
                        let t = start + i as i64 * 60;
                        c(t, o, o + up, (o - down).max(0.0), o + (up - down) / 2.0, v)
                    })
                    .collect();
                (start, candles, chunks, formings)
            })
    }

    /// Feeds `batches` in order with forming updates interleaved, and checks
    /// the emitted candles equal the rollup of the union, each at most once.
    fn check_against_rollup(
        batches: &[Vec<Candle>],
        formings: &[bool],
        union: &[Candle],
    ) -> Result<(), TestCaseError> {
        let mut f = fold(&TARGETS);
        let mut out = Vec::new();
        for (k, batch) in batches.iter().enumerate() {
            f.on_base_closed(batch, &mut out);
            if formings[k % formings.len()] {
                if let Some(last) = batch.last() {
                    let mut scratch = Vec::new();
                    f.on_base_forming(&minute(last.candle_time + 60), &mut scratch);
                }
            }
        }
        let mut sorted_union = union.to_vec();
        sorted_union.sort_by_key(|c| c.candle_time);
        for (i, name) in TARGETS.iter().enumerate() {
            let mut got: Vec<Candle> = out.iter().filter(|(j, _)| *j == i).map(|(_, c)| *c).collect();
            let before = got.len();
            got.sort_by_key(|c| c.candle_time);
            got.dedup_by_key(|c| c.candle_time);
            prop_assert_eq!(before, got.len(), "{} emitted a bucket twice", name);
            prop_assert_eq!(got, rollup(&sorted_union, Timeframe::M1, tf(name)), "target {}", name);
        }
        // Delivering everything again emits nothing.
        let mut again = Vec::new();
        f.on_base_closed(&sorted_union, &mut again);
        prop_assert!(again.is_empty(), "re-delivery emitted {:?}", again);
        Ok(())
    }

    fn chunked(candles: &[Candle], sizes: &[usize]) -> Vec<Vec<Candle>> {
        let mut batches = Vec::new();
        let mut rest = candles;
        let mut k = 0;
        while !rest.is_empty() {
            let n = sizes[k % sizes.len()].min(rest.len());
            batches.push(rest[..n].to_vec());
            rest = &rest[n..];
            k += 1;
        }
        batches
    }

    proptest! {
        #[test]
        fn emitted_equals_rollup_of_union_for_any_chunking(
            (_start, candles, sizes, formings) in scenario(),
        ) {
            check_against_rollup(&chunked(&candles, &sizes), &formings, &candles)?;
        }

        /// Minutes of the last 15 (at most four 5m buckets, so within the
        /// pending bound) arrive late, in arbitrary order across batches.
        #[test]
        fn late_minutes_heal_their_buckets_exactly_once(
            (start, candles, sizes, formings) in scenario(),
            late_pick in prop::collection::vec(any::<bool>(), 15),
            shuffle_seed in any::<u64>(),
        ) {
            let late_from = start + (SPAN_MINUTES as i64 - 15) * 60;
            let (mut late, on_time): (Vec<Candle>, Vec<Candle>) = candles.iter().partition(|c| {
                c.candle_time >= late_from && late_pick[((c.candle_time - late_from) / 60) as usize]
            });
            let mut batches = chunked(&on_time, &sizes);
            // Late minutes come one per batch in a shuffled order.
            let mut rng = crate::rng::Rng::new(shuffle_seed);
            for i in (1..late.len()).rev() {
                let j = rng.below(i as u64 + 1) as usize;
                late.swap(i, j);
            }
            batches.extend(late.into_iter().map(|c| vec![c]));
            check_against_rollup(&batches, &formings, &candles)?;
        }
    }
}
