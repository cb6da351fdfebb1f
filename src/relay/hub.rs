//! Live fan-out of committed events to websocket subscribers.
//!
//! Each subscriber has a bounded queue. Publishing never waits: a
//! subscriber whose queue is full is kicked (its token cancelled, its queue
//! closed) and resumes later with `since`; publishers and the other
//! subscribers never notice.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::metrics::Metrics;
use super::store::StoredEvent;

/// What a subscription listens to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Topic {
    Call(String),
    All,
}

/// The receiving half of a subscription.
pub struct Subscription {
    pub id: u64,
    pub events: mpsc::Receiver<Arc<StoredEvent>>,
    /// Cancelled when the hub dropped this subscriber for being too slow.
    pub kicked: CancellationToken,
}

struct Subscriber {
    id: u64,
    tx: mpsc::Sender<Arc<StoredEvent>>,
    kicked: CancellationToken,
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    by_call: HashMap<String, Vec<Subscriber>>,
    all: Vec<Subscriber>,
}

impl Inner {
    fn list(&mut self, topic: &Topic) -> Option<&mut Vec<Subscriber>> {
        match topic {
            Topic::Call(id) => self.by_call.get_mut(id),
            Topic::All => Some(&mut self.all),
        }
    }
}

pub struct Hub {
    inner: Mutex<Inner>,
    queue: usize,
    metrics: Arc<Metrics>,
}

impl Hub {
    /// `queue` is each subscriber's queue length in events.
    pub fn new(queue: usize, metrics: Arc<Metrics>) -> Self {
        Self {
            inner: Mutex::default(),
            queue: queue.max(1),
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn subscribe(&self, topic: Topic) -> Subscription {
        let (tx, rx) = mpsc::channel(self.queue);
        let kicked = CancellationToken::new();
        let mut inner = self.lock();
        inner.next_id += 1;
        let id = inner.next_id;
        let sub = Subscriber {
            id,
            tx,
            kicked: kicked.clone(),
        };
        match topic {
            Topic::Call(call_id) => inner.by_call.entry(call_id).or_default().push(sub),
            Topic::All => inner.all.push(sub),
        }
        Subscription {
            id,
            events: rx,
            kicked,
        }
    }

    pub fn unsubscribe(&self, topic: &Topic, id: u64) {
        let mut inner = self.lock();
        if let Some(subs) = inner.list(topic) {
            subs.retain(|s| s.id != id);
            if subs.is_empty()
                && let Topic::Call(call_id) = topic
            {
                inner.by_call.remove(call_id);
            }
        }
    }

    /// Hands committed events, in `pos` order, to their subscribers.
    pub fn publish(&self, events: &[Arc<StoredEvent>]) {
        let mut inner = self.lock();
        if inner.by_call.is_empty() && inner.all.is_empty() {
            return;
        }
        let mut kicked = 0u64;
        let mut deliver = |subs: &mut Vec<Subscriber>, ev: &Arc<StoredEvent>| {
            subs.retain(|s| match s.tx.try_send(ev.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    s.kicked.cancel();
                    kicked += 1;
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            });
        };
        for ev in events {
            if let Some(subs) = inner.by_call.get_mut(ev.call_id.as_str()) {
                deliver(subs, ev);
                if subs.is_empty() {
                    inner.by_call.remove(ev.call_id.as_str());
                }
            }
            deliver(&mut inner.all, ev);
        }
        if kicked > 0 {
            self.metrics.subscriber_drops.add(kicked);
        }
    }
}
