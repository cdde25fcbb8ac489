//! The postcard writer for values the direct codecs (`fast.rs`) do not
//! cover.
//!
//! facet-format walks the value by reflection and calls this writer for
//! each piece; the bytes are postcard exactly as facet-postcard writes and
//! reads them (varints, zigzag for signed integers, length-prefixed strings,
//! sequences and maps, a varint variant index), so the decoder stays
//! facet-postcard's parser. It differs from facet-postcard's own writer only
//! where that writer cannot be read back:
//!
//! - a `Duration` is written through its facet proxy, `(u64 seconds, u32
//!   nanoseconds)`, which is what the reader expects (facet-postcard 0.46
//!   writes its display text instead);
//! - a `PathBuf` or `Path` is written as its text (the reader parses paths
//!   from text); a path that is not valid UTF-8 is refused with its name;
//! - IP and socket addresses are written as their text, which the reader
//!   parses back.

use facet::{Def, Facet, ScalarType, Shape};
use facet_format::{
    DynamicValueEncoding, DynamicValueTag, EnumVariantEncoding, FormatSerializer, MapEncoding, ScalarValue,
    SerializeError, StructFieldMode,
};
use facet_reflect::Peek;

/// Encodes `value` as postcard.
pub(super) fn to_vec<'f, T: Facet<'f>>(value: &T) -> Result<Vec<u8>, String> {
    let mut writer = Postcard { out: Vec::new() };
    facet_format::serialize_root(&mut writer, Peek::new(value)).map_err(|e| match e {
        SerializeError::Backend(e) => e,
        SerializeError::Reflect(e) => e.to_string(),
        SerializeError::Unsupported(m) | SerializeError::Internal(m) => m.into_owned(),
    })?;
    Ok(writer.out)
}

/// facet-format's callbacks, writing postcard into `out`.
struct Postcard {
    out: Vec<u8>,
}

impl Postcard {
    fn varint(&mut self, mut v: u128) {
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                self.out.push(byte);
                return;
            }
            self.out.push(byte | 0x80);
        }
    }

    fn signed(&mut self, v: i128) {
        self.varint(((v << 1) ^ (v >> 127)) as u128);
    }

    fn bytes(&mut self, b: &[u8]) {
        self.varint(b.len() as u128);
        self.out.extend_from_slice(b);
    }

    fn display(&mut self, value: Peek<'_, '_>) {
        self.bytes(value.to_string().as_bytes());
    }
}

/// Reads a `T` out of `value`, whose scalar type said it is one.
fn get<'f, T: Facet<'f> + Copy>(value: &Peek<'_, 'f>) -> Result<T, String> {
    value.get::<T>().copied().map_err(|e| e.to_string())
}

impl FormatSerializer for Postcard {
    type Error = String;

    fn begin_struct(&mut self) -> Result<(), String> {
        Ok(())
    }

    fn field_key(&mut self, key: &str) -> Result<(), String> {
        Err(format!("postcard has no field names (asked to write `{key}`)"))
    }

    fn end_struct(&mut self) -> Result<(), String> {
        Ok(())
    }

    fn begin_seq(&mut self) -> Result<(), String> {
        Ok(())
    }

    fn end_seq(&mut self) -> Result<(), String> {
        Ok(())
    }

    fn scalar(&mut self, scalar: ScalarValue<'_>) -> Result<(), String> {
        match scalar {
            ScalarValue::Null | ScalarValue::Unit => {}
            ScalarValue::Bool(v) => self.out.push(v as u8),
            ScalarValue::Char(c) => self.bytes(c.encode_utf8(&mut [0; 4]).as_bytes()),
            ScalarValue::I64(n) => self.signed(n.into()),
            ScalarValue::U64(n) => self.varint(n.into()),
            ScalarValue::I128(n) => self.signed(n),
            ScalarValue::U128(n) => self.varint(n),
            ScalarValue::F64(n) => self.out.extend_from_slice(&n.to_le_bytes()),
            ScalarValue::Str(s) => self.bytes(s.as_bytes()),
            ScalarValue::Bytes(b) => self.bytes(&b),
        }
        Ok(())
    }

    fn struct_field_mode(&self) -> StructFieldMode {
        StructFieldMode::Unnamed
    }

    fn map_encoding(&self) -> MapEncoding {
        MapEncoding::Pairs
    }

    fn enum_variant_encoding(&self) -> EnumVariantEncoding {
        EnumVariantEncoding::Index
    }

    fn is_self_describing(&self) -> bool {
        false
    }

    fn dynamic_value_encoding(&self) -> DynamicValueEncoding {
        DynamicValueEncoding::Tagged
    }

    fn dynamic_value_tag(&mut self, tag: DynamicValueTag) -> Result<(), String> {
        self.out.push(match tag {
            DynamicValueTag::Null => 0,
            DynamicValueTag::Bool => 1,
            DynamicValueTag::I64 => 2,
            DynamicValueTag::U64 => 3,
            DynamicValueTag::F64 => 4,
            DynamicValueTag::String => 5,
            DynamicValueTag::Bytes => 6,
            DynamicValueTag::Array => 7,
            DynamicValueTag::Object => 8,
            DynamicValueTag::DateTime => 9,
        });
        Ok(())
    }

    fn begin_seq_with_len(&mut self, len: usize) -> Result<(), String> {
        self.varint(len as u128);
        Ok(())
    }

    fn begin_map_with_len(&mut self, len: usize) -> Result<(), String> {
        self.varint(len as u128);
        Ok(())
    }

    fn end_map(&mut self) -> Result<(), String> {
        Ok(())
    }

    fn typed_scalar(&mut self, ty: ScalarType, value: Peek<'_, '_>) -> Result<(), String> {
        match ty {
            ScalarType::Unit => {}
            ScalarType::Bool => self.out.push(get::<bool>(&value)? as u8),
            ScalarType::Char => self.bytes(get::<char>(&value)?.encode_utf8(&mut [0; 4]).as_bytes()),
            ScalarType::Str | ScalarType::String | ScalarType::CowStr => {
                let s = value.as_str().ok_or("a string value without its text")?;
                self.bytes(s.as_bytes());
            }
            ScalarType::F32 => self.out.extend_from_slice(&get::<f32>(&value)?.to_le_bytes()),
            ScalarType::F64 => self.out.extend_from_slice(&get::<f64>(&value)?.to_le_bytes()),
            ScalarType::U8 => self.out.push(get::<u8>(&value)?),
            ScalarType::I8 => self.out.push(get::<i8>(&value)? as u8),
            ScalarType::U16 => self.varint(get::<u16>(&value)?.into()),
            ScalarType::U32 => self.varint(get::<u32>(&value)?.into()),
            ScalarType::U64 => self.varint(get::<u64>(&value)?.into()),
            ScalarType::U128 => self.varint(get::<u128>(&value)?),
            ScalarType::USize => self.varint(get::<usize>(&value)? as u128),
            ScalarType::I16 => self.signed(get::<i16>(&value)?.into()),
            ScalarType::I32 => self.signed(get::<i32>(&value)?.into()),
            ScalarType::I64 => self.signed(get::<i64>(&value)?.into()),
            ScalarType::I128 => self.signed(get::<i128>(&value)?),
            ScalarType::ISize => self.signed(get::<isize>(&value)? as i128),
            ScalarType::IpAddr | ScalarType::Ipv4Addr | ScalarType::Ipv6Addr | ScalarType::SocketAddr => {
                self.display(value)
            }
            other => {
                return Err(format!(
                    "a `{}` ({other:?}) has no postcard form",
                    value.shape().type_identifier
                ));
            }
        }
        Ok(())
    }

    fn begin_option_some(&mut self) -> Result<(), String> {
        self.out.push(1);
        Ok(())
    }

    fn serialize_none(&mut self) -> Result<(), String> {
        self.out.push(0);
        Ok(())
    }

    fn begin_enum_variant(&mut self, index: usize, _name: &'static str) -> Result<(), String> {
        self.varint(index as u128);
        Ok(())
    }

    fn serialize_byte_sequence(&mut self, bytes: &[u8]) -> Result<bool, String> {
        self.bytes(bytes);
        Ok(true)
    }

    fn serialize_byte_array(&mut self, bytes: &[u8]) -> Result<bool, String> {
        self.out.extend_from_slice(bytes);
        Ok(true)
    }

    fn serialize_opaque_scalar(
        &mut self,
        shape: &'static Shape,
        value: Peek<'_, '_>,
    ) -> Result<bool, String> {
        self.serialize_opaque_scalar_with_field(None, shape, value)
    }

    fn serialize_opaque_scalar_with_field(
        &mut self,
        _field: Option<&facet::Field>,
        shape: &'static Shape,
        value: Peek<'_, '_>,
    ) -> Result<bool, String> {
        // Typed scalars, wrappers and types with a proxy (a `Duration`)
        // take facet-format's generic path.
        if value.scalar_type().is_some() || shape.inner.is_some() || shape.proxy.is_some() {
            return Ok(false);
        }
        if let Ok(path) = value.get::<std::path::PathBuf>().map(|p| p.as_path()) {
            return self.path(path);
        }
        if let Ok(path) = value.get::<std::path::Path>() {
            return self.path(path);
        }
        if shape.opaque_adapter.is_some() {
            // Opaque adapters (raw postcard and the like) keep
            // facet-postcard's framing: the value's own encoding, written
            // as a byte sequence.
            let bytes = facet_postcard::peek_to_vec(value).map_err(|e| e.to_string())?;
            self.out.extend_from_slice(&bytes);
            return Ok(true);
        }
        if matches!(shape.def, Def::Scalar) {
            if let Some(s) = value.as_str() {
                self.bytes(s.as_bytes());
                return Ok(true);
            }
            if shape.vtable.has_display() {
                self.display(value);
                return Ok(true);
            }
        }
        Ok(false)
    }
}

impl Postcard {
    fn path(&mut self, path: &std::path::Path) -> Result<bool, String> {
        let text = path.to_str().ok_or_else(|| {
            format!(
                "the path {:?} is not valid UTF-8 and cannot cross a link; send its bytes \
                 (`Vec<u8>`) instead",
                path.display()
            )
        })?;
        self.bytes(text.as_bytes());
        Ok(true)
    }
}
