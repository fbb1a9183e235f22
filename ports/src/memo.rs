//! Decoded values, remembered by the bytes they came from.

use std::cell::RefCell;
use std::hash::BuildHasher as _;

use bytes::Bytes;
use thread_local::ThreadLocal;

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
/// removed on every read.
///
/// Direct-mapped: a fixed number of slots, each set of bytes' slot given by
/// its hash; a newer value replaces whatever shared its slot. **One set of
/// slots per thread** that reads: a shared one took a lock per hit, and the
/// values it handed out were shared too, so every hit wrote a lock word and
/// a reference count that the other cores' hits wrote as well (on two cores,
/// about 0.7 µs of a hit's CPU went to such contention; docs/PERFORMANCE.md).
/// Memory is bounded by the reading threads times the slots times the
/// largest entry; a thread's slots are made on its first read.
pub(crate) struct DecodeMemo<V: Send> {
    slots: ThreadLocal<RefCell<Box<[Slot<V>]>>>,
    size: usize,
    hasher: foldhash::fast::FixedState,
    /// `V::clone`, taken where `V: Clone` is known, so the typed cache's
    /// read path needs no `Clone` bound of its own.
    clone: fn(&V) -> V,
}

/// One slot: the bytes last decoded there, and what they decoded to.
type Slot<V> = Option<(Bytes, V)>;

impl<V: Send> DecodeMemo<V> {
    /// A memo of `entries` slots a thread (rounded up to a power of two);
    /// `None` for 0.
    pub(crate) fn new(entries: usize) -> Option<Self>
    where
        V: Clone,
    {
        if entries == 0 {
            return None;
        }
        Some(Self {
            slots: ThreadLocal::new(),
            size: entries.next_power_of_two(),
            hasher: foldhash::fast::FixedState::with_seed(fastrand::u64(..)),
            clone: V::clone,
        })
    }

    /// This thread's slots, and the index of `bytes`'s.
    fn slot(&self, bytes: &[u8]) -> (&RefCell<Box<[Slot<V>]>>, usize) {
        let slots = self
            .slots
            .get_or(|| RefCell::new((0..self.size).map(|_| None).collect()));
        // The mask keeps the index in bounds.
        #[allow(clippy::cast_possible_truncation)]
        let index = (self.hasher.hash_one(bytes) as usize) & (self.size - 1);
        (slots, index)
    }

    /// The value decoded from these very bytes, if remembered.
    pub(crate) fn get(&self, bytes: &[u8]) -> Option<V> {
        let (slots, index) = self.slot(bytes);
        // Borrowed only here and in `remember`, neither of which calls out
        // while borrowing: it is never borrowed twice.
        match &slots.borrow()[index] {
            Some((seen, value)) if seen.as_ref() == bytes => Some((self.clone)(value)),
            _ => None,
        }
    }

    /// Remembers that `bytes` decode to `value`, and returns the value.
    ///
    /// The bytes are copied: a buffer a backend hands out may be a slice of
    /// a larger one (a whole reply), which keeping would hold whole.
    pub(crate) fn remember(&self, bytes: &[u8], value: V) -> V {
        let copy = (self.clone)(&value);
        let (slots, index) = self.slot(bytes);
        let old = slots.borrow_mut()[index].replace((Bytes::copy_from_slice(bytes), copy));
        // Dropped once the slots are no longer borrowed.
        drop(old);
        value
    }

    /// How many slots a thread has.
    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.size
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
    fn a_newer_value_replaces_the_one_in_its_slot() {
        let memo = DecodeMemo::<u32>::new(1).expect("a slot");
        memo.remember(b"1", 1);
        memo.remember(b"2", 2);
        assert_eq!(memo.get(b"1"), None);
        assert_eq!(memo.get(b"2"), Some(2));
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
    }
}
