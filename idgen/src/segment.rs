//! Segment ids: per-tag counters in etcd, handed out a segment at a time.
//!
//! Taking a segment is one compare-and-swap on `/fastim/segments/<tag>`: read the
//! counter and its revision, then write `counter + size` only if the revision is
//! unchanged; a lost race retries. Every allocator (and every restart of one) thus
//! owns disjoint ranges, so no id is ever issued twice; ids left in a segment when an
//! allocator stops are skipped, never reused.
//!
//! Each tag is double-buffered: when the current segment is down to a fifth of its
//! size, the next one is fetched in the background, so a request rarely waits for
//! etcd.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

/// Errors of segment allocation.
#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    /// etcd failed.
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    /// The stored counter is not a number.
    #[error("corrupt counter at {0}")]
    Corrupt(String),
    /// A tag must be a short name.
    #[error("tag must be 1 to 64 characters of a-z, 0-9, '_', '-'")]
    BadTag,
}

/// Ids left in the current segment and the prefetched next one.
#[derive(Default)]
struct Buffers {
    current: Range<u64>,
    next: Option<Range<u64>>,
    prefetch: Option<JoinHandle<Result<Range<u64>, SegmentError>>>,
}

/// Segment allocator for any number of tags.
pub struct SegmentAllocator {
    client: Client,
    prefix: String,
    size: u64,
    tags: std::sync::Mutex<HashMap<String, Arc<Mutex<Buffers>>>>,
}

/// Takes the next segment of `size` ids for `key`.
async fn take_segment(mut client: Client, key: String, size: u64) -> Result<Range<u64>, SegmentError> {
    loop {
        let current = client.get(key.as_str(), None).await?;
        let (start, compare) = match current.kvs().first() {
            Some(kv) => {
                let value = kv.value_str().ok().and_then(|v| v.parse::<u64>().ok());
                let value = value.ok_or_else(|| SegmentError::Corrupt(key.clone()))?;
                (
                    value,
                    Compare::mod_revision(key.as_str(), CompareOp::Equal, kv.mod_revision()),
                )
            }
            None => (1, Compare::create_revision(key.as_str(), CompareOp::Equal, 0)),
        };
        let end = start + size;
        let txn = Txn::new()
            .when([compare])
            .and_then([TxnOp::put(key.as_str(), end.to_string(), None)]);
        if client.txn(txn).await?.succeeded() {
            return Ok(start..end);
        }
        // Another allocator moved the counter first: read it again.
    }
}

impl SegmentAllocator {
    /// Segments of `size` ids, counters under `prefix` (e.g. `/fastim/segments/`).
    pub fn new(client: Client, prefix: &str, size: u64) -> SegmentAllocator {
        SegmentAllocator {
            client,
            prefix: prefix.to_owned(),
            size: size.max(1),
            tags: Default::default(),
        }
    }

    /// `count` new ids of `tag`, increasing.
    pub async fn next_ids(&self, tag: &str, count: usize) -> Result<Vec<u64>, SegmentError> {
        let valid = (1..=64).contains(&tag.len())
            && tag
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        if !valid {
            return Err(SegmentError::BadTag);
        }
        let state = self
            .tags
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(tag.to_owned())
            .or_default()
            .clone();
        let mut buffers = state.lock().await;
        let key = format!("{}{tag}", self.prefix);
        let mut ids = Vec::with_capacity(count);
        while ids.len() < count {
            if buffers.current.is_empty() {
                buffers.current = match (buffers.next.take(), buffers.prefetch.take()) {
                    (Some(next), _) => next,
                    (None, Some(fetch)) => match fetch.await {
                        Ok(result) => result?,
                        Err(_) => take_segment(self.client.clone(), key.clone(), self.size).await?,
                    },
                    (None, None) => take_segment(self.client.clone(), key.clone(), self.size).await?,
                };
            }
            let take = (count - ids.len()).min((buffers.current.end - buffers.current.start) as usize) as u64;
            ids.extend(buffers.current.start..buffers.current.start + take);
            buffers.current.start += take;
            // Prefetch the next segment when this one is down to a fifth.
            let left = buffers.current.end - buffers.current.start;
            if left * 5 <= self.size && buffers.next.is_none() && buffers.prefetch.is_none() {
                buffers.prefetch = Some(tokio::spawn(take_segment(self.client.clone(), key.clone(), self.size)));
            }
            if let Some(fetch) = buffers.prefetch.as_ref()
                && fetch.is_finished()
                && let Some(fetch) = buffers.prefetch.take()
            {
                match fetch.await {
                    Ok(Ok(next)) => buffers.next = Some(next),
                    Ok(Err(e)) => tracing::warn!(error = %e, "segment prefetch failed; fetched on demand"),
                    Err(_) => {}
                }
            }
        }
        Ok(ids)
    }
}
