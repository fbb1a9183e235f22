//! Remembered values: a small per-thread table ([`MemoTable`]), and the
//! typed cache's memo of decoded values built on it.

use std::cell::RefCell;
use std::hash::BuildHasher as _;

use bytes::Bytes;
use thread_local::ThreadLocal;

/// A small table of values remembered lately, one per thread that uses it,
/// for memos on a hot path: a value is found by a hash and confirmed by a
/// predicate (which makes it safe: a value is only ever reused when the
/// caller says it is the one asked for), and a newer value replaces the
/// least recently used of the two its hash may sit in.
///
/// **Per thread**: a shared table took a lock per use, and the values it
/// handed out were shared as well, so every hit wrote a lock word and
/// reference counts that the other cores' hits wrote too (with a few hot
/// keys, every core serialises on their slots). **Two ways**: with one place
/// per hash, two hot values whose hashes meet evict each other on every use
/// (one run in twenty-five with the seed's ten users: a fifth of all hits
/// paid a decode). Memory is bounded by the threads that use it times its
/// entries times the largest value; a thread's table is made on its first use.
pub struct MemoTable<T: Send> {
    sets: ThreadLocal<RefCell<Box<[Set<T>]>>>,
    /// Sets per thread, a power of two.
    size: usize,
}

/// The two places of one hash, and which was used last.
struct Set<T> {
    ways: [Option<T>; 2],
    recent: usize,
}

impl<T: Send> MemoTable<T> {
    /// A table of about `entries` values a thread (at least two, rounded up
    /// to a power of two).
    pub fn new(entries: usize) -> Self {
        Self {
            sets: ThreadLocal::new(),
            size: (entries / 2).max(1).next_power_of_two(),
        }
    }

    /// How many values a thread's table holds.
    pub fn capacity(&self) -> usize {
        self.size * 2
    }

    /// This thread's sets, and the index of `hash`'s.
    fn set(&self, hash: u64) -> (&RefCell<Box<[Set<T>]>>, usize) {
        let sets = self.sets.get_or(|| {
            RefCell::new(
                (0..self.size)
                    .map(|_| Set {
                        ways: [None, None],
                        recent: 0,
                    })
                    .collect(),
            )
        });
        // The mask keeps the index in bounds.
        #[allow(clippy::cast_possible_truncation)]
        let index = (hash as usize) & (self.size - 1);
        (sets, index)
    }

    /// `read` of the remembered value under `hash` that `is` accepts, if any.
    /// `is` and `read` must not use this table (it is borrowed meanwhile).
    pub fn find<R>(
        &self,
        hash: u64,
        is: impl Fn(&T) -> bool,
        read: impl FnOnce(&T) -> R,
    ) -> Option<R> {
        let (sets, index) = self.set(hash);
        let mut sets = sets.borrow_mut();
        let set = &mut sets[index];
        let way = (0..2).find(|&way| set.ways[way].as_ref().is_some_and(&is))?;
        set.recent = way;
        set.ways[way].as_ref().map(read)
    }

    /// Remembers `value` under `hash`, in place of the least recently used
    /// value of its set.
    pub fn remember(&self, hash: u64, value: T) {
        let (sets, index) = self.set(hash);
        let old = {
            let mut sets = sets.borrow_mut();
            let set = &mut sets[index];
            let way = if set.ways[0].is_none() {
                0
            } else {
                1 - set.recent
            };
            set.recent = way;
            set.ways[way].replace(value)
        };
        // Dropped once the table is no longer borrowed.
        drop(old);
    }
}

/// The values a typed cache decoded lately, each beside the bytes it came
/// from. A read whose bytes are equal to a remembered entry's (compared in
/// full, so a value is only ever reused for exactly the bytes it was decoded
/// from) takes a clone of the value instead of decoding again. On a hit
/// served from memory (the in-memory backend, the near cache) the decode of
/// a JSON record (parse, then validation of every part) was the largest cost
/// of the whole request above the HTTP work (docs/PERFORMANCE.md,
/// "Cutting the shared hit path").
///
/// It changes no outcome: which bytes a key holds is still the backend's
/// answer on every read (expiry, invalidation and writes are all the
/// backend's), and decoding is a pure function of the bytes; bytes that do
/// not decode are never remembered, so a corrupt entry is still found and
/// removed on every read. A [`MemoTable`]: per thread, two ways.
pub(crate) struct DecodeMemo<V: Send> {
    table: MemoTable<(Bytes, V)>,
    hasher: foldhash::fast::FixedState,
    /// `V::clone`, taken where `V: Clone` is known, so the typed cache's
    /// read path needs no `Clone` bound of its own.
    clone: fn(&V) -> V,
}

impl<V: Send> DecodeMemo<V> {
    /// A memo of about `entries` values a thread; `None` for 0.
    pub(crate) fn new(entries: usize) -> Option<Self>
    where
        V: Clone,
    {
        if entries == 0 {
            return None;
        }
        Some(Self {
            table: MemoTable::new(entries),
            hasher: foldhash::fast::FixedState::with_seed(fastrand::u64(..)),
            clone: V::clone,
        })
    }

    /// The value decoded from these very bytes, if remembered.
    pub(crate) fn get(&self, bytes: &[u8]) -> Option<V> {
        self.table.find(
            self.hasher.hash_one(bytes),
            |(seen, _)| seen.as_ref() == bytes,
            |(_, value)| (self.clone)(value),
        )
    }

    /// Remembers that `bytes` decode to `value`, and returns the value.
    ///
    /// The bytes are copied: a buffer a backend hands out may be a slice of
    /// a larger one (a whole reply), which keeping would hold whole.
    pub(crate) fn remember(&self, bytes: &[u8], value: V) -> V {
        let copy = (self.clone)(&value);
        self.table.remember(
            self.hasher.hash_one(bytes),
            (Bytes::copy_from_slice(bytes), copy),
        );
        value
    }

    /// How many values a thread remembers.
    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.table.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_is_reused_only_for_equal_bytes() {
        let memo = DecodeMemo::<String>::new(8).expect("slots");
        assert_eq!(memo.get(b"{\"a\":1}"), None);
        memo.remember(b"{\"a\":1}", "one".into());
        // Equal bytes in another buffer (as a network read gives them).
        let again = Bytes::from(b"{\"a\":1}".to_vec());
        assert_eq!(memo.get(&again), Some("one".into()));
        assert_eq!(memo.get(b"{\"a\":2}"), None);
    }

    #[test]
    fn two_values_of_one_hash_both_stay_and_a_third_replaces_the_least_recently_used() {
        let table = MemoTable::<u32>::new(2);
        assert_eq!(table.capacity(), 2, "one set of two");
        let find = |n: u32| table.find(7, |v| *v == n, |v| *v);
        table.remember(7, 1);
        table.remember(7, 2);
        assert_eq!((find(1), find(2)), (Some(1), Some(2)));
        // 2 was used last: 3 takes 1's place.
        table.remember(7, 3);
        assert_eq!((find(1), find(2), find(3)), (None, Some(2), Some(3)));
    }

    #[test]
    fn each_thread_remembers_its_own() {
        let memo = DecodeMemo::<String>::new(8).expect("slots");
        memo.remember(b"x", "here".into());
        std::thread::scope(|scope| {
            scope.spawn(|| {
                assert_eq!(memo.get(b"x"), None, "another thread decodes for itself");
                memo.remember(b"x", "there".into());
                assert_eq!(memo.get(b"x"), Some("there".into()));
            });
        });
        assert_eq!(memo.get(b"x"), Some("here".into()));
    }

    #[test]
    fn zero_entries_is_no_memo_and_sizes_round_up() {
        assert!(DecodeMemo::<u32>::new(0).is_none());
        assert_eq!(
            DecodeMemo::<u32>::new(1000).map(|m| m.capacity()),
            Some(1024)
        );
        assert_eq!(MemoTable::<u32>::new(1).capacity(), 2, "at least one set");
    }
}
