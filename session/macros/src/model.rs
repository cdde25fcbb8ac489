//! What a service trait says, checked: its methods, their arguments and what
//! they return, or errors that point at the offending tokens.
//!
//! Every rule is checked here, before anything is generated, and every
//! broken rule is reported (not only the first), each at its own span.

use proc_macro2::Span;
use quote::ToTokens;
use syn::{
    Attribute, FnArg, GenericArgument, Ident, ItemTrait, Pat, PathArguments, ReturnType, TraitItem,
    TraitItemFn, Type, TypeReference,
};

/// A service trait, checked.
pub struct Service {
    /// The trait as written (its attributes, visibility, name, supertraits).
    pub item: ItemTrait,
    /// Its methods, in order.
    pub methods: Vec<Method>,
}

/// One method of the service.
pub struct Method {
    /// The method's name.
    pub name: Ident,
    /// Its `#[doc]` attributes, carried to the client.
    pub docs: Vec<Attribute>,
    /// Its attributes as written, kept on the trait method.
    pub attrs: Vec<Attribute>,
    /// Its arguments after `&self`.
    pub args: Vec<Arg>,
    /// What it returns.
    pub ret: Return,
}

/// One argument of a method.
pub struct Arg {
    /// The argument's name.
    pub name: Ident,
    /// Its type as written.
    pub ty: Type,
    /// `Some(T)` for a borrowed `&T`: the client sends `T::to_owned()` and
    /// the dispatcher lends the decoded owned value.
    pub borrowed: Option<Type>,
}

/// What a method returns.
pub enum Return {
    /// A plain value (`()` when nothing is written): the call cannot fail
    /// with the service's own error.
    Value(Type),
    /// `Result<T, E>`, written out.
    Result {
        /// The whole return type.
        ty: Type,
        /// `T`.
        ok: Box<Type>,
        /// `E`.
        err: Box<Type>,
    },
    /// A type whose name ends in `Result` (`MyResult<T>`, `io::Result<T>`):
    /// its value and error types are found through `IsResult`.
    Alias(Type),
}

impl Return {
    /// The type the trait method's future resolves to.
    pub fn ty(&self) -> &Type {
        match self {
            Return::Value(ty) | Return::Result { ty, .. } | Return::Alias(ty) => ty,
        }
    }
}

/// Collects errors so that every broken rule is reported at once.
#[derive(Default)]
struct Errors(Option<syn::Error>);

impl Errors {
    /// Reports `message` over all of `tokens` (not only their first token).
    fn push(&mut self, tokens: impl ToTokens, message: impl std::fmt::Display) {
        self.extend(syn::Error::new_spanned(tokens, message));
    }

    /// Reports `message` at `span`.
    fn push_at(&mut self, span: Span, message: impl std::fmt::Display) {
        self.extend(syn::Error::new(span, message));
    }

    fn extend(&mut self, e: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(e),
            None => self.0 = Some(e),
        }
    }

    fn into_result<T>(self, value: impl FnOnce() -> T) -> syn::Result<T> {
        match self.0 {
            Some(e) => Err(e),
            None => Ok(value()),
        }
    }
}

impl Service {
    /// Checks `item` against the rules of a service trait.
    pub fn parse(item: ItemTrait) -> syn::Result<Service> {
        let mut errors = Errors::default();
        if let Some(unsafety) = &item.unsafety {
            errors.push(unsafety, "a service trait cannot be `unsafe`");
        }
        if let Some(auto) = &item.auto_token {
            errors.push(auto, "a service trait cannot be an `auto` trait");
        }
        if !item.generics.params.is_empty() || item.generics.where_clause.is_some() {
            errors.push(
                &item.generics,
                "a service trait cannot be generic: the dispatcher decodes each argument as one concrete type",
            );
        }
        let mut methods = Vec::new();
        for trait_item in &item.items {
            match trait_item {
                TraitItem::Fn(f) => match method(f) {
                    Ok(m) => methods.push(m),
                    Err(e) => errors.extend(e),
                },
                other => errors.push(
                    other,
                    "a service trait holds only `async fn` methods (no types, constants or macros)",
                ),
            }
        }
        check_client_names(&item, &mut errors);
        errors.into_result(|| Service { item, methods })
    }
}

/// Method names the client could not take: its own `new` and `connection`,
/// and `m_with` beside a method `m` (the client's `m_with` is `m`'s twin).
fn check_client_names(item: &ItemTrait, errors: &mut Errors) {
    let names: Vec<&Ident> = item
        .items
        .iter()
        .filter_map(|i| match i {
            TraitItem::Fn(f) => Some(&f.sig.ident),
            _ => None,
        })
        .collect();
    for name in &names {
        if *name == "new" || *name == "connection" {
            errors.push(
                name,
                format_args!("`{name}` is taken: the generated client has its own `{name}` method"),
            );
        }
        let twin = name.to_string();
        if let Some(base) = twin.strip_suffix("_with")
            && names.iter().any(|n| *n == base)
        {
            errors.push(
                name,
                format_args!(
                    "`{twin}` is taken: the generated client's `{twin}` is `{base}` with call options"
                ),
            );
        }
    }
}

/// Checks one method, reporting every rule it breaks.
fn method(f: &TraitItemFn) -> syn::Result<Method> {
    let mut found = Errors::default();
    let errors = &mut found;
    let sig = &f.sig;
    if sig.asyncness.is_none() {
        errors.push(
            sig.fn_token,
            format_args!("service method `{}` must be an `async fn`", sig.ident),
        );
    }
    if let Some(c) = &sig.constness {
        errors.push(c, "a service method cannot be `const`");
    }
    if let Some(u) = &sig.unsafety {
        errors.push(u, "a service method cannot be `unsafe`");
    }
    if let Some(abi) = &sig.abi {
        errors.push(abi, "a service method cannot name an ABI");
    }
    if let Some(v) = &sig.variadic {
        errors.push(v, "a service method cannot be variadic");
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        errors.push(
            &sig.generics,
            format_args!(
                "service method `{}` cannot be generic: the dispatcher decodes each argument as one concrete type",
                sig.ident
            ),
        );
    }
    if let Some(body) = &f.default {
        errors.push(
            body,
            "a service method has no default body: write it in the type that implements the trait",
        );
    }

    let mut inputs = sig.inputs.iter();
    match inputs.next() {
        Some(FnArg::Receiver(r))
            if r.reference.is_some() && r.mutability.is_none() && r.colon_token.is_none() =>
        {
            if let Some((_, Some(lifetime))) = &r.reference
                && lifetime.ident != "_"
            {
                errors.push(
                    lifetime,
                    "write `&self`: a service method cannot name the lifetime of `self`",
                );
            }
        }
        Some(FnArg::Receiver(r)) => errors.push(
            r,
            "a service method takes `&self`: calls run concurrently on one shared implementation",
        ),
        Some(FnArg::Typed(t)) => errors.push(
            t,
            format_args!("service method `{}` must take `&self` first", sig.ident),
        ),
        None => errors.push_at(
            sig.paren_token.span.join(),
            format_args!("service method `{}` must take `&self`", sig.ident),
        ),
    }

    let mut args = Vec::new();
    for input in inputs {
        let FnArg::Typed(t) = input else {
            errors.push(input, "`self` can only come first");
            continue;
        };
        let name = match &*t.pat {
            Pat::Ident(p) if p.by_ref.is_none() && p.mutability.is_none() && p.subpat.is_none() => {
                p.ident.clone()
            }
            other => {
                errors.push(
                    other,
                    "name this argument with a plain identifier (`name: Type`), not a pattern",
                );
                continue;
            }
        };
        if name == "options" {
            errors.push(
                &name,
                "`options` is taken: the client's `*_with` methods take the call options under that name",
            );
        }
        let borrowed = match &*t.ty {
            Type::Reference(r) => borrowed(r, errors),
            _ => None,
        };
        check_argument_type(&t.ty, errors);
        args.push(Arg {
            name,
            ty: (*t.ty).clone(),
            borrowed,
        });
    }

    match (found.0, returned(&sig.output)) {
        (None, Ok(ret)) => Ok(Method {
            name: sig.ident.clone(),
            docs: f
                .attrs
                .iter()
                .filter(|a| a.path().is_ident("doc"))
                .cloned()
                .collect(),
            attrs: f.attrs.clone(),
            args,
            ret,
        }),
        (Some(mut e), Err(r)) => {
            e.combine(r);
            Err(e)
        }
        (Some(e), Ok(_)) | (None, Err(e)) => Err(e),
    }
}

/// The `T` of a borrowed argument `&T`, if it is one the dispatcher can lend.
fn borrowed(r: &TypeReference, errors: &mut Errors) -> Option<Type> {
    if r.mutability.is_some() {
        errors.push(
            r,
            "a service argument cannot be `&mut`: changes are not sent back; return the new value instead",
        );
        return None;
    }
    if let Some(l) = &r.lifetime
        && l.ident != "_"
    {
        errors.push(
            l,
            "a borrowed service argument cannot name a lifetime: the dispatcher lends it only for the call",
        );
        return None;
    }
    Some((*r.elem).clone())
}

/// Types no argument may have, wherever they appear in it.
fn check_argument_type(ty: &Type, errors: &mut Errors) {
    match ty {
        Type::ImplTrait(t) => errors.push(
            t,
            "a service argument cannot be `impl Trait`: the dispatcher decodes one concrete type",
        ),
        Type::Infer(t) => errors.push(t, "write the argument's type out"),
        Type::Reference(r) if matches!(&*r.elem, Type::Reference(_)) => {
            errors.push(r, "a service argument borrows at most once (`&T`, not `&&T`)")
        }
        _ => {}
    }
}

/// What a method returns, or why it is not supported.
fn returned(output: &ReturnType) -> syn::Result<Return> {
    let ty = match output {
        ReturnType::Default => return Ok(Return::Value(syn::parse_quote!(()))),
        ReturnType::Type(_, ty) => (**ty).clone(),
    };
    let unsupported = match &ty {
        Type::Reference(_) => Some("a service method cannot return a borrow: return an owned value"),
        Type::ImplTrait(_) => {
            Some("a service method cannot return `impl Trait`: the client decodes one concrete type")
        }
        Type::Never(_) => Some("a service method cannot return `!`: return `()` or a `Result`"),
        Type::Infer(_) | Type::Macro(_) | Type::TraitObject(_) | Type::BareFn(_) | Type::Ptr(_) => {
            Some("unsupported return type: return an owned value, `Result<T, E>` or a `Result` alias")
        }
        _ => None,
    };
    if let Some(message) = unsupported {
        return Err(syn::Error::new_spanned(&ty, message));
    }
    let Type::Path(path) = &ty else {
        return Ok(Return::Value(ty));
    };
    if path.qself.is_some() {
        return Ok(Return::Value(ty));
    }
    let Some(last) = path.path.segments.last() else {
        return Ok(Return::Value(ty));
    };
    if last.ident == "Result"
        && let PathArguments::AngleBracketed(a) = &last.arguments
    {
        let types: Vec<&Type> = a
            .args
            .iter()
            .filter_map(|g| match g {
                GenericArgument::Type(t) => Some(t),
                _ => None,
            })
            .collect();
        if let [ok, err] = types[..] {
            let (ok, err) = (Box::new(ok.clone()), Box::new(err.clone()));
            return Ok(Return::Result { ty, ok, err });
        }
    }
    if last.ident.to_string().ends_with("Result") {
        return Ok(Return::Alias(ty));
    }
    Ok(Return::Value(ty))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(item: ItemTrait) -> Service {
        Service::parse(item).unwrap_or_else(|e| panic!("refused: {e}"))
    }

    #[test]
    fn returns_are_values_results_or_aliases_by_their_spelling() {
        let s = service(syn::parse_quote! {
            trait T {
                async fn unit(&self);
                async fn value(&self) -> u32;
                async fn result(&self) -> Result<u32, String>;
                async fn qualified(&self) -> std::result::Result<u32, String>;
                async fn io(&self) -> std::io::Result<u32>;
                async fn alias(&self) -> MyResult<u32>;
                async fn not_an_alias(&self) -> Checked<u32>;
            }
        });
        let kinds: Vec<&str> = s
            .methods
            .iter()
            .map(|m| match &m.ret {
                Return::Value(_) => "value",
                Return::Result { .. } => "result",
                Return::Alias(_) => "alias",
            })
            .collect();
        assert_eq!(
            kinds,
            ["value", "value", "result", "result", "alias", "alias", "value"]
        );
        let Return::Result { ok, err, .. } = &s.methods[2].ret else {
            unreachable!()
        };
        assert_eq!(quote::quote!(#ok #err).to_string(), "u32 String");
    }

    #[test]
    fn borrowed_arguments_are_sent_as_their_owned_form() {
        let s = service(syn::parse_quote! {
            trait T {
                async fn m(&self, a: &str, b: &[u8], c: &'_ Shape, d: String);
            }
        });
        let borrowed: Vec<Option<String>> = s.methods[0]
            .args
            .iter()
            .map(|a| a.borrowed.as_ref().map(|t| quote::quote!(#t).to_string()))
            .collect();
        assert_eq!(
            borrowed,
            [
                Some("str".into()),
                Some("[u8]".into()),
                Some("Shape".into()),
                None
            ]
        );
    }

    #[test]
    fn every_broken_rule_is_reported_not_only_the_first() {
        let e = Service::parse(syn::parse_quote! {
            trait T {
                fn a(&self);
                async fn b(self);
                async fn c<X>(&self, x: X);
                type D;
            }
        })
        .err()
        .expect("a broken trait is refused");
        let messages: Vec<String> = e.into_iter().map(|e| e.to_string()).collect();
        assert_eq!(messages.len(), 4, "{messages:#?}");
        assert!(messages[0].contains("must be an `async fn`"), "{messages:#?}");
        assert!(messages[1].contains("takes `&self`"), "{messages:#?}");
        assert!(messages[2].contains("cannot be generic"), "{messages:#?}");
        assert!(messages[3].contains("only `async fn` methods"), "{messages:#?}");
    }
}
