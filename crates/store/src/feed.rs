//! Stored deliveries handed to the matcher in memory, in commit order.
//!
//! The store keeps every delivery durably; the feed only spares the matcher from reading
//! back what the writer just wrote. It is bounded: when the matcher falls behind, the
//! feed stops carrying deliveries and marks itself lagged, and the matcher reads what it
//! missed from the store ([`Store::pending_deliveries`](crate::Store::pending_deliveries)).
//!
//! The protocol that makes "missed" exact:
//! - the store publishes each delivery after its commit, in commit (`seq`) order;
//! - once a publish fails, every later publish is dropped until the matcher clears the mark,
//!   so the feed never has a gap in the middle, only a missing tail;
//! - the matcher clears the mark *before* it reads pending deliveries from the store, so a
//!   delivery is either in that read (committed before it) or published after the clear.
//!   Deliveries in both are recognised by their `seq` being at or below what was read.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::mpsc;

/// A stored delivery waiting to be matched: what the matcher needs of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingDelivery {
    /// Public id; increases in commit order.
    pub id: i64,
    /// Source name.
    pub source: String,
    /// The sender's delivery id.
    pub delivery_id: String,
    /// Event type.
    pub event: String,
    /// The request's headers as stored (JSON object text, secrets removed): relays pass
    /// some on, and their `if` reads them.
    pub headers: String,
    /// The body as received (JSON text).
    pub body: String,
    /// Asked for again through a replay: already matched once, so it is recorded on its
    /// own rather than by moving the matched-through mark.
    pub replay: bool,
}

impl PendingDelivery {
    /// `delivery`, just stored as `id`, as the matcher gets it.
    pub(crate) fn stored(delivery: crate::NewDelivery, id: i64) -> Self {
        Self {
            id,
            source: delivery.source,
            delivery_id: delivery.delivery_id,
            event: delivery.event,
            headers: delivery.headers,
            body: delivery.body,
            replay: false,
        }
    }
}

/// The store's end of the feed.
#[derive(Debug)]
pub(crate) struct FeedSender {
    sender: mpsc::Sender<PendingDelivery>,
    lagged: Arc<AtomicBool>,
}

impl FeedSender {
    /// Hands a committed delivery over, or marks the feed lagged if it is full or closed.
    pub(crate) fn publish(&self, delivery: PendingDelivery) {
        if self.lagged.load(Ordering::SeqCst) {
            return;
        }
        if self.sender.try_send(delivery).is_err() {
            self.lagged.store(true, Ordering::SeqCst);
        }
    }
}

/// The matcher's end of the feed.
#[derive(Debug)]
pub struct DeliveryFeed {
    receiver: mpsc::Receiver<PendingDelivery>,
    lagged: Arc<AtomicBool>,
}

impl DeliveryFeed {
    /// Waits for deliveries and moves up to `limit` into `into`; 0 once the store is gone.
    pub async fn recv_many(&mut self, into: &mut Vec<PendingDelivery>, limit: usize) -> usize {
        self.receiver.recv_many(into, limit).await
    }

    /// Moves the deliveries already waiting (up to `limit`) into `into`, without waiting.
    pub fn try_recv_many(&mut self, into: &mut Vec<PendingDelivery>, limit: usize) -> usize {
        let before = into.len();
        while into.len() - before < limit {
            match self.receiver.try_recv() {
                Ok(delivery) => into.push(delivery),
                Err(_) => break,
            }
        }
        into.len() - before
    }

    /// True if deliveries were dropped since the last call; clears the mark. Call it before
    /// reading pending deliveries from the store, never after.
    pub fn take_lagged(&self) -> bool {
        self.lagged.swap(false, Ordering::SeqCst)
    }
}

/// A feed holding at most `capacity` deliveries.
pub(crate) fn channel(capacity: usize) -> (FeedSender, DeliveryFeed) {
    let (sender, receiver) = mpsc::channel(capacity.max(1));
    let lagged = Arc::new(AtomicBool::new(false));
    (
        FeedSender {
            sender,
            lagged: lagged.clone(),
        },
        DeliveryFeed { receiver, lagged },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(id: i64) -> PendingDelivery {
        PendingDelivery {
            id,
            source: "gh".into(),
            delivery_id: id.to_string(),
            event: "push".into(),
            headers: "{}".into(),
            body: "{}".into(),
            replay: false,
        }
    }

    #[tokio::test]
    async fn a_full_feed_drops_the_tail_until_the_mark_is_cleared() {
        let (sender, mut feed) = channel(2);
        for id in 1..=4 {
            sender.publish(delivery(id));
        }
        let mut got = Vec::new();
        feed.try_recv_many(&mut got, 10);
        // 3 did not fit; 4 would have fit after nothing, but must not arrive after a gap.
        assert_eq!(got.iter().map(|d| d.id).collect::<Vec<_>>(), [1, 2]);
        sender.publish(delivery(5));
        assert_eq!(feed.try_recv_many(&mut got, 10), 0);
        assert!(feed.take_lagged());
        assert!(!feed.take_lagged());
        sender.publish(delivery(6));
        assert_eq!(feed.recv_many(&mut got, 10).await, 1);
        assert_eq!(got.last().unwrap().id, 6);
    }

    #[tokio::test]
    async fn a_closed_feed_marks_itself_lagged() {
        let (sender, feed) = channel(4);
        let lagged = feed.lagged.clone();
        drop(feed);
        sender.publish(delivery(1));
        assert!(lagged.load(Ordering::SeqCst));
    }
}
