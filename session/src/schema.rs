//! Schemas: what a method's argument, result and error types look like, so
//! that two sides built from different definitions of a service fail loudly
//! instead of misreading each other's bytes.
//!
//! A schema is a canonical text, built from facet's [`Shape`]s: every
//! struct and enum is written out with its fields and variants (a type
//! reached again inside itself only by name), so a field that changed from
//! `Option<u32>` to `Option<i32>` deep inside an argument changes it. A
//! typed client sends its method's schema with the first call of that
//! method on each session (metadata [`SCHEMA_KEY`]); the dispatcher compares
//! it with its own and refuses the call with both descriptions when they
//! differ ([`CallError::SchemaMismatch`](crate::CallError::SchemaMismatch)).

use facet::{Def, Facet, Shape, StructKind, Type, UserType};

/// The metadata key under which a call carries its method's schema.
pub const SCHEMA_KEY: &str = "osmos.schema";

/// Longest schema text sent or compared; longer ones are cut (on both sides
/// alike).
const MAX_SCHEMA: usize = 8 << 10;

/// The schema of a method taking `A` (its argument tuple) and answering
/// `Result<T, E>`.
pub fn method_schema<A, T, E>() -> String
where
    A: for<'f> Facet<'f>,
    T: Facet<'static>,
    E: Facet<'static>,
{
    let mut out = String::new();
    let mut seen = Vec::new();
    describe(<A as Facet<'_>>::SHAPE, &mut out, &mut seen);
    out.push_str(" -> ");
    describe(T::SHAPE, &mut out, &mut seen);
    out.push_str(" / ");
    describe(E::SHAPE, &mut out, &mut seen);
    if out.len() > MAX_SCHEMA {
        let mut cut = MAX_SCHEMA;
        while !out.is_char_boundary(cut) {
            cut -= 1;
        }
        out.truncate(cut);
    }
    out
}

/// Appends the canonical description of `shape` to `out`.
fn describe(shape: &'static Shape, out: &mut String, seen: &mut Vec<&'static Shape>) {
    if out.len() > MAX_SCHEMA {
        return;
    }
    match shape.def {
        Def::Option(o) => return wrap(out, seen, "Option", &[o.t]),
        Def::List(l) => return wrap(out, seen, "List", &[l.t]),
        Def::Slice(s) => return wrap(out, seen, "List", &[s.t]),
        Def::Set(s) => return wrap(out, seen, "Set", &[s.t]),
        Def::Map(m) => return wrap(out, seen, "Map", &[m.k, m.v]),
        Def::Result(r) => return wrap(out, seen, "Result", &[r.t, r.e]),
        Def::Array(a) => {
            out.push('[');
            describe(a.t, out, seen);
            out.push_str(&format!("; {}]", a.n));
            return;
        }
        // Box, Arc and the like travel as what they point to.
        Def::Pointer(p) => {
            if let Some(inner) = p.pointee {
                return describe(inner, out, seen);
            }
        }
        _ => {}
    }
    if let Some(inner) = shape.inner {
        // Transparent wrappers travel as their inner type.
        if !matches!(shape.ty, Type::User(UserType::Struct(_) | UserType::Enum(_)))
            || shape.attributes.iter().any(|a| a.key == "transparent")
        {
            return describe(inner, out, seen);
        }
    }
    match shape.ty {
        Type::User(UserType::Struct(st)) if st.kind == StructKind::Tuple => {
            out.push('(');
            for (i, f) in st.fields.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                describe(f.shape(), out, seen);
            }
            out.push(')');
        }
        Type::User(UserType::Struct(st)) => {
            out.push_str(shape.type_identifier);
            if !enter(shape, seen) {
                return;
            }
            fields(st.kind, st.fields, out, seen);
        }
        Type::User(UserType::Enum(en)) => {
            out.push_str(shape.type_identifier);
            if !enter(shape, seen) {
                return;
            }
            out.push_str(" {");
            for (i, v) in en.variants.iter().enumerate() {
                if i > 0 {
                    out.push_str(" |");
                }
                out.push(' ');
                out.push_str(v.rename.unwrap_or(v.name));
                fields(v.data.kind, v.data.fields, out, seen);
            }
            out.push_str(" }");
        }
        _ => {
            out.push_str(shape.type_identifier);
            if !shape.type_params.is_empty() {
                let params: Vec<_> = shape.type_params.iter().map(|p| p.shape).collect();
                args(out, seen, &params);
            }
        }
    }
}

/// Whether to write `shape`'s body: not when it is already being written
/// (a recursive type is named, not expanded, inside itself).
fn enter(shape: &'static Shape, seen: &mut Vec<&'static Shape>) -> bool {
    if seen.iter().any(|s| std::ptr::eq(*s, shape)) {
        return false;
    }
    seen.push(shape);
    true
}

fn fields(
    kind: StructKind,
    fields: &'static [facet::Field],
    out: &mut String,
    seen: &mut Vec<&'static Shape>,
) {
    match kind {
        StructKind::Unit => {}
        StructKind::Struct => {
            out.push_str(" {");
            for (i, f) in fields.iter().enumerate() {
                out.push_str(if i > 0 { ", " } else { " " });
                out.push_str(f.rename.unwrap_or(f.name));
                out.push_str(": ");
                describe(f.shape(), out, seen);
            }
            out.push_str(" }");
        }
        _ => {
            out.push('(');
            for (i, f) in fields.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                describe(f.shape(), out, seen);
            }
            out.push(')');
        }
    }
}

fn wrap(out: &mut String, seen: &mut Vec<&'static Shape>, name: &str, inner: &[&'static Shape]) {
    out.push_str(name);
    args(out, seen, inner);
}

fn args(out: &mut String, seen: &mut Vec<&'static Shape>, inner: &[&'static Shape]) {
    out.push('<');
    for (i, s) in inner.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        describe(s, out, seen);
    }
    out.push('>');
}

/// How a mismatch answer begins (the caller recognises it by this).
pub(crate) const MISMATCH: &str = "the two sides disagree on the types of ";

/// For dispatchers: compares the caller's schema of `service.method` (from
/// its call's metadata, if it sent one) with this side's, taking `A` and
/// answering `Result<T, E>`; the refusal to answer with if they differ.
pub fn check_schema<A, T, E>(metadata: &crate::wire::Metadata, service: &str, method: &str) -> Option<String>
where
    A: for<'f> Facet<'f>,
    T: Facet<'static>,
    E: Facet<'static>,
{
    let theirs = metadata.iter().find(|m| m.key == SCHEMA_KEY)?;
    let crate::wire::MetaValue::Str(theirs) = &theirs.value else {
        return Some(format!(
            "{MISMATCH}{service}.{method}: the caller's schema is not text"
        ));
    };
    let ours = method_schema::<A, T, E>();
    if *theirs == ours {
        return None;
    }
    Some(format!(
        "{MISMATCH}{service}.{method}: the caller has `{theirs}`, this side has `{ours}` (build both from the same service definition)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Facet)]
    struct Old {
        n: Option<u32>,
        tags: Vec<String>,
    }

    #[derive(Facet)]
    #[facet(rename = "Old")]
    struct New {
        n: Option<i32>,
        tags: Vec<String>,
    }

    #[derive(Facet)]
    #[repr(u8)]
    #[allow(dead_code)]
    enum Shape2 {
        Circle { r: f64 },
        Square(u32),
        Dot,
    }

    #[derive(Facet)]
    struct Tree {
        children: Vec<Tree>,
    }

    #[test]
    fn a_changed_field_type_changes_the_schema() {
        let old = method_schema::<(Old,), u32, String>();
        let new = method_schema::<(New,), u32, String>();
        assert_ne!(old, new);
        assert!(old.contains("n: Option<u32>"), "{old}");
        assert!(new.contains("n: Option<i32>"), "{new}");
    }

    #[test]
    fn same_types_give_the_same_schema() {
        assert_eq!(
            method_schema::<(u32, u32), u32, String>(),
            method_schema::<(u32, u32), u32, String>()
        );
        assert_ne!(
            method_schema::<(u32, u32), u32, String>(),
            method_schema::<(u32, u32), u64, String>()
        );
    }

    #[test]
    fn enums_and_recursive_types_are_described() {
        let s = method_schema::<(Shape2, Tree), (), ()>();
        assert!(s.contains("Circle { r: f64 }"), "{s}");
        assert!(s.contains("Square(u32)"), "{s}");
        assert!(s.contains("Tree { children: List<Tree> }"), "{s}");
    }
}
