//! The findings feed behind `/v1/findings/stream`: items numbered as they are published, and
//! the last [`REPLAY`] of them kept, so that a client that reconnects with `Last-Event-ID`
//! (as browsers' EventSource and SSE libraries do) gets what it missed while that is still
//! kept, and nothing twice.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
};

use tokio::sync::broadcast;

/// Items kept for streams that reconnect.
pub const REPLAY: usize = 1024;

/// One item of the feed: what the stream shows, whose it is (a scan's or a watch's owner;
/// `None` for discovery's, so that each stream shows its caller's own), and its number.
#[derive(Debug, Clone)]
pub struct FeedItem {
    pub seq: u64,
    pub owner: Option<u32>,
    pub value: Arc<serde_json::Value>,
}

pub struct Feed {
    tx: broadcast::Sender<FeedItem>,
    /// The last items, and the next number; publishing and subscribing hold it, so a
    /// subscriber's backlog and its live items neither overlap nor leave a gap.
    kept: Mutex<(VecDeque<FeedItem>, u64)>,
    /// This daemon's start (Unix ms): an id from an earlier run means "from the start".
    epoch: u64,
}

impl Default for Feed {
    fn default() -> Self {
        let epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Feed {
            tx: broadcast::channel(REPLAY).0,
            kept: Mutex::new((VecDeque::with_capacity(REPLAY), 1)),
            epoch,
        }
    }
}

impl Feed {
    pub fn publish(&self, owner: Option<u32>, value: serde_json::Value) {
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        let item = FeedItem {
            seq: kept.1,
            owner,
            value: Arc::new(value),
        };
        kept.1 += 1;
        if kept.0.len() == REPLAY {
            kept.0.pop_front();
        }
        kept.0.push_back(item.clone());
        // Nobody listening is fine.
        let _ = self.tx.send(item);
    }

    /// The items after `last_event_id` still kept (every kept one for an id of an earlier
    /// run; none without an id), and the live ones after them.
    pub fn subscribe(
        &self,
        last_event_id: Option<&str>,
    ) -> (Vec<FeedItem>, broadcast::Receiver<FeedItem>) {
        let after = last_event_id.map(|id| self.seq_of(id));
        let kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        let rx = self.tx.subscribe();
        let backlog = match after {
            Some(after) => kept.0.iter().filter(|i| i.seq > after).cloned().collect(),
            None => Vec::new(),
        };
        (backlog, rx)
    }

    /// The SSE `id:` of item `seq`.
    pub fn id(&self, seq: u64) -> String {
        format!("{}-{seq}", self.epoch)
    }

    /// The number an id names in this run; 0 (before everything) for another run's or a
    /// malformed one.
    fn seq_of(&self, id: &str) -> u64 {
        match id.trim().split_once('-') {
            Some((epoch, seq)) if epoch.parse() == Ok(self.epoch) => seq.parse().unwrap_or(0),
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reconnect_gets_what_it_missed_once_and_an_old_run_everything_kept() {
        let feed = Feed::default();
        for n in 0..5 {
            feed.publish(None, serde_json::json!(n));
        }
        let (none, _) = feed.subscribe(None);
        assert!(none.is_empty());
        let (after_two, mut live) = feed.subscribe(Some(&feed.id(2)));
        let seqs: Vec<u64> = after_two.iter().map(|i| i.seq).collect();
        assert_eq!(seqs, [3, 4, 5]);
        feed.publish(None, serde_json::json!("new"));
        assert_eq!(live.try_recv().unwrap().seq, 6);
        let (old_run, _) = feed.subscribe(Some("1-3"));
        assert_eq!(old_run.len(), 6);
        for _ in 0..REPLAY + 10 {
            feed.publish(None, serde_json::Value::Null);
        }
        let (kept, _) = feed.subscribe(Some("garbage"));
        assert_eq!(kept.len(), REPLAY);
    }
}
