//! Wakes long-polling `/sync` requests when anything a client may see changed.

use event_listener::{Event, EventListener};

#[derive(Default)]
pub struct Notifier {
    event: Event,
}

impl Notifier {
    /// A listener to await; take it before reading, so that no change between
    /// the read and the wait goes unnoticed.
    pub fn listen(&self) -> EventListener {
        self.event.listen()
    }

    pub fn notify(&self) {
        self.event.notify(usize::MAX);
    }
}
