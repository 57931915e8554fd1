//! [`Live`]: a setting that a configuration reload (SIGHUP) may replace while the proxy runs.
//!
//! Readers take the current value (an `Arc`, cheap to clone) and keep it for the work at hand,
//! so one request or one session start never sees half of an old and half of a new value; the
//! reloader ([`crate::server::reload`]) is the only writer.

use crate::sync::ReadWrite;
use std::sync::{Arc, RwLock};

/// A value replaced as a whole by a reload.
#[derive(Debug, Default)]
pub struct Live<T>(RwLock<Arc<T>>);

impl<T> Live<T> {
    /// Starts with `value`.
    pub fn new(value: T) -> Self {
        Live(RwLock::new(Arc::new(value)))
    }

    /// The current value.
    pub fn get(&self) -> Arc<T> {
        self.0.read_locked().clone()
    }

    /// Replaces the value; readers that took the old one keep it.
    pub fn set(&self, value: T) {
        *self.0.write_locked() = Arc::new(value);
    }
}

#[cfg(test)]
mod tests {
    use super::Live;

    /// A reader keeps the value it took; the next read sees the new one.
    #[test]
    fn readers_keep_what_they_took() {
        let live = Live::new(1);
        let taken = live.get();
        live.set(2);
        assert_eq!((*taken, *live.get()), (1, 2));
    }
}
