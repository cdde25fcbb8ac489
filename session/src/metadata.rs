//! Response metadata: what a handler attaches to its answer, and where its
//! caller finds it.
//!
//! Metadata travels both ways. A caller sends entries with its call
//! ([`CallOptions::with_metadata`](crate::CallOptions::with_metadata)); the
//! handler reads them from its [`CallContext`](crate::CallContext). The
//! handler answers with entries of its own
//! ([`CallContext::set_response_metadata`](crate::CallContext::set_response_metadata)),
//! which the session puts on the `Response`; a caller that passed a
//! [`ResponseMetadata`] slot in its options
//! ([`CallOptions::with_response_metadata`](crate::CallOptions::with_response_metadata))
//! finds them there once the call returns. A [`Forward`](crate::Forward)
//! relays them unchanged.
//!
//! Response metadata is the peer's input, so it is bounded both ways: at
//! most [`MAX_RESPONSE_METADATA_ENTRIES`] entries, of at most
//! [`MAX_RESPONSE_METADATA_BYTES`] in all ([`metadata_bytes`]). A handler
//! that would pass a bound is refused with a [`MetadataError`] (and a
//! warning in the log); a response that passes one breaks the rule
//! `response.metadata-bounded`, which ends the session.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use crate::wire::{MetaEntry, MetaValue, Metadata};

/// Most entries a response's metadata may hold.
pub const MAX_RESPONSE_METADATA_ENTRIES: usize = 64;

/// Most bytes a response's metadata may hold, counted by [`metadata_bytes`].
pub const MAX_RESPONSE_METADATA_BYTES: usize = 16 << 10;

/// The size of `metadata` as the bounds count it: the bytes of every key
/// and value (8 for a number), saturating.
pub fn metadata_bytes(metadata: &Metadata) -> usize {
    metadata
        .iter()
        .fold(0usize, |n, e| n.saturating_add(entry_bytes(e)))
}

fn entry_bytes(e: &MetaEntry) -> usize {
    let value = match &e.value {
        MetaValue::Str(s) => s.len(),
        MetaValue::Bytes(b) => b.len(),
        MetaValue::U64(_) => 8,
    };
    e.key.len().saturating_add(value)
}

/// Checks `metadata` against the response bounds.
pub(crate) fn check_response_metadata(metadata: &Metadata) -> Result<(), MetadataError> {
    if metadata.len() > MAX_RESPONSE_METADATA_ENTRIES {
        return Err(MetadataError::TooManyEntries {
            entries: metadata.len(),
            max: MAX_RESPONSE_METADATA_ENTRIES,
        });
    }
    let bytes = metadata_bytes(metadata);
    if bytes > MAX_RESPONSE_METADATA_BYTES {
        return Err(MetadataError::TooLarge {
            bytes,
            max: MAX_RESPONSE_METADATA_BYTES,
        });
    }
    Ok(())
}

/// Why response metadata was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MetadataError {
    /// The entry would make the metadata hold more entries than allowed.
    TooManyEntries {
        /// How many entries it would hold.
        entries: usize,
        /// [`MAX_RESPONSE_METADATA_ENTRIES`].
        max: usize,
    },
    /// The entry would make the metadata larger than allowed.
    TooLarge {
        /// How many bytes it would hold ([`metadata_bytes`]).
        bytes: usize,
        /// [`MAX_RESPONSE_METADATA_BYTES`].
        max: usize,
    },
    /// The call was already answered (e.g. the entry came from a task the
    /// handler spawned, after the handler returned).
    Answered,
}

impl fmt::Display for MetadataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetadataError::TooManyEntries { entries, max } => write!(
                f,
                "response metadata would hold {entries} entries, over the limit of {max}; return more data in the result"
            ),
            MetadataError::TooLarge { bytes, max } => write!(
                f,
                "response metadata would hold {bytes} bytes of keys and values, over the limit of {max}; return large data in the result or through a channel"
            ),
            MetadataError::Answered => write!(
                f,
                "the call was already answered: response metadata must be set before the handler returns"
            ),
        }
    }
}

impl std::error::Error for MetadataError {}

/// One call's response metadata on the serving side: open (`Some`) until
/// the answer takes it. Shared by every copy of the call's context.
///
/// Most handlers never look at their context, so the shared slot is made
/// only when it is first needed: when an entry is set, or when the
/// context is copied (the copies must share it). A call answered before
/// that costs no allocation for it.
#[derive(Debug, Default)]
pub(crate) struct Answering(OnceLock<Slot>);

/// [`Answering`]'s state once decided.
#[derive(Clone, Debug)]
enum Slot {
    /// Answered before anything needed the shared slot: nothing more can
    /// be set.
    Answered,
    /// The shared slot.
    Shared(Arc<Mutex<Option<Metadata>>>),
}

impl Clone for Answering {
    fn clone(&self) -> Self {
        Answering(OnceLock::from(self.slot().clone()))
    }
}

impl Answering {
    /// Open, with no entries.
    pub(crate) fn open() -> Self {
        Answering::default()
    }

    /// The slot, made open and empty if nothing decided it yet.
    fn slot(&self) -> &Slot {
        self.0
            .get_or_init(|| Slot::Shared(Arc::new(Mutex::new(Some(Metadata::new())))))
    }

    /// The shared slot's entries (`None`: answered).
    fn lock(&self) -> Option<MutexGuard<'_, Option<Metadata>>> {
        match self.slot() {
            Slot::Answered => None,
            Slot::Shared(s) => Some(s.lock().unwrap_or_else(|p| p.into_inner())),
        }
    }

    /// Sets entry `key` (replacing one of the same key), within the bounds.
    pub(crate) fn set(&self, key: String, value: MetaValue) -> Result<(), MetadataError> {
        let Some(mut slot) = self.lock() else {
            return Err(MetadataError::Answered);
        };
        let Some(entries) = slot.as_mut() else {
            return Err(MetadataError::Answered);
        };
        let mut next = entries.clone();
        match next.iter_mut().find(|e| e.key == key) {
            Some(e) => e.value = value,
            None => next.push(MetaEntry { key, value }),
        }
        check_response_metadata(&next)?;
        *entries = next;
        Ok(())
    }

    /// Replaces every entry with `metadata`, as received from the next hop
    /// (and checked there): a forwarder's relay.
    pub(crate) fn relay(&self, metadata: Metadata) {
        if let Some(mut slot) = self.lock()
            && let Some(entries) = slot.as_mut()
        {
            *entries = metadata;
        }
    }

    /// The entries, for the answer; later sets are refused.
    pub(crate) fn take(&self) -> Metadata {
        if self.0.set(Slot::Answered).is_ok() {
            // Nothing needed the slot: no entries, and none can come.
            return Metadata::new();
        }
        self.lock().and_then(|mut s| s.take()).unwrap_or_default()
    }
}

/// Where a caller finds the metadata its call was answered with: pass it in
/// [`CallOptions::with_response_metadata`](crate::CallOptions::with_response_metadata),
/// read it once the call returned. Cheap to clone (clones share the slot).
///
/// The slot is emptied when a call with it starts and filled when that
/// call's response arrives, whatever its outcome (a service error may
/// carry metadata too); a call that ends without a response (a deadline, a
/// closed session) leaves it empty. Use one slot per call: calls sharing
/// one overwrite each other's.
///
/// ```
/// # use osmos_session::{CallOptions, ResponseMetadata};
/// let answer = ResponseMetadata::new();
/// let options = CallOptions::default().with_response_metadata(&answer);
/// // client.method_with(options, ..).await?;
/// // if let Some(v) = answer.get("cache") { .. }
/// # drop(options);
/// assert!(!answer.received());
/// ```
#[derive(Clone, Debug, Default)]
pub struct ResponseMetadata(Arc<Mutex<Option<Metadata>>>);

impl ResponseMetadata {
    /// An empty slot.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Option<Metadata>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the response of the last call made with this slot arrived.
    pub fn received(&self) -> bool {
        self.lock().is_some()
    }

    /// Every entry the response carried (none before it arrived).
    pub fn entries(&self) -> Metadata {
        self.lock().clone().unwrap_or_default()
    }

    /// The value of entry `key`, if the response carried one.
    pub fn get(&self, key: &str) -> Option<MetaValue> {
        let slot = self.lock();
        slot.as_ref()?
            .iter()
            .find(|e| e.key == key)
            .map(|e| e.value.clone())
    }

    /// Empties the slot (a call with it starts).
    pub(crate) fn clear(&self) {
        *self.lock() = None;
    }

    /// Fills the slot (the call's response arrived).
    pub(crate) fn fill(&self, metadata: Metadata) {
        *self.lock() = Some(metadata);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> MetaValue {
        MetaValue::Str(s.to_string())
    }

    /// Copies share the slot, made when the first copy is taken; an
    /// answer takes what any copy set, and nothing is set after it,
    /// whether or not the slot was ever made.
    #[test]
    fn the_slot_is_made_when_needed_and_closed_by_the_answer() {
        let untouched = Answering::open();
        assert!(untouched.0.get().is_none(), "made before it was needed");
        assert!(untouched.take().is_empty());
        assert!(
            matches!(untouched.0.get(), Some(Slot::Answered)),
            "the answer made the slot"
        );
        assert!(matches!(
            untouched.set("late".into(), text("x")),
            Err(MetadataError::Answered)
        ));
        assert!(untouched.clone().set("late".into(), text("x")).is_err());

        let original = Answering::open();
        let copy = original.clone();
        copy.set("k".into(), text("v")).unwrap();
        let answered = original.take();
        assert_eq!(answered.len(), 1);
        assert_eq!(answered[0].key, "k");
        assert!(matches!(
            copy.set("k2".into(), text("v")),
            Err(MetadataError::Answered)
        ));
    }
}
