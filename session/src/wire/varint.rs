//! Postcard's unsigned integers: LEB128 varints (7 bits per byte, least
//! significant group first, the high bit set on all but the last byte).
//!
//! Reading refuses a number wider than its type instead of truncating it,
//! and reads the usual one-byte number inline; a longer one is assembled
//! from a single eight-byte load where the frame allows (see
//! [`read_varint`]).

/// Bytes a varint of `v` takes.
pub(crate) const fn varint_len(v: u64) -> usize {
    // 1 byte per started group of 7 bits; zero takes one byte.
    let bits = 64 - (v | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// Writes `v` as a varint at the front of `buf` (at least
/// [`varint_len`]`(v)` bytes) and returns the bytes written.
#[inline]
pub(crate) fn write_varint(buf: &mut [u8], mut v: u64) -> usize {
    if v < 0x80 {
        buf[0] = v as u8;
        return 1;
    }
    // One bounds check for the whole number, not one per byte (a method
    // id takes nine or ten).
    let n = varint_len(v);
    let out = &mut buf[..n];
    for b in &mut out[..n - 1] {
        *b = (v as u8) | 0x80;
        v >>= 7;
    }
    out[n - 1] = v as u8;
    n
}

/// Why a varint could not be read.
pub(crate) enum VarintError {
    /// The bytes end inside the number.
    Truncated,
    /// The number has more bits than its type (`bits`).
    Overflow,
}

/// Reads a varint of at most `bits` bits (16, 32 or 64) from `bytes` at
/// `*at`, advancing `*at` past it. A number with bits beyond `bits` (or more
/// groups than `bits` needs) is refused rather than truncated.
#[inline]
pub(crate) fn read_varint(bytes: &[u8], at: &mut usize, bits: u32) -> Result<u64, VarintError> {
    // Most numbers on the wire (kinds, small ids, lengths, a stream's
    // counters) take one byte: that case stays inline in every reader.
    if let Some(&b) = bytes.get(*at)
        && b < 0x80
    {
        *at += 1;
        return Ok(b.into());
    }
    // Two bytes (128 to 16383: a stream's counters, lengths of small
    // payloads) fit every width read here: also inline.
    if let (Some(&b0), Some(&b1)) = (bytes.get(*at), bytes.get(at.wrapping_add(1)))
        && b1 < 0x80
    {
        *at += 2;
        return Ok(u64::from(b0 & 0x7f) | u64::from(b1) << 7);
    }
    read_varint_long(bytes, at, bits)
}

/// [`read_varint`] of a number that takes more than one byte (or of none).
/// With eight bytes to read from, a number that ends within them (or, of 64
/// bits, within ten) is assembled from one load, with no loop (a method id
/// is a 64-bit hash, nine or ten bytes on the wire); anything else, errors
/// included, takes [`read_varint_stepwise`], which has the last word.
fn read_varint_long(bytes: &[u8], at: &mut usize, bits: u32) -> Result<u64, VarintError> {
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let start = *at;
    if let Some(word) = bytes.get(start..start.wrapping_add(8)) {
        let mut eight = [0u8; 8];
        eight.copy_from_slice(word);
        let x = u64::from_le_bytes(eight);
        // Groups a number of `bits` bits may take.
        let groups = bits.div_ceil(7) as usize;
        let ends = !x & HIGH;
        if ends != 0 {
            let n = (ends.trailing_zeros() / 8 + 1) as usize;
            let kept = if n == 8 { x } else { x & ((1u64 << (8 * n)) - 1) };
            let v = pack_groups(kept);
            // Fewer groups than the type takes cannot overflow it; as many
            // may, in the last group's high bits.
            if n < groups || (n == groups && v >> bits == 0) {
                *at = start + n;
                return Ok(v);
            }
        } else if bits == 64 {
            let low = pack_groups(x);
            match (bytes.get(start + 8), bytes.get(start + 9)) {
                (Some(&b8), _) if b8 < 0x80 => {
                    *at = start + 9;
                    return Ok(low | u64::from(b8) << 56);
                }
                // The tenth group holds bit 63 alone.
                (Some(&b8), Some(&b9)) if b9 <= 1 => {
                    *at = start + 10;
                    return Ok(low | u64::from(b8 & 0x7f) << 56 | u64::from(b9) << 63);
                }
                _ => {}
            }
        }
    }
    read_varint_stepwise(bytes, at, bits)
}

/// The 7-bit groups of up to eight varint bytes (`x`, little-endian, the
/// continuation bits set or not) packed into one number of up to 56 bits.
#[inline]
fn pack_groups(x: u64) -> u64 {
    let x = x & 0x7f7f_7f7f_7f7f_7f7f;
    let x = (x & 0x007f_007f_007f_007f) | ((x & 0x7f00_7f00_7f00_7f00) >> 1);
    let x = (x & 0x0000_3fff_0000_3fff) | ((x & 0x3fff_0000_3fff_0000) >> 2);
    (x & 0x0000_0000_0fff_ffff) | ((x & 0x0fff_ffff_0000_0000) >> 4)
}

/// [`read_varint`] one byte at a time, with every check: the reference
/// [`read_varint_long`] defers to for anything out of the ordinary.
pub(super) fn read_varint_stepwise(bytes: &[u8], at: &mut usize, bits: u32) -> Result<u64, VarintError> {
    let mut v = 0u64;
    let mut shift = 0u32;
    loop {
        let Some(&b) = bytes.get(*at) else {
            return Err(VarintError::Truncated);
        };
        *at += 1;
        let group = u64::from(b & 0x7f);
        if shift >= bits || (bits - shift < 7 && group >> (bits - shift) != 0) {
            return Err(VarintError::Overflow);
        }
        v |= group << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
        shift += 7;
    }
}

#[cfg(test)]
mod tests {
    use super::{varint_len, write_varint};

    /// Every length of varint is written as postcard writes a `u64`, and
    /// takes `varint_len` bytes: zero, each power of two and its
    /// neighbours, and the largest number.
    #[test]
    fn written_varints_are_postcards() {
        let mut values = vec![0u64, 1, u64::MAX];
        for shift in 0..64 {
            let p = 1u64 << shift;
            values.extend([p - 1, p, p + 1, p | (p >> 1)]);
        }
        for v in values {
            let mut buf = [0xeeu8; 12];
            let n = write_varint(&mut buf, v);
            assert_eq!(n, varint_len(v), "{v}");
            assert_eq!(&buf[..n], facet_postcard::to_vec(&v).unwrap(), "{v}");
            assert!(buf[n..].iter().all(|&b| b == 0xee), "{v}: wrote past its end");
        }
    }
}
