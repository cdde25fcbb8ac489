//! [`Pinned`]: a shared reference into memory that something else keeps alive.
//!
//! The segment's control structures (the ring and pool control blocks, their
//! doorbells, the credit table, the liveness words) sit in a mapping that
//! both processes write. A handle on one of them is a pointer into the
//! mapping plus a [`Keepalive`]: a clone of the `Arc` that owns the mapping
//! (or, in models and tests, an `Arc` that owns the value itself), so the
//! memory outlives every handle. `Pinned<T>` is that pair, with its unsafe
//! part stated and argued once, here:
//!
//! - [`Pinned::new`] is the one `unsafe` constructor, and its contract is
//!   the only thing a caller has to uphold (the segment does, once per
//!   structure of its layout);
//! - it derefs to `&T`, and is `Send` and `Sync` exactly when `&T` is (when
//!   `T: Sync`, as atomics are): this module holds the one `unsafe impl` of
//!   both for every handle built on it;
//! - [`Pinned::project`] narrows a handle to a part of the value (a doorbell
//!   in a control block, one entry of the credit table) that shares the
//!   keepalive, so derived handles need no unsafe code;
//! - [`Pinned::from_raw_parts`] makes a slice handle (`Pinned<[T]>`), for
//!   tables.
//!
//! Not built on it: [`SharedBytes`](crate::sync::SharedBytes), the ring data
//! areas, release queues and slots. The peer writes those bytes at any time
//! and they are not made of atomics, so this crate never forms a shared
//! reference to them: it copies in and out at bounds-checked offsets (and,
//! under loom, they are loom-tracked cells rather than mapped memory). A
//! `&[u8]` over them would be unsound, and a `&[AtomicU8]` would misdescribe
//! how they are accessed (bulk copies, not per-byte atomics), so there is no
//! `&T` for a `Pinned` to hand out. `SharedBytes` carries its own keepalive
//! instead, so no handle pairs a raw pointer with a separate one.

use std::cell::Cell;
use std::marker::PhantomData;
use std::ops::Deref;
use std::ptr::NonNull;
use std::sync::Arc;

/// Keeps the memory behind a [`Pinned`] (or a `SharedBytes`) alive: the
/// mapping, or a model's boxes.
pub(crate) type Keepalive = Arc<dyn Send + Sync>;

/// A field that keeps a handle `Send` but not `Sync`: for the ends meant for
/// one thread (a ring's producer, a channel's credit sender, ...), whose
/// [`Pinned`] fields alone would make them `Sync` too. Their `&mut self`
/// methods already keep them to one thread at a time; staying `!Sync` keeps
/// the auto traits their documentation (and the public API) has always had.
pub(crate) type NotSync = PhantomData<Cell<()>>;

/// A `&T` into memory owned by a [`Keepalive`], without a lifetime: the
/// handle carries a clone of the keepalive instead. Cheap to clone (one
/// reference count).
///
/// `T: 'static` so that everything reachable from the `T` is owned by the
/// keepalive (or is itself `'static`): see [`project`](Self::project).
pub(crate) struct Pinned<T: ?Sized + 'static> {
    /// Invariant (the contract of [`Pinned::new`]): points to a valid `T`,
    /// changed only through its interior mutability, while `keep` lives.
    ptr: NonNull<T>,
    keep: Keepalive,
}

// SAFETY: a `Pinned<T>` gives out nothing but `&T` (a shared borrow of memory
// that `keep` owns), and dropping it drops only a clone of `keep`, whose
// owner is `Send + Sync`; it never drops, moves or mutably borrows the `T`.
// So it is exactly as thread-safe as `&T`, which is `Send` and `Sync` when
// `T: Sync`.
unsafe impl<T: ?Sized + Sync + 'static> Send for Pinned<T> {}
// SAFETY: see `Send` above.
unsafe impl<T: ?Sized + Sync + 'static> Sync for Pinned<T> {}

impl<T: ?Sized + 'static> Pinned<T> {
    /// A handle on the `T` at `ptr`, kept alive by `keep`.
    ///
    /// # Safety
    ///
    /// For as long as `keep` (or any clone of it) lives, `ptr` must point to
    /// an initialized, properly aligned `T` that is neither freed nor moved,
    /// and that changes only through `T`'s own interior mutability: no
    /// `&mut T` exists, and any other writer (another thread or another
    /// process mapping the same memory) writes only bytes inside `T`'s
    /// atomics or cells (or its padding) and leaves a valid `T` behind. A `T`
    /// made of atomic integers, like every shared structure of this crate,
    /// is valid for any bit pattern a peer may write.
    pub(crate) unsafe fn new(ptr: NonNull<T>, keep: Keepalive) -> Self {
        Self { ptr, keep }
    }

    /// A handle on a part of the value (a field, an entry of a slice),
    /// sharing this handle's keepalive: it stays usable after this handle is
    /// dropped.
    pub(crate) fn project<U: ?Sized + 'static>(&self, part: impl FnOnce(&T) -> &U) -> Pinned<U> {
        let ptr = NonNull::from(part(self));
        // SAFETY: `part` turns a borrow of `*self` of any lifetime into a
        // reference of that same lifetime, so the `U` it returns is inside
        // the `T` or reachable from it (`T: 'static`: nothing it reaches is
        // borrowed from elsewhere), or is `'static`. Either way it is valid
        // and changes only through interior mutability for as long as the
        // `T` is borrowed, that is, for as long as `keep` lives (this
        // handle's invariant), and the new handle holds a clone of `keep`.
        unsafe { Pinned::new(ptr, self.keep.clone()) }
    }
}

impl<T: 'static> Pinned<[T]> {
    /// A handle on the `len` elements starting at `base`.
    ///
    /// # Safety
    ///
    /// The contract of [`Pinned::new`], for the slice of `len` `T`s at `base`.
    pub(crate) unsafe fn from_raw_parts(base: NonNull<T>, len: usize, keep: Keepalive) -> Self {
        // SAFETY: the caller upholds `new`'s contract for this slice.
        unsafe { Self::new(NonNull::slice_from_raw_parts(base, len), keep) }
    }
}

#[cfg(any(test, osmos_loom))]
impl<T: Send + Sync + 'static> Pinned<T> {
    /// A handle on a value in process memory, owned by `value` (for models
    /// and tests, which build the shared structures in boxes).
    pub(crate) fn from_arc(value: Arc<T>) -> Self {
        let ptr = NonNull::from(&*value);
        // SAFETY: the `Arc` becomes the keepalive; its allocation is neither
        // freed nor moved while it lives, and an `Arc` hands out only shared
        // references, so the `T` changes only through its interior mutability.
        unsafe { Self::new(ptr, value) }
    }
}

impl<T: ?Sized + 'static> Deref for Pinned<T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: `self.keep` lives at least as long as this borrow of
        // `self`, so by the invariant `ptr` points to a valid `T` that changes
        // only through its interior mutability for that long.
        unsafe { self.ptr.as_ref() }
    }
}

impl<T: ?Sized + 'static> Clone for Pinned<T> {
    fn clone(&self) -> Self {
        Self {
            ptr: self.ptr,
            keep: self.keep.clone(),
        }
    }
}

#[cfg(all(test, not(osmos_loom)))]
mod tests {
    use super::*;
    use std::sync::Weak;

    use crate::sync::atomic::{AtomicU32, Ordering};

    /// Compiles only if `$t` is not `$trait` (the ambiguity trick of the
    /// `static_assertions` crate: with two candidate impls the call cannot
    /// pick one).
    macro_rules! assert_not_impl {
        ($t:ty: $trait:path) => {
            const _: fn() = || {
                trait AmbiguousIfImpl<A> {
                    fn some_item() {}
                }
                impl<T: ?Sized> AmbiguousIfImpl<()> for T {}
                #[allow(dead_code)]
                struct Invalid;
                impl<T: ?Sized + $trait> AmbiguousIfImpl<Invalid> for T {}
                let _ = <$t as AmbiguousIfImpl<_>>::some_item;
            };
        };
    }

    fn assert_send_sync<T: Send + Sync + ?Sized>() {}
    fn assert_send<T: Send + ?Sized>() {}

    // A handle on atomics crosses threads like `&AtomicU32` does ...
    const _: () = {
        let _ = assert_send_sync::<Pinned<AtomicU32>>;
        let _ = assert_send_sync::<Pinned<[AtomicU32]>>;
    };
    // ... and one on a `!Sync` value does not, even though the keepalive could.
    assert_not_impl!(Pinned<Cell<u32>>: Send);
    assert_not_impl!(Pinned<Cell<u32>>: Sync);
    assert_not_impl!(Pinned<[Cell<u32>]>: Sync);

    // The handles built on `Pinned` keep the auto traits they had when each
    // carried its own `unsafe impl`s: the shared handles are `Send + Sync`,
    // the single-threaded ends `Send` only.
    const _: () = {
        let _ = assert_send_sync::<crate::CreditTable>;
        let _ = assert_send_sync::<crate::Liveness>;
        let _ = assert_send_sync::<crate::BellWatcher>;
        let _ = assert_send_sync::<crate::HeldSlot>;
        let _ = assert_send::<crate::CreditSender>;
        let _ = assert_send::<crate::CreditReceiver>;
        let _ = assert_send::<crate::FrameProducer>;
        let _ = assert_send::<crate::FrameConsumer>;
        let _ = assert_send::<crate::SlotWriter>;
        let _ = assert_send::<crate::SlotReader>;
        let _ = assert_send::<crate::FrameSender>;
        let _ = assert_send::<crate::FrameReceiver>;
        let _ = assert_send::<crate::Endpoint>;
    };
    assert_not_impl!(crate::CreditSender: Sync);
    assert_not_impl!(crate::CreditReceiver: Sync);
    assert_not_impl!(crate::FrameProducer: Sync);
    assert_not_impl!(crate::FrameConsumer: Sync);
    assert_not_impl!(crate::SlotWriter: Sync);
    assert_not_impl!(crate::SlotReader: Sync);
    assert_not_impl!(crate::Endpoint: Sync);

    #[derive(Default)]
    struct Table {
        entries: [AtomicU32; 4],
        other: AtomicU32,
    }

    #[test]
    fn a_handle_reads_and_writes_through_to_the_shared_value() {
        let value = Arc::new(AtomicU32::new(1));
        let a = Pinned::from_arc(value.clone());
        let b = a.clone();
        b.store(7, Ordering::Relaxed);
        assert_eq!(a.load(Ordering::Relaxed), 7);
        assert_eq!(value.load(Ordering::Relaxed), 7);
    }

    #[test]
    fn a_projection_keeps_the_memory_alive_after_its_parent_is_dropped() {
        let table = Arc::new(Table::default());
        let weak: Weak<Table> = Arc::downgrade(&table);
        let parent = Pinned::from_arc(table);
        let entries: Pinned<[AtomicU32]> = parent.project(|t| &t.entries[..]);
        let entry = entries.project(|e| &e[2]);
        drop(parent);
        drop(entries);
        assert!(weak.upgrade().is_some(), "the projection keeps the table");
        entry.store(42, Ordering::Relaxed);
        let table = weak.upgrade().unwrap();
        assert_eq!(table.entries[2].load(Ordering::Relaxed), 42);
        assert_eq!(table.other.load(Ordering::Relaxed), 0);
        drop(table);
        drop(entry);
        assert!(weak.upgrade().is_none(), "the last handle frees it");
    }

    #[test]
    fn a_slice_handle_covers_exactly_its_elements() {
        let table = Arc::new(Table::default());
        let keep: Keepalive = table.clone();
        let base = NonNull::from(&table.entries[1]);
        // SAFETY: entries 1..4 of a table owned by `keep`, all atomics.
        let slice = unsafe { Pinned::from_raw_parts(base, 3, keep) };
        assert_eq!(slice.len(), 3);
        slice[2].store(9, Ordering::Relaxed);
        assert_eq!(table.entries[3].load(Ordering::Relaxed), 9);
    }

    #[test]
    fn a_projected_entry_moves_to_another_thread() {
        let parent = Pinned::from_arc(Arc::new(Table::default()));
        let entry = parent.project(|t| &t.entries[0]);
        let seen = entry.clone();
        drop(parent);
        std::thread::spawn(move || entry.fetch_add(5, Ordering::Relaxed))
            .join()
            .unwrap();
        assert_eq!(seen.load(Ordering::Relaxed), 5);
    }
}
