//! Direct postcard codecs for the most common value types.
//!
//! Arguments, results and channel items are facet values encoded with
//! facet-postcard, which walks them by reflection: a fraction of a
//! microsecond even for a `u32`. A stream of small items spends most of its
//! time there. For a handful of types (integers, `bool`, `String`,
//! `Vec<u8>`), and tuples of them (a service's argument lists), this module
//! writes and reads the same bytes directly, recognizing the types by their
//! facet shape ids and finding tuple elements at the offsets facet records;
//! every other type goes through facet-postcard. The tests check both ways
//! against facet-postcard.

use facet::Facet;

/// One of the types with a direct codec.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Bool,
    U8,
    U16,
    U32,
    U64,
    I16,
    I32,
    I64,
    String,
    Bytes,
}

impl Kind {
    /// Whether a value of this kind owns memory (a failed decode must drop
    /// what it placed of it).
    fn owns(self) -> bool {
        matches!(self, Kind::String | Kind::Bytes)
    }

    /// The bits of a varint-encoded kind (an integer wider than a byte).
    fn varint_bits(self) -> Option<u32> {
        match self {
            Kind::U16 | Kind::I16 => Some(16),
            Kind::U32 | Kind::I32 => Some(32),
            Kind::U64 | Kind::I64 => Some(64),
            Kind::Bool | Kind::U8 | Kind::String | Kind::Bytes => None,
        }
    }

    /// The value of a varint-encoded kind read as `v` (at most
    /// [`varint_bits`](Self::varint_bits) bits; signed kinds zigzagged).
    fn number(self, v: u64) -> Value {
        match self {
            Kind::U16 => Value::U16(v as u16),
            Kind::U32 => Value::U32(v as u32),
            Kind::I16 => Value::I16(unzigzag(v) as i16),
            Kind::I32 => Value::I32(unzigzag(v) as i32),
            Kind::I64 => Value::I64(unzigzag(v)),
            _ => Value::U64(v),
        }
    }
}

fn kind_of(shape: &facet::Shape) -> Option<Kind> {
    use std::any::TypeId;
    // A shape's id calls a function to produce its `TypeId` at every
    // comparison (two calls per `==` between shapes): take it once and
    // compare against constants. This runs for every value encoded or
    // decoded.
    let id = shape.id.get();
    Some(if id == TypeId::of::<bool>() {
        Kind::Bool
    } else if id == TypeId::of::<u8>() {
        Kind::U8
    } else if id == TypeId::of::<u16>() {
        Kind::U16
    } else if id == TypeId::of::<u32>() {
        Kind::U32
    } else if id == TypeId::of::<u64>() {
        Kind::U64
    } else if id == TypeId::of::<i16>() {
        Kind::I16
    } else if id == TypeId::of::<i32>() {
        Kind::I32
    } else if id == TypeId::of::<i64>() {
        Kind::I64
    } else if id == TypeId::of::<String>() {
        Kind::String
    } else if id == TypeId::of::<Vec<u8>>() {
        Kind::Bytes
    } else {
        return None;
    })
}

/// Most elements of a tuple with a direct codec.
const MAX_FIELDS: usize = 8;

/// How a type is encoded directly: one value, or a tuple of them (a
/// service's argument list) as `(kind, offset)` per element in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Plan {
    /// `(kind, 0)`: the value is of the kind's type itself.
    One([(Kind, u16); 1]),
    Tuple([(Kind, u16); MAX_FIELDS], usize),
}

/// Plans this thread worked out, by the address of their type's shape (a
/// `'static` value: one address, one shape), in a small direct-mapped
/// table. A call's arguments and result are planned at every call: a hit
/// costs a lookup instead of comparing type ids with each kind's. The
/// unsafe placing and reading that a plan drives rely on it being `T`'s:
/// a shape holds its type's id, so two types never share one (even
/// constants merged by the compiler would have to be equal), and the
/// cached plan is the one `plan_of` works out from that very shape.
const PLAN_CACHE: usize = 16;

thread_local! {
    static PLANS: [std::cell::Cell<(usize, Option<Plan>)>; PLAN_CACHE] =
        const { [const { std::cell::Cell::new((0, None)) }; PLAN_CACHE] };
}

/// How `T` is encoded directly, if it is.
fn plan<'f, T: Facet<'f>>() -> Option<Plan> {
    let shape = T::SHAPE;
    let key = std::ptr::from_ref(shape) as usize;
    // Shapes are at least 8-aligned: the low bits say nothing.
    let at = (key >> 3) % PLAN_CACHE;
    let planned = PLANS.try_with(|plans| match plans[at].get() {
        (k, plan) if k == key => Some(plan),
        _ => None,
    });
    if let Ok(Some(plan)) = planned {
        return plan;
    }
    let plan = plan_of(shape);
    // A thread being torn down plans each time.
    let _ = PLANS.try_with(|plans| plans[at].set((key, plan)));
    plan
}

/// How a value of `shape` is encoded directly, if it is.
fn plan_of(shape: &facet::Shape) -> Option<Plan> {
    if let Some(k) = kind_of(shape) {
        return Some(Plan::One([(k, 0)]));
    }
    let facet::Type::User(facet::UserType::Struct(st)) = shape.ty else {
        return None;
    };
    if st.kind != facet::StructKind::Tuple || st.fields.len() > MAX_FIELDS {
        return None;
    }
    let mut fields = [(Kind::Bool, 0); MAX_FIELDS];
    for (slot, f) in fields.iter_mut().zip(st.fields) {
        *slot = (kind_of(f.shape.get())?, u16::try_from(f.offset).ok()?);
    }
    Some(Plan::Tuple(fields, st.fields.len()))
}

fn put_varint(out: &mut Vec<u8>, v: u64) {
    let mut buf = [0u8; 10];
    let n = crate::wire::varint::write_varint(&mut buf, v);
    out.extend_from_slice(&buf[..n]);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// The integer a varint-encoded kind writes (zigzagged if signed), or
/// `None` for the kinds written otherwise.
///
/// # Safety
/// `ptr` points to a live value of the type `kind` stands for.
unsafe fn varint_of(kind: Kind, ptr: *const u8) -> Option<u64> {
    // SAFETY: per the caller, `ptr` points to a value of this kind's type.
    unsafe {
        Some(match kind {
            Kind::U16 => (*ptr.cast::<u16>()).into(),
            Kind::U32 => (*ptr.cast::<u32>()).into(),
            Kind::U64 => *ptr.cast::<u64>(),
            Kind::I16 => zigzag((*ptr.cast::<i16>()).into()),
            Kind::I32 => zigzag((*ptr.cast::<i32>()).into()),
            Kind::I64 => zigzag(*ptr.cast::<i64>()),
            Kind::Bool | Kind::U8 | Kind::String | Kind::Bytes => return None,
        })
    }
}

/// The bytes of a `String` or `Vec<u8>` value, or `None` for other kinds.
///
/// # Safety
/// `ptr` points to a live value of the type `kind` stands for, which
/// outlives `'v`.
unsafe fn bytes_of<'v>(kind: Kind, ptr: *const u8) -> Option<&'v [u8]> {
    // SAFETY: per the caller.
    unsafe {
        match kind {
            Kind::String => Some((*ptr.cast::<String>()).as_bytes()),
            Kind::Bytes => Some((*ptr.cast::<Vec<u8>>()).as_slice()),
            _ => None,
        }
    }
}

/// The encoded length of the value of `kind` at `ptr`.
///
/// # Safety
/// `ptr` points to a live value of the type `kind` stands for.
unsafe fn size(kind: Kind, ptr: *const u8) -> usize {
    use crate::wire::varint::varint_len;
    // SAFETY: per the caller.
    unsafe {
        if let Some(v) = varint_of(kind, ptr) {
            varint_len(v)
        } else if let Some(b) = bytes_of(kind, ptr) {
            varint_len(b.len() as u64) + b.len()
        } else {
            1 // bool, u8
        }
    }
}

/// Writes the value of `kind` at `ptr` to the front of `out` (at least
/// [`size`] bytes long); returns its length.
///
/// # Safety
/// `ptr` points to a live value of the type `kind` stands for.
unsafe fn put_at(out: &mut [u8], kind: Kind, ptr: *const u8) -> usize {
    use crate::wire::varint::write_varint;
    // SAFETY: per the caller.
    unsafe {
        if let Some(v) = varint_of(kind, ptr) {
            write_varint(out, v)
        } else if let Some(b) = bytes_of(kind, ptr) {
            let n = write_varint(out, b.len() as u64);
            osmos_shm::copy_bytes(&mut out[n..n + b.len()], b);
            n + b.len()
        } else {
            out[0] = match kind {
                Kind::Bool => u8::from(*ptr.cast::<bool>()),
                _ => *ptr,
            };
            1
        }
    }
}

/// Appends the value of `kind` at `ptr`.
///
/// # Safety
/// `ptr` points to a live value of the type `kind` stands for.
unsafe fn put(out: &mut Vec<u8>, kind: Kind, ptr: *const u8) {
    let at = out.len();
    // SAFETY: per the caller.
    unsafe {
        out.resize(at + size(kind, ptr), 0);
        put_at(&mut out[at..], kind, ptr);
    }
}

/// The `(kind, offset)` of each element `plan` encodes, in order.
fn elements(plan: &Plan) -> &[(Kind, u16)] {
    match plan {
        Plan::One(one) => one,
        Plan::Tuple(fields, n) => &fields[..*n],
    }
}

/// A value of a type with a direct codec, measured and ready to be written
/// straight where its frame is (see [`direct`]): a stream item goes from
/// the value into the link's ring or slot with no buffer in between.
pub(crate) struct Direct<'v> {
    base: *const u8,
    plan: Plan,
    len: usize,
    _value: std::marker::PhantomData<&'v ()>,
}

// SAFETY: a `Direct` only reads the value it borrows, and is only built for
// types with a direct codec (integers, bool, `String`, `Vec<u8>` and tuples
// of them), which are all `Sync`.
unsafe impl Sync for Direct<'_> {}
// SAFETY: as above; the borrow it stands for is a shared one.
unsafe impl Send for Direct<'_> {}

/// Whether `T` has a direct codec, and how it is laid out, worked out once:
/// a channel's handle keeps its item type's, so each item skips
/// recognizing the type (comparing its id with each of the kinds').
pub(crate) struct Codec<T> {
    plan: Option<Plan>,
    _type: std::marker::PhantomData<fn(T) -> T>,
}

impl<T> Clone for Codec<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Codec<T> {}

impl<'f, T: Facet<'f>> Codec<T> {
    /// `T`'s codec.
    pub(crate) fn of() -> Self {
        Codec {
            plan: plan::<T>(),
            _type: std::marker::PhantomData,
        }
    }

    /// `v` ready to be written directly, if `T` has a direct codec.
    pub(crate) fn direct<'v>(&self, v: &'v T) -> Option<Direct<'v>> {
        direct_with(self.plan?, v)
    }
}

impl<T: Facet<'static>> Codec<T> {
    /// Decodes `bytes` (all of them) directly if `T` has a direct codec.
    pub(crate) fn decode(&self, bytes: &[u8]) -> Option<Result<T, String>> {
        decode_with(&self.plan?, bytes)
    }
}

/// `v` ready to be written directly, if its type has a direct codec.
pub(crate) fn direct<'v, 'f, T: Facet<'f>>(v: &'v T) -> Option<Direct<'v>> {
    direct_with(plan::<T>()?, v)
}

/// [`direct`] with `T`'s plan.
fn direct_with<'v, T>(plan: Plan, v: &'v T) -> Option<Direct<'v>> {
    let base = (v as *const T).cast::<u8>();
    let len = elements(&plan)
        .iter()
        // SAFETY: `plan` matched T's shape: the value's type is T itself
        // (offset 0) or the tuple element at `offset`, of this kind's type.
        .map(|&(kind, offset)| unsafe { size(kind, base.add(usize::from(offset))) })
        .sum();
    Some(Direct {
        base,
        plan,
        len,
        _value: std::marker::PhantomData,
    })
}

impl Direct<'_> {
    /// The encoding's length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Writes the encoding to the front of `out` (at least [`len`](Self::len)
    /// bytes); returns its length.
    pub(crate) fn write_to(&self, out: &mut [u8]) -> usize {
        let mut at = 0;
        for &(kind, offset) in elements(&self.plan) {
            // SAFETY: as in `direct`; the value outlives `self`.
            at += unsafe { put_at(&mut out[at..], kind, self.base.add(usize::from(offset))) };
        }
        debug_assert_eq!(at, self.len);
        at
    }
}

/// Encodes `v` directly if its type has a direct codec.
pub(crate) fn encode<'f, T: Facet<'f>>(v: &T) -> Option<Vec<u8>> {
    let d = direct(v)?;
    let mut out = vec![0; d.len()];
    d.write_to(&mut out);
    Some(out)
}

/// The smallest last element [`split`] is used for by the session: a split
/// saves one copy of the element's bytes, worth its bookkeeping only for a
/// few KiB or more.
pub(crate) const SPLIT_AT_LEAST: usize = 4096;

/// A direct encoding of a value whose last element is a `Vec<u8>` or a
/// `String`, split so that the element's bytes need not be copied into a
/// buffer of their own: the encoding is `head` followed by `tail`, which
/// borrows the value's bytes.
pub(crate) struct Split<'v> {
    /// Every element before the last, then the last one's length prefix.
    pub head: Vec<u8>,
    /// The last element's bytes.
    pub tail: &'v [u8],
}

/// `v`'s direct encoding, split before the bytes of its last element, if
/// its type has a direct codec, that element is a `Vec<u8>` or a `String`,
/// and it holds at least `min_tail` bytes (below that a split saves
/// nothing worth its bookkeeping).
pub(crate) fn split<'v, 'f, T: Facet<'f>>(v: &'v T, min_tail: usize) -> Option<Split<'v>> {
    let plan = plan::<T>()?;
    let (&(last, last_at), before) = elements(&plan).split_last()?;
    let base = (v as *const T).cast::<u8>();
    // SAFETY: as in `direct`: the last element is of `last`'s type, and it
    // lives as long as `v`.
    let tail: &'v [u8] = unsafe { bytes_of(last, base.add(usize::from(last_at))) }?;
    if tail.len() < min_tail {
        return None;
    }
    let mut head = Vec::with_capacity(16 * elements(&plan).len());
    for &(kind, offset) in before {
        // SAFETY: as in `direct`.
        unsafe { put(&mut head, kind, base.add(usize::from(offset))) };
    }
    put_varint(&mut head, tail.len() as u64);
    Some(Split { head, tail })
}

/// Where the bytes of `T`'s last element begin in `payload` (an encoding of
/// a `T`), if `T` has a direct codec whose last element is a `Vec<u8>` or a
/// `String` of at least `min_tail` bytes that runs exactly to the end of
/// `payload`: the offset just after that element's length prefix. Reads
/// only; nothing is checked beyond what finding the offset needs (the
/// decode checks the rest).
pub(crate) fn tail_at<T: Facet<'static>>(payload: &[u8], min_tail: usize) -> Option<usize> {
    let plan = plan::<T>()?;
    let (&(last, _), before) = elements(&plan).split_last()?;
    if !matches!(last, Kind::Bytes | Kind::String) {
        return None;
    }
    let mut r = Reader {
        bytes: payload,
        at: 0,
    };
    for &(kind, _) in before {
        r.skip(kind).ok()?;
    }
    let len = r.varint(64).ok()?;
    let left = (payload.len() - r.at) as u64;
    (len == left && len >= min_tail as u64).then_some(r.at)
}

/// A decoded element, before it is moved into place.
enum Value {
    Bool(bool),
    U8(u8),
    U16(u16),
    U32(u32),
    U64(u64),
    I16(i16),
    I32(i32),
    I64(i64),
    String(String),
    Bytes(Vec<u8>),
}

/// Reads values front to back.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn varint(&mut self, max_bits: u32) -> Result<u64, String> {
        use crate::wire::varint::{VarintError, read_varint};
        read_varint(self.bytes, &mut self.at, max_bits).map_err(|e| match e {
            VarintError::Truncated => "the payload ends inside a number".to_string(),
            VarintError::Overflow => format!("the number overflows {max_bits} bits"),
        })
    }

    fn byte(&mut self, what: &str) -> Result<u8, String> {
        let b = *self
            .bytes
            .get(self.at)
            .ok_or_else(|| format!("the payload ends before a {what}"))?;
        self.at += 1;
        Ok(b)
    }

    /// A length-prefixed run of bytes (a string's or a byte vector's).
    fn span(&mut self) -> Result<&[u8], String> {
        let len = self.varint(64)?;
        let left = (self.bytes.len() - self.at) as u64;
        if len > left {
            return Err(format!(
                "a length of {len} runs past the end of the payload ({left} bytes left)"
            ));
        }
        let start = self.at;
        self.at += len as usize;
        Ok(&self.bytes[start..self.at])
    }

    fn body(&mut self) -> Result<Vec<u8>, String> {
        self.span().map(<[u8]>::to_vec)
    }

    /// Steps over a value of `kind` without building it.
    fn skip(&mut self, kind: Kind) -> Result<(), String> {
        match kind {
            Kind::Bool | Kind::U8 => {
                self.byte("value")?;
            }
            Kind::U16 | Kind::I16 => {
                self.varint(16)?;
            }
            Kind::U32 | Kind::I32 => {
                self.varint(32)?;
            }
            Kind::U64 | Kind::I64 => {
                self.varint(64)?;
            }
            Kind::String | Kind::Bytes => {
                self.span()?;
            }
        }
        Ok(())
    }

    fn value(&mut self, kind: Kind) -> Result<Value, String> {
        Ok(match kind {
            Kind::Bool => match self.byte("bool")? {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(format!("a bool must be 0 or 1, not {b}")),
            },
            Kind::U8 => Value::U8(self.byte("u8")?),
            Kind::U16 | Kind::U32 | Kind::U64 | Kind::I16 | Kind::I32 | Kind::I64 => {
                let bits = kind.varint_bits().unwrap_or(64);
                kind.number(self.varint(bits)?)
            }
            Kind::String => match String::from_utf8(self.body()?) {
                Ok(s) => Value::String(s),
                Err(_) => return Err("a string is not valid UTF-8".into()),
            },
            Kind::Bytes => Value::Bytes(self.body()?),
        })
    }
}

/// Moves `value` to `ptr`.
///
/// # Safety
/// `ptr` is valid for writes of the value's type, and properly aligned.
unsafe fn place(value: Value, ptr: *mut u8) {
    // SAFETY: per the caller.
    unsafe {
        match value {
            Value::Bool(v) => ptr.cast::<bool>().write(v),
            Value::U8(v) => ptr.write(v),
            Value::U16(v) => ptr.cast::<u16>().write(v),
            Value::U32(v) => ptr.cast::<u32>().write(v),
            Value::U64(v) => ptr.cast::<u64>().write(v),
            Value::I16(v) => ptr.cast::<i16>().write(v),
            Value::I32(v) => ptr.cast::<i32>().write(v),
            Value::I64(v) => ptr.cast::<i64>().write(v),
            Value::String(v) => ptr.cast::<String>().write(v),
            Value::Bytes(v) => ptr.cast::<Vec<u8>>().write(v),
        }
    }
}

/// Decoded elements with their offsets in `T`, before they are placed.
type Values = [Option<(Value, usize)>; MAX_FIELDS];

/// Decodes `kinds` front to back from `r` into `values`.
fn read_all(r: &mut Reader<'_>, kinds: &[(Kind, u16)], values: &mut Values) -> Result<(), String> {
    for (slot, &(kind, offset)) in values.iter_mut().zip(kinds) {
        *slot = Some((r.value(kind)?, usize::from(offset)));
    }
    Ok(())
}

/// Builds a `T` from every one of its elements.
///
/// # Safety
/// `values` holds one value for each element of `plan::<T>()`, of that
/// element's kind, at its offset.
unsafe fn assemble<T>(values: Values) -> T {
    let mut out = std::mem::MaybeUninit::<T>::uninit();
    let base = out.as_mut_ptr().cast::<u8>();
    for (value, offset) in values.into_iter().flatten() {
        // SAFETY: per the caller, the value's type is T itself (offset 0)
        // or the tuple element at `offset`.
        unsafe { place(value, base.add(offset)) };
    }
    // SAFETY: every element of T (the one value, or each element of the
    // tuple) was written above; a tuple has no other bytes that need
    // initializing (padding is never read as a value).
    unsafe { out.assume_init() }
}

/// Decodes `bytes` (all of them) directly if `T` has a direct codec.
pub(crate) fn decode<T: Facet<'static>>(bytes: &[u8]) -> Option<Result<T, String>> {
    decode_with(&plan::<T>()?, bytes)
}

/// [`decode`] with `T`'s plan.
fn decode_with<T>(plan: &Plan, bytes: &[u8]) -> Option<Result<T, String>> {
    if let Some(v) = numbers_only::<T>(plan, bytes) {
        return Some(Ok(v));
    }
    let mut r = Reader { bytes, at: 0 };
    let spare = |at: usize| {
        format!(
            "{} bytes, but a {} ends after {at}: the payload is not of the expected type",
            bytes.len(),
            std::any::type_name::<T>(),
        )
    };
    if matches!(plan, Plan::One(_)) || !elements(plan).iter().any(|&(kind, _)| kind.owns()) {
        // One value (a stream of numbers or strings), or numbers and bools
        // only (a service's usual arguments): no staging. Nothing placed
        // needs dropping when an element fails (a lone value has no later
        // element), so each goes straight to its place.
        let mut out = std::mem::MaybeUninit::<T>::uninit();
        let base = out.as_mut_ptr().cast::<u8>();
        for &(kind, offset) in elements(plan) {
            let value = match r.value(kind) {
                Ok(v) => v,
                Err(e) => return Some(Err(e)),
            };
            // SAFETY: `plan` matched: T is this kind's type itself (offset
            // 0), or its tuple element at `offset` is.
            unsafe { place(value, base.add(usize::from(offset))) };
        }
        // SAFETY: every element of T (the one value, or each element of the
        // tuple) was written above; a tuple has no other bytes that need
        // initializing.
        let value = unsafe { out.assume_init() };
        if r.at != bytes.len() {
            return Some(Err(spare(r.at)));
        }
        return Some(Ok(value));
    }
    // Every element is decoded before any is placed, so a failure leaves
    // nothing half-built.
    let mut values: Values = Default::default();
    if let Err(e) = read_all(&mut r, elements(plan), &mut values) {
        return Some(Err(e));
    }
    if r.at != bytes.len() {
        return Some(Err(spare(r.at)));
    }
    // SAFETY: `read_all` decoded every element of the plan.
    Some(Ok(unsafe { assemble(values) }))
}

/// A value made of numbers only (a lone number: a stream of them, a call's
/// result; a tuple of them: a service's usual arguments), read and placed
/// with no reader; `None` for any other type, and for bytes that do not
/// decode cleanly, which [`decode`]'s reader then refuses with its reason.
#[inline]
fn numbers_only<T>(plan: &Plan, bytes: &[u8]) -> Option<T> {
    let elements = elements(plan);
    if !elements.iter().all(|&(kind, _)| kind.varint_bits().is_some()) {
        return None;
    }
    let mut out = std::mem::MaybeUninit::<T>::uninit();
    let base = out.as_mut_ptr().cast::<u8>();
    let mut at = 0;
    for &(kind, offset) in elements {
        let v = crate::wire::varint::read_varint(bytes, &mut at, kind.varint_bits()?).ok()?;
        // SAFETY: `plan` matched T: T is this kind's type itself (offset
        // 0), or its tuple element at `offset` is. A number needs no drop,
        // so leaving early with some placed loses nothing.
        unsafe { place(kind.number(v), base.add(usize::from(offset))) };
    }
    // SAFETY: every element of T was placed above; a tuple has no other
    // bytes that need initializing.
    (at == bytes.len()).then(|| unsafe { out.assume_init() })
}

/// Decodes the encoding `head ++ tail` as a `T`, the whole encoding and
/// nothing more: with [`decode_split`] where it applies, else from the
/// joined bytes (which also says what is wrong, if anything).
pub(crate) fn decode_split_or_join<T: Facet<'static>>(head: &[u8], tail: Vec<u8>) -> Result<T, String> {
    match decode_split(head, tail) {
        Ok(r) => r,
        Err(tail) => crate::payload::decode_exact(&[head, &tail].concat()),
    }
}

/// Decodes the encoding `head ++ tail` directly, moving `tail` into the
/// value as its last element instead of copying it: for a `T` with a direct
/// codec whose last element is a `Vec<u8>` or a `String`, where `head` holds
/// exactly the elements before it and its length prefix, which `tail.len()`
/// matches. Gives `tail` back otherwise: decode the joined bytes then (which
/// says what is wrong, if anything). Where it decodes, the value is the one
/// [`decode`] gives for the joined bytes.
pub(crate) fn decode_split<T: Facet<'static>>(
    head: &[u8],
    tail: Vec<u8>,
) -> Result<Result<T, String>, Vec<u8>> {
    let Some(plan) = plan::<T>() else {
        return Err(tail);
    };
    let Some((&(last, last_at), before)) = elements(&plan).split_last() else {
        return Err(tail);
    };
    if !matches!(last, Kind::Bytes | Kind::String) {
        return Err(tail);
    }
    let mut r = Reader { bytes: head, at: 0 };
    let mut values: Values = Default::default();
    if read_all(&mut r, before, &mut values).is_err()
        || r.varint(64).ok() != Some(tail.len() as u64)
        || r.at != head.len()
    {
        return Err(tail);
    }
    let value = match last {
        Kind::Bytes => Value::Bytes(tail),
        _ => match String::from_utf8(tail) {
            Ok(s) => Value::String(s),
            Err(_) => return Ok(Err("a string is not valid UTF-8".into())),
        },
    };
    values[before.len()] = Some((value, usize::from(last_at)));
    // SAFETY: every element before the last was decoded by `read_all`, and
    // the last is of its kind (checked above) at its offset.
    Ok(Ok(unsafe { assemble(values) }))
}

#[cfg(test)]
mod tests;
