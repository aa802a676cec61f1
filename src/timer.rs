//! Hierarchical timer wheel: the one engine-wide schedule of deadlines.
//!
//! Owns timers (a deadline and a caller key) and decides which are due. Never
//! reads a clock — time is always an argument — and never lets storage order
//! (linked lists, slab reuse) leak into which timers fire or in what order.
//!
//! Design (tokio's wheel, tokio-util's safe slab storage):
//! - Time is counted in 1 ms ticks. A deadline is rounded UP to its tick so a
//!   timer never fires early; `now` is rounded DOWN. A timer fires at the first
//!   `expire(now)` whose tick reaches the deadline's tick.
//! - Six levels of 64 slots: level `l` slots are `64^l` ms wide, so the wheel
//!   covers one "epoch" of `64^6 ms = 2^36 ms` (~2.2 years). An entry lives at
//!   the highest level where its tick and the wheel's time differ, in the slot
//!   given by that level's 6-bit digit of its tick. Each level keeps an
//!   `occupied` bitmap, so the next non-empty slot is a bit trick, not a scan.
//! - Entries sit in a slab (`Vec` + free list); each slot is a doubly linked list
//!   threaded through slab indices, so insert and cancel are O(1).
//! - Deadlines past the end of the wheel's current epoch are not clamped: they
//!   wait, exact, in a `far` list that is sorted into the wheel when time enters
//!   their epoch (once per ~2.2 years of wheel time, O(far entries)).
//! - Deadlines at or before the wheel's time go to a `pending` list that the
//!   next `expire` fires.
//! - Fired timers are sorted by `(deadline, insertion sequence)` before they are
//!   returned: a total order independent of list order.
//!
//! `next_deadline` rule: each list remembers the smallest tick ever linked into
//! it since it was last emptied. Without cancellations that is exact, and the
//! answer is exactly the earliest due tick. Cancelling the earliest entry of a
//! slot that still holds others leaves that memory stale (lower); the shell may
//! then wake once early; that `expire` cascades the slot and every list it
//! refills is exact, so without further cancellations the next wake-up fires
//! something (never two empty wake-ups in a row). After `expire(t)` the answer
//! is always strictly later than `t`, so the shell cannot busy-loop on it.

use crate::time::{Timestamp, NANOS_PER_MS};

const LEVELS: usize = 6;
const SLOTS: usize = 64;
const SLOT_BITS: u32 = 6;
/// Ticks spanned by one epoch of the whole wheel: `64^6` ms.
const EPOCH_TICKS: u64 = 1 << (SLOT_BITS * LEVELS as u32);
/// Sentinel for "no entry" in list links and heads.
const NONE: u32 = u32::MAX;

/// Handle to a scheduled timer. Cancelling a handle whose timer already fired
/// or was cancelled is a harmless no-op, even if its slab slot was reused
/// (the generation no longer matches; it would take 2^32 reuses of one slot to
/// alias).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct TimerId {
    slot: u32,
    gen: u32,
}

/// Which list an entry is linked into.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Home {
    /// Kept to a byte each so a slab entry stays small.
    Slot {
        level: u8,
        slot: u8,
    },
    Pending,
    Far,
}

#[derive(Clone, Copy, Debug)]
struct List {
    head: u32,
    /// Smallest tick linked in since the list was last empty: a lower bound of
    /// its entries' ticks, exact unless its minimum was cancelled.
    min_tick: u64,
}

impl List {
    const EMPTY: List = List {
        head: NONE,
        min_tick: u64::MAX,
    };

    fn is_empty(&self) -> bool {
        self.head == NONE
    }
}

#[derive(Clone, Debug)]
struct Level {
    occupied: u64,
    slots: [List; SLOTS],
}

impl Level {
    const EMPTY: Level = Level {
        occupied: 0,
        slots: [List::EMPTY; SLOTS],
    };
}

/// A slab entry. `key` is `None` while the entry is on the free list, where
/// `next` links free entries instead of list members.
#[derive(Debug)]
struct Node<K> {
    gen: u32,
    key: Option<K>,
    deadline: Timestamp,
    seq: u64,
    home: Home,
    prev: u32,
    next: u32,
}

/// A hierarchical timer wheel over caller keys `K` (see the module docs).
#[derive(Debug)]
pub struct TimerWheel<K> {
    /// The wheel's time, in ticks (ms). Only moves forward.
    elapsed: u64,
    levels: [Level; LEVELS],
    pending: List,
    far: List,
    nodes: Vec<Node<K>>,
    free_head: u32,
    len: usize,
    next_seq: u64,
    /// Reused buffer of `(deadline, seq, key)` collected by one `expire`.
    fired: Vec<(Timestamp, u64, K)>,
}

/// A deadline's tick: rounded up, so a timer never fires before its deadline.
fn deadline_tick(deadline: Timestamp) -> u64 {
    deadline.as_nanos().div_ceil(NANOS_PER_MS)
}

fn tick_time(tick: u64) -> Timestamp {
    Timestamp::from_millis(tick)
}

/// The level at which `tick` (> `elapsed`) belongs: the highest 6-bit digit in
/// which the two differ. `None` when they differ above the wheel (another epoch).
fn level_for(elapsed: u64, tick: u64) -> Option<usize> {
    let masked = (elapsed ^ tick) | (SLOTS as u64 - 1);
    let significant = 63 - masked.leading_zeros();
    let level = (significant / SLOT_BITS) as usize;
    (level < LEVELS).then_some(level)
}

fn digit(tick: u64, level: usize) -> usize {
    ((tick >> (SLOT_BITS as usize * level)) & (SLOTS as u64 - 1)) as usize
}

impl<K> TimerWheel<K> {
    /// An empty wheel whose time starts at `now` (floored to the tick).
    pub fn new(now: Timestamp) -> Self {
        TimerWheel {
            elapsed: now.as_millis(),
            levels: [Level::EMPTY; LEVELS],
            pending: List::EMPTY,
            far: List::EMPTY,
            nodes: Vec::new(),
            free_head: NONE,
            len: 0,
            next_seq: 0,
            fired: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The wheel's time: the latest `now` given to `expire` (or `new`), floored to the tick.
    pub fn elapsed(&self) -> Timestamp {
        tick_time(self.elapsed)
    }

    /// The deadline of a live timer, `None` once it fired or was cancelled.
    pub fn deadline(&self, id: TimerId) -> Option<Timestamp> {
        self.live(id).map(|idx| self.nodes[idx as usize].deadline)
    }

    /// Schedules `key` at `deadline`. O(1). A deadline at or before the wheel's
    /// time fires on the next `expire`.
    pub fn insert(&mut self, deadline: Timestamp, key: K) -> TimerId {
        let seq = self.next_seq;
        self.next_seq += 1;
        let idx = self.allocate(deadline, seq, key);
        self.place(idx);
        self.len += 1;
        TimerId {
            slot: idx,
            gen: self.nodes[idx as usize].gen,
        }
    }

    /// Removes a live timer and returns its key. O(1). `None` if it already
    /// fired or was cancelled.
    pub fn cancel(&mut self, id: TimerId) -> Option<K> {
        let idx = self.live(id)?;
        self.unlink(idx);
        Some(self.release(idx).2)
    }

    /// The time to wake up at for the next `expire` to have work: never later
    /// than the earliest timer's tick (or the wheel's time, if something is
    /// already due), exact unless a cancellation made it early (module docs).
    #[must_use]
    pub fn next_deadline(&self) -> Option<Timestamp> {
        if !self.pending.is_empty() {
            return Some(tick_time(self.elapsed));
        }
        // Lower levels always hold earlier ticks than higher ones, and within a
        // level the first occupied slot holds the earliest, so the first slot
        // found bounds every entry.
        if let Some((level, slot, _)) = self.next_occupied_slot() {
            return Some(tick_time(self.levels[level].slots[slot].min_tick));
        }
        (!self.far.is_empty()).then(|| tick_time(self.far.min_tick))
    }

    /// The earliest timer, its deadline and key: the one the next `expire`
    /// that fires anything returns first (smallest deadline, then insertion
    /// order). `Some` exactly when `next_deadline` is, whose answer it never
    /// precedes. Walks only the list `next_deadline` looks at: O(its entries).
    #[must_use]
    pub fn peek(&self) -> Option<(Timestamp, &K)> {
        let list = if !self.pending.is_empty() {
            &self.pending
        } else if let Some((level, slot, _)) = self.next_occupied_slot() {
            &self.levels[level].slots[slot]
        } else {
            &self.far
        };
        let mut idx = list.head;
        let mut best: Option<&Node<K>> = None;
        while idx != NONE {
            let node = &self.nodes[idx as usize];
            if best.is_none_or(|b| (node.deadline, node.seq) < (b.deadline, b.seq)) {
                best = Some(node);
            }
            idx = node.next;
        }
        best.and_then(|node| Some((node.deadline, node.key.as_ref()?)))
    }

    /// Moves the wheel's time to `now` and appends every timer whose deadline
    /// tick is at or before it to `out`, sorted by (deadline, insertion order).
    /// A `now` earlier than the wheel's time is taken as the wheel's time.
    /// Cost: O(fired + cascaded entries + occupied slots passed); empty stretches
    /// of time, however long, are skipped through the bitmaps.
    pub fn expire(&mut self, now: Timestamp, out: &mut Vec<(Timestamp, K)>) {
        let target = now.as_millis().max(self.elapsed);
        self.drain_list(Home::Pending);
        while let Some((home, at)) = self.next_cascade(target) {
            self.elapsed = at;
            self.drain_list(home);
        }
        self.elapsed = target;
        self.fired
            .sort_unstable_by_key(|&(deadline, seq, _)| (deadline, seq));
        out.extend(
            self.fired
                .drain(..)
                .map(|(deadline, _, key)| (deadline, key)),
        );
    }

    /// The next list to process on the way to `target`, with the tick at which
    /// processing it must happen.
    fn next_cascade(&self, target: u64) -> Option<(Home, u64)> {
        if let Some((level, slot, start)) = self.next_occupied_slot() {
            let home = Home::Slot {
                level: level as u8,
                slot: slot as u8,
            };
            return (start <= target).then_some((home, start));
        }
        // The wheel is empty; far entries matter once time enters a later epoch.
        let target_epoch = target & !(EPOCH_TICKS - 1);
        (!self.far.is_empty() && target_epoch > self.elapsed).then_some((Home::Far, target_epoch))
    }

    /// The earliest occupied slot as (level, slot, first tick it covers).
    fn next_occupied_slot(&self) -> Option<(usize, usize, u64)> {
        for (level, lvl) in self.levels.iter().enumerate() {
            let current = digit(self.elapsed, level);
            debug_assert_eq!(lvl.occupied & !(u64::MAX << current), 0, "slot behind time");
            let ahead = lvl.occupied & (u64::MAX << current);
            if ahead != 0 {
                let slot = ahead.trailing_zeros() as usize;
                let shift = SLOT_BITS as usize * level;
                let block_start = self.elapsed & !((1u64 << (shift + SLOT_BITS as usize)) - 1);
                let start = block_start + ((slot as u64) << shift);
                return Some((level, slot, start.max(self.elapsed)));
            }
        }
        None
    }

    /// Detaches the whole list first (entries may be relinked elsewhere while we
    /// walk it), then fires what is due and re-places the rest for the new time.
    fn drain_list(&mut self, home: Home) {
        let mut idx = self.list_mut(home).head;
        self.reset_list(home);
        while idx != NONE {
            let node = &self.nodes[idx as usize];
            let next = node.next;
            if deadline_tick(node.deadline) <= self.elapsed {
                let fired = self.release(idx);
                self.fired.push(fired);
            } else {
                self.place(idx);
            }
            idx = next;
        }
    }

    /// Links an entry into the list its tick calls for, given the wheel's time.
    fn place(&mut self, idx: u32) {
        let tick = deadline_tick(self.nodes[idx as usize].deadline);
        let home = if tick <= self.elapsed {
            Home::Pending
        } else {
            match level_for(self.elapsed, tick) {
                Some(level) => Home::Slot {
                    level: level as u8,
                    slot: digit(tick, level) as u8,
                },
                None => Home::Far,
            }
        };
        let list = self.list_mut(home);
        let old_head = list.head;
        list.head = idx;
        list.min_tick = list.min_tick.min(tick);
        if let Home::Slot { level, slot } = home {
            self.levels[usize::from(level)].occupied |= 1 << slot;
        }
        if old_head != NONE {
            self.nodes[old_head as usize].prev = idx;
        }
        let node = &mut self.nodes[idx as usize];
        node.home = home;
        node.prev = NONE;
        node.next = old_head;
    }

    fn unlink(&mut self, idx: u32) {
        let Node {
            home, prev, next, ..
        } = self.nodes[idx as usize];
        if prev == NONE {
            self.list_mut(home).head = next;
        } else {
            self.nodes[prev as usize].next = next;
        }
        if next != NONE {
            self.nodes[next as usize].prev = prev;
        }
        if self.list_mut(home).is_empty() {
            self.reset_list(home);
        }
    }

    fn list_mut(&mut self, home: Home) -> &mut List {
        match home {
            Home::Slot { level, slot } => {
                &mut self.levels[usize::from(level)].slots[usize::from(slot)]
            }
            Home::Pending => &mut self.pending,
            Home::Far => &mut self.far,
        }
    }

    fn reset_list(&mut self, home: Home) {
        *self.list_mut(home) = List::EMPTY;
        if let Home::Slot { level, slot } = home {
            self.levels[usize::from(level)].occupied &= !(1 << slot);
        }
    }

    /// The slab index of a live timer, checking its generation.
    fn live(&self, id: TimerId) -> Option<u32> {
        let node = self.nodes.get(id.slot as usize)?;
        (node.gen == id.gen && node.key.is_some()).then_some(id.slot)
    }

    fn allocate(&mut self, deadline: Timestamp, seq: u64, key: K) -> u32 {
        let fresh = |gen| Node {
            gen,
            key: Some(key),
            deadline,
            seq,
            home: Home::Pending,
            prev: NONE,
            next: NONE,
        };
        if self.free_head == NONE {
            let idx = u32::try_from(self.nodes.len())
                .ok()
                .filter(|&idx| idx != NONE)
                .expect("timer wheel holds fewer than u32::MAX timers");
            self.nodes.push(fresh(0));
            return idx;
        }
        let idx = self.free_head;
        let node = &mut self.nodes[idx as usize];
        self.free_head = node.next;
        *node = fresh(node.gen);
        idx
    }

    /// Frees a detached entry; bumping the generation invalidates old ids.
    fn release(&mut self, idx: u32) -> (Timestamp, u64, K) {
        let node = &mut self.nodes[idx as usize];
        let key = node.key.take().expect("released entry is live");
        node.gen = node.gen.wrapping_add(1);
        node.next = self.free_head;
        self.free_head = idx;
        self.len -= 1;
        (node.deadline, node.seq, key)
    }
}

#[cfg(test)]
mod tests;
