//! Which node serves each hash slot of a Redis Cluster, as `CLUSTER SLOTS`
//! said: lets a batch of keys in many slots go to each node as one pipeline
//! of per-slot commands (Redis refuses one command across slots, not a
//! pipeline of single-slot commands on the node that serves them all).
//!
//! The map is a hint, never trusted for correctness: a node that no longer
//! serves a slot answers `MOVED`, the map is dropped, and that batch is sent
//! again slot by slot, each command following its own redirect.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use redis::Value;

/// Hash slots in a cluster.
const SLOTS: usize = 16_384;
/// A map is loaded at most this often (a cluster in the middle of a
/// resharding would otherwise be asked for it on every batch).
const RELOAD_SPACING: Duration = Duration::from_millis(100);

/// The node (an index into `nodes`) serving each slot.
#[derive(Debug)]
pub(super) struct SlotMap {
    owner: Vec<u16>,
    nodes: Vec<(String, u16)>,
}

impl SlotMap {
    /// From the answer of `CLUSTER SLOTS`: `[[start, end, [host, port, id,
    /// ...], replicas...], ...]`; `None` when it does not read as one.
    pub(super) fn parse(answer: Value) -> Option<Self> {
        let Value::Array(ranges) = answer else {
            return None;
        };
        let mut map = Self {
            owner: vec![u16::MAX; SLOTS],
            nodes: Vec::new(),
        };
        for range in ranges {
            let Value::Array(fields) = range else {
                return None;
            };
            let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(master))) =
                (fields.first(), fields.get(1), fields.get(2))
            else {
                return None;
            };
            let host = match master.first()? {
                Value::BulkString(host) => String::from_utf8(host.clone()).ok()?,
                Value::SimpleString(host) => host.clone(),
                _ => return None,
            };
            let Value::Int(port) = master.get(1)? else {
                return None;
            };
            let address = (host, u16::try_from(*port).ok()?);
            let node = match map.nodes.iter().position(|known| *known == address) {
                Some(node) => node,
                None => {
                    map.nodes.push(address);
                    map.nodes.len() - 1
                }
            };
            let (start, end) = (usize::try_from(*start).ok()?, usize::try_from(*end).ok()?);
            if start > end || end >= SLOTS {
                return None;
            }
            for slot in &mut map.owner[start..=end] {
                *slot = u16::try_from(node).ok()?;
            }
        }
        Some(map)
    }

    /// The node serving `slot`, if the map names one.
    pub(super) fn node_of(&self, slot: u16) -> Option<usize> {
        match self.owner.get(usize::from(slot)) {
            Some(&node) if node != u16::MAX => Some(usize::from(node)),
            _ => None,
        }
    }

    /// `(host, port)` of every master the map names.
    pub(super) fn masters(&self) -> impl Iterator<Item = &(String, u16)> {
        self.nodes.iter()
    }

    /// `(host, port)` of node `node`.
    pub(super) fn address(&self, node: usize) -> Option<&(String, u16)> {
        self.nodes.get(node)
    }
}

/// The map a backend keeps: loaded when first needed, dropped when a node
/// answers `MOVED`, loaded again at most every [`RELOAD_SPACING`].
pub(super) struct Slots {
    map: RwLock<Option<Arc<SlotMap>>>,
    /// When a load was last started (ms since `epoch`, 0: never).
    last_load_ms: AtomicU64,
    epoch: Instant,
}

impl Default for Slots {
    fn default() -> Self {
        Self {
            map: RwLock::new(None),
            last_load_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }
}

impl Slots {
    /// The map, if one is held.
    pub(super) fn current(&self) -> Option<Arc<SlotMap>> {
        match self.map.read() {
            Ok(map) => map.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Whether a load may start now (and, if so, it counts as started).
    pub(super) fn may_load(&self) -> bool {
        let now = u64::try_from(self.epoch.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        let last = self.last_load_ms.load(Ordering::Relaxed);
        let spacing = u64::try_from(RELOAD_SPACING.as_millis()).unwrap_or(u64::MAX);
        if last != 0 && now.saturating_sub(last) < spacing {
            return false;
        }
        self.last_load_ms
            .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }

    /// Holds `map` from now on, and returns it.
    pub(super) fn store(&self, map: SlotMap) -> Arc<SlotMap> {
        let map = Arc::new(map);
        let held = Some(map.clone());
        match self.map.write() {
            Ok(mut slot) => *slot = held,
            Err(poisoned) => *poisoned.into_inner() = held,
        }
        map
    }

    /// A node answered `MOVED`: the map is out of date.
    pub(super) fn forget(&self) {
        match self.map.write() {
            Ok(mut held) => *held = None,
            Err(poisoned) => *poisoned.into_inner() = None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(host: &str, port: i64) -> Value {
        Value::Array(vec![
            Value::BulkString(host.as_bytes().to_vec()),
            Value::Int(port),
            Value::BulkString(b"id".to_vec()),
        ])
    }

    #[test]
    fn cluster_slots_map_each_slot_to_its_master() {
        let answer = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                node("10.0.0.1", 7000),
                node("10.0.0.4", 7003),
            ]),
            Value::Array(vec![
                Value::Int(5461),
                Value::Int(10922),
                node("10.0.0.2", 7001),
            ]),
            Value::Array(vec![
                Value::Int(10923),
                Value::Int(16383),
                node("10.0.0.1", 7000),
            ]),
        ]);
        let map = SlotMap::parse(answer).unwrap();
        let address = |slot| map.address(map.node_of(slot).unwrap()).cloned();
        assert_eq!(address(0), Some(("10.0.0.1".to_owned(), 7000)));
        assert_eq!(address(5461), Some(("10.0.0.2".to_owned(), 7001)));
        assert_eq!(address(16383), Some(("10.0.0.1".to_owned(), 7000)));
        assert_eq!(map.node_of(0), map.node_of(16383), "one node, one index");
    }

    #[test]
    fn an_uncovered_slot_has_no_node_and_garbage_is_no_map() {
        let answer = Value::Array(vec![Value::Array(vec![
            Value::Int(0),
            Value::Int(99),
            node("h", 1),
        ])]);
        let map = SlotMap::parse(answer).unwrap();
        assert_eq!(map.node_of(100), None);
        assert!(SlotMap::parse(Value::Int(3)).is_none());
        assert!(
            SlotMap::parse(Value::Array(vec![Value::Array(vec![
                Value::Int(5),
                Value::Int(20_000),
                node("h", 1),
            ])]))
            .is_none()
        );
    }

    #[test]
    fn loads_are_spaced() {
        let slots = Slots::default();
        assert!(slots.may_load());
        assert!(!slots.may_load(), "a second load at once waits");
    }
}
