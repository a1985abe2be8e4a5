//! A value one task keeps current and others read: a feature's status for
//! `/debug/state`, the latest resource sample for snapshots.
//!
//! The feature that owns the value holds a [`Published`] and updates it;
//! whoever shows it gets a clone of the handle from `main`. Nothing here
//! knows what it holds, so a feature never imports the modules that read
//! its status.

use std::sync::{Arc, Mutex, MutexGuard};

use remedy_shared::sync::lock;

/// A shared, always-readable value. Cheap to clone: clones share the value.
#[derive(Debug, Default)]
pub struct Published<T> {
    value: Arc<Mutex<T>>,
}

impl<T> Clone for Published<T> {
    fn clone(&self) -> Self {
        Published { value: self.value.clone() }
    }
}

impl<T> Published<T> {
    /// A value to publish.
    pub fn new(value: T) -> Self {
        Published { value: Arc::new(Mutex::new(value)) }
    }

    /// The value, to read or change in place. Hold it briefly: readers wait.
    pub fn lock(&self) -> MutexGuard<'_, T> {
        lock(&self.value)
    }
}

impl<T: Clone> Published<T> {
    /// A copy of the value as it is now.
    pub fn get(&self) -> T {
        self.lock().clone()
    }
}
