//! Locks that outlive a panic elsewhere.
//!
//! Every lock in the proxy guards state that stays consistent between statements (counters,
//! maps, a ring's queue): a task that panicked while holding one leaves nothing half-written that
//! another must not see, and the proxy must keep serving every other viewer. So a poisoned lock
//! is taken as it is, in one place ([`recover`]), through the [`Lock`] methods.

use std::sync::{LockResult, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// The guard of a lock, poisoned or not (see the module docs).
pub fn recover<G>(result: LockResult<G>) -> G {
    result.unwrap_or_else(|p| p.into_inner())
}

/// Poison-tolerant locking of a `Mutex`.
pub trait Lock<T: ?Sized> {
    /// The guard.
    fn locked(&self) -> MutexGuard<'_, T>;
}

impl<T: ?Sized> Lock<T> for Mutex<T> {
    fn locked(&self) -> MutexGuard<'_, T> {
        recover(self.lock())
    }
}

/// Poison-tolerant reading and writing of an `RwLock`.
pub trait ReadWrite<T: ?Sized> {
    /// A read guard.
    fn read_locked(&self) -> RwLockReadGuard<'_, T>;
    /// A write guard.
    fn write_locked(&self) -> RwLockWriteGuard<'_, T>;
}

impl<T: ?Sized> ReadWrite<T> for RwLock<T> {
    fn read_locked(&self) -> RwLockReadGuard<'_, T> {
        recover(self.read())
    }
    fn write_locked(&self) -> RwLockWriteGuard<'_, T> {
        recover(self.write())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A lock poisoned by a panicking holder is still taken, with what the holder left.
    #[test]
    fn a_poisoned_lock_is_still_taken() {
        let m = Arc::new(Mutex::new(1));
        let rw = Arc::new(RwLock::new(2));
        let (m2, rw2) = (m.clone(), rw.clone());
        let _ = std::thread::spawn(move || {
            let _g = m2.lock().unwrap();
            let _w = rw2.write().unwrap();
            panic!("poison both");
        })
        .join();
        assert!(m.is_poisoned() && rw.is_poisoned());
        *m.locked() += 1;
        assert_eq!(*m.locked(), 2);
        *rw.write_locked() += 1;
        assert_eq!(*rw.read_locked(), 3);
    }
}
