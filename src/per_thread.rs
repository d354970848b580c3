//! Per-thread state of a shared owner (an `Upstream`'s origin client, a `Metrics` registry's
//! destination counters): each worker thread builds its own value once and then uses it
//! without a lock, so nothing is shared between workers on the request path. An [`OwnerId`]
//! tells one owner's value from another's (tests, and reloads, make several owners): a thread
//! never uses a value built for another owner.
//!
//! This module depends on nothing else in tollgate.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::LocalKey;

/// A process-unique id of an owner of per-thread state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OwnerId(u64);

impl OwnerId {
    /// A new id, never given before in this process.
    pub fn new() -> OwnerId {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        OwnerId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

impl Default for OwnerId {
    fn default() -> OwnerId {
        OwnerId::new()
    }
}

/// What a `thread_local!` holds: this thread's value, and the owner it was built for.
pub type Slot<T> = RefCell<Option<(OwnerId, T)>>;

/// Runs `use_value` on this thread's value for `owner`, built by `make` first when the slot is
/// empty or holds another owner's.
pub fn with<T: 'static, R>(
    slot: &'static LocalKey<Slot<T>>,
    owner: OwnerId,
    make: impl FnOnce() -> T,
    use_value: impl FnOnce(&mut T) -> R,
) -> R {
    slot.with(|cell| {
        let mut held = cell.borrow_mut();
        match &mut *held {
            Some((id, value)) if *id == owner => use_value(value),
            _ => {
                let (_, value) = held.insert((owner, make()));
                use_value(value)
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        static SLOT: Slot<Vec<u64>> = const { RefCell::new(None) };
    }

    #[test]
    fn keeps_one_value_per_thread_for_its_owner_only() {
        let (a, b) = (OwnerId::new(), OwnerId::new());
        assert_ne!(a, b);
        with(&SLOT, a, Vec::new, |v| v.push(1));
        with(&SLOT, a, || unreachable!("built once"), |v| v.push(2));
        assert_eq!(with(&SLOT, a, Vec::new, |v| v.clone()), [1, 2]);
        // Another owner never sees a's value.
        assert_eq!(with(&SLOT, b, Vec::new, |v| v.clone()), Vec::<u64>::new());
        // Another thread builds its own.
        std::thread::spawn(move || assert!(with(&SLOT, a, Vec::new, |v| v.is_empty())))
            .join()
            .unwrap();
    }
}
