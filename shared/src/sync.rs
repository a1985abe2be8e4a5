//! Locks that outlive a panic.
//!
//! A lock is poisoned when a thread panicked while holding it. The data
//! behind the locks that use these is left consistent at every step (plain
//! maps, counters, a state machine moved by whole transitions, a
//! configuration replaced whole), so it can still be trusted after a panic
//! elsewhere; panicking in turn would only spread one failed task to every
//! other caller.

use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// The guard of `mutex`, whether or not it is poisoned.
pub fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A read guard of `lock`, whether or not it is poisoned.
pub fn read<T: ?Sized>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

/// The write guard of `lock`, whether or not it is poisoned.
pub fn write<T: ?Sized>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_mutex_still_hands_out_its_data() {
        let mutex = Mutex::new(1);
        let poisoned = std::panic::catch_unwind(|| {
            let _guard = mutex.lock().unwrap();
            panic!("a holder panics");
        });
        assert!(poisoned.is_err() && mutex.is_poisoned());
        *lock(&mutex) += 1;
        assert_eq!(*lock(&mutex), 2);
    }

    #[test]
    fn a_poisoned_rwlock_is_still_read_and_written() {
        let rwlock = RwLock::new(1);
        let poisoned = std::panic::catch_unwind(|| {
            let _guard = rwlock.write().unwrap();
            panic!("a writer panics");
        });
        assert!(poisoned.is_err() && rwlock.is_poisoned());
        *write(&rwlock) += 1;
        assert_eq!(*read(&rwlock), 2);
    }
}
