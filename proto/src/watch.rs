//! A value several tasks follow, published only when it really changes.

use std::sync::Arc;

use tokio::sync::watch;

/// Puts `value` on `tx` when it differs from what is there, and says
/// whether it did: receivers wake on real changes only (a node saying
/// hello again with the same addresses tells nobody anything).
pub fn send_if_changed<T: PartialEq>(tx: &watch::Sender<Arc<T>>, value: T) -> bool {
    tx.send_if_modified(|now| {
        if **now == value {
            return false;
        }
        *now = Arc::new(value);
        true
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_different_value_wakes_the_receivers() {
        let (tx, mut rx) = watch::channel(Arc::new(1));
        rx.mark_unchanged();
        assert!(!send_if_changed(&tx, 1));
        assert!(!rx.has_changed().unwrap_or(true));
        assert!(send_if_changed(&tx, 2));
        assert!(rx.has_changed().unwrap_or(false));
        assert_eq!(**rx.borrow_and_update(), 2);
    }
}
