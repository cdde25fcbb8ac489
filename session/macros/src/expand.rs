//! The code a checked service trait becomes: the trait with `Send` futures,
//! the typed client and the dispatcher.
//!
//! Everything is named through `#root::__private` (`::osmos::__private` or
//! `::osmos_session::__private`) and absolute `::core`/`::std` paths, so the
//! code does not depend on what the user's module imports. Locals of the
//! dispatcher are `mixed_site` identifiers: they cannot clash with argument
//! names.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::Type;
use syn::ext::IdentExt;
use syn::spanned::Spanned;

use crate::model::{Arg, Method, Return, Service};

/// The whole expansion.
pub fn expand(service: &Service, root: &TokenStream) -> TokenStream {
    let trait_ = service_trait(service);
    let client = client(service, root);
    let dispatcher = dispatcher(service, root);
    quote! {
        #trait_
        #client
        #dispatcher
    }
}

/// The trait, each `async fn` written as a method returning a `Send` future
/// so that the dispatcher can run it on a multi-threaded runtime.
fn service_trait(service: &Service) -> TokenStream {
    let item = &service.item;
    let (attrs, vis, name) = (&item.attrs, &item.vis, &item.ident);
    let supertraits = item.supertraits.iter();
    let methods = service.methods.iter().map(|m| {
        let (attrs, name) = (&m.attrs, &m.name);
        let args = m.args.iter().map(|a| {
            let (name, ty) = (&a.name, &a.ty);
            quote! { #name: #ty }
        });
        let ret = m.ret.ty();
        quote! {
            #(#attrs)*
            fn #name(&self #(, #args)*)
                -> impl ::core::future::Future<Output = #ret> + ::core::marker::Send;
        }
    });
    quote! {
        #(#attrs)*
        #vis trait #name: #(#supertraits +)* ::core::marker::Send + ::core::marker::Sync + 'static {
            #(#methods)*
        }
    }
}

/// The method id expression of `method`, evaluated at compile time.
fn method_id(root: &TokenStream, service: &str, method: &str) -> TokenStream {
    quote! { const { #root::__private::method_id(#service, #method) } }
}

/// The types a client method returns: `Result<T, CallError<E>>`.
fn client_output(ret: &Return, root: &TokenStream) -> TokenStream {
    let p = quote! { #root::__private };
    match ret {
        Return::Value(ty) => {
            quote! { ::core::result::Result<#ty, #p::CallError<::core::convert::Infallible>> }
        }
        Return::Result { ok, err, .. } => quote! { ::core::result::Result<#ok, #p::CallError<#err>> },
        Return::Alias(ty) => quote! {
            ::core::result::Result<
                <#ty as #p::IsResult>::Ok,
                #p::CallError<<#ty as #p::IsResult>::Err>,
            >
        },
    }
}

/// The typed client: one method per call, and a `*_with` twin that takes
/// [`CallOptions`].
fn client(service: &Service, root: &TokenStream) -> TokenStream {
    let p = quote! { #root::__private };
    let item = &service.item;
    let (vis, trait_name) = (&item.vis, &item.ident);
    let service_name = trait_name.unraw().to_string();
    let client = format_ident!("{}Client", trait_name);
    let struct_doc = format!(
        "Typed client of the [`{service_name}`] service: each method calls the peer's implementation."
    );
    let new_doc = format!("A client calling `{service_name}` on `conn`.");
    let methods = service
        .methods
        .iter()
        .map(|m| client_method(m, &service_name, root));
    quote! {
        #[doc = #struct_doc]
        #[derive(::core::clone::Clone, ::core::fmt::Debug)]
        #vis struct #client {
            target: #p::Target,
        }

        impl #client {
            #[doc = #new_doc]
            pub fn new(conn: #p::Connection) -> Self {
                Self { target: conn.into() }
            }

            /// The connection calls go to now: this client's own, or for a
            /// client that follows a peer across replacements (a host's
            /// client of a cell), the current one. Open channels on it.
            pub fn connection(&self) -> #p::Connection {
                self.target.connection()
            }

            #(#methods)*
        }

        impl ::core::convert::From<#p::Connection> for #client {
            fn from(conn: #p::Connection) -> Self {
                Self::new(conn)
            }
        }

        impl ::core::convert::From<#p::Target> for #client {
            fn from(target: #p::Target) -> Self {
                Self { target }
            }
        }
    }
}

/// One client method and its `*_with` twin.
fn client_method(m: &Method, service_name: &str, root: &TokenStream) -> TokenStream {
    let p = quote! { #root::__private };
    let name = &m.name;
    let method_name = name.unraw().to_string();
    let with = format_ident!("{}_with", name.unraw());
    let id = method_id(root, service_name, &method_name);
    let output = client_output(&m.ret, root);
    let params: Vec<TokenStream> = m
        .args
        .iter()
        .map(|a| {
            let (name, ty) = (&a.name, &a.ty);
            quote! { #name: #ty }
        })
        .collect();
    let names: Vec<_> = m.args.iter().map(|a| &a.name).collect();
    let sent = tuple(m.args.iter().map(sent).collect());
    let crossing = crossing(m, root);
    let docs = if m.docs.is_empty() {
        let doc = format!("Calls `{method_name}` of the peer's `{service_name}`.");
        quote! { #[doc = #doc] }
    } else {
        let docs = &m.docs;
        quote! { #(#docs)* }
    };
    let with_doc =
        format!("Calls [`{method_name}`](Self::{method_name}) with `options`: a deadline, metadata.");
    // The call's types come from the declared return type: point at it when
    // they are not encodable.
    let span = m.ret.ty().span();
    let root_here = respanned(root, span);
    let call = quote_spanned! {span=>
        #root_here::__private::call(&self.target, #service_name, #method_name, #id, &#sent, options).await
    };
    quote! {
        #docs
        #[allow(clippy::too_many_arguments, clippy::type_complexity)]
        pub async fn #name(&self #(, #params)*) -> #output {
            self.#with(#p::CallOptions::default() #(, #names)*).await
        }

        #[doc = #with_doc]
        #[allow(clippy::too_many_arguments, clippy::type_complexity)]
        pub async fn #with(&self, options: #p::CallOptions #(, #params)*) -> #output {
            #(#crossing)*
            #call
        }
    }
}

/// Each argument's type checked on its own, spanned at the argument, so
/// that a type without a facet shape is reported where it is written.
fn crossing(m: &Method, root: &TokenStream) -> Vec<TokenStream> {
    m.args
        .iter()
        .map(|a| {
            let ty = decoded(a);
            let span = a.ty.span();
            let root = respanned(root, span);
            quote_spanned! {span=> #root::__private::crosses::<#ty>(); }
        })
        .collect()
}

/// `tokens` (a path without groups), every token spanned at `span`: a
/// path's errors are reported at the span of its tokens.
fn respanned(tokens: &TokenStream, span: Span) -> TokenStream {
    tokens
        .clone()
        .into_iter()
        .map(|mut t| {
            t.set_span(span);
            t
        })
        .collect()
}

/// How the client puts an argument into the call's tuple: as it is, or for
/// a borrowed `&T`, as `T::to_owned()` (the session encodes only owned
/// argument tuples).
fn sent(a: &Arg) -> TokenStream {
    let name = &a.name;
    match &a.borrowed {
        None => quote! { #name },
        Some(inner) => quote_spanned! {a.ty.span()=> <#inner as ::std::borrow::ToOwned>::to_owned(#name) },
    }
}

/// A tuple of `items` (types, expressions or patterns alike) as the call
/// carries its arguments: flat up to four, the most facet gives a `Facet`
/// tuple, and otherwise nested in tuples of at most four. Postcard writes a
/// tuple as its elements one after the other, so the nesting does not
/// change the bytes.
fn tuple(items: Vec<TokenStream>) -> TokenStream {
    if items.len() <= 4 {
        return quote! { (#(#items,)*) };
    }
    let groups: Vec<TokenStream> = items.chunks(4).map(|c| tuple(c.to_vec())).collect();
    tuple(groups)
}

/// The type the dispatcher decodes an argument as: the argument's own type,
/// or `T::Owned` for a borrowed `&T`.
fn decoded(a: &Arg) -> TokenStream {
    match &a.borrowed {
        None => {
            let ty = &a.ty;
            quote! { #ty }
        }
        Some(inner) => owned(inner),
    }
}

/// `<T as ToOwned>::Owned`, spanned at `T`.
fn owned(inner: &Type) -> TokenStream {
    quote_spanned! {inner.span()=> <#inner as ::std::borrow::ToOwned>::Owned }
}

/// The dispatcher: decodes each method's arguments and runs the
/// implementation.
fn dispatcher(service: &Service, root: &TokenStream) -> TokenStream {
    let p = quote! { #root::__private };
    let item = &service.item;
    let (vis, trait_name) = (&item.vis, &item.ident);
    let service_name = trait_name.unraw().to_string();
    let dispatcher = format_ident!("{}Dispatcher", trait_name);
    let doc = format!("Serves the [`{service_name}`] service from an implementation.");
    let described = service.methods.iter().map(|m| {
        let method_name = m.name.unraw().to_string();
        let id = method_id(root, &service_name, &method_name);
        quote! { (#method_name, #id) }
    });
    let arms = service
        .methods
        .iter()
        .map(|m| dispatch_arm(m, &service_name, root));
    let method = quote::format_ident!("method", span = Span::mixed_site());
    let args = quote::format_ident!("args", span = Span::mixed_site());
    let metadata = quote::format_ident!("metadata", span = Span::mixed_site());
    quote! {
        #[doc = #doc]
        #vis struct #dispatcher<S>(::std::sync::Arc<S>);

        impl<S: #trait_name> #dispatcher<S> {
            /// Wraps an implementation, ready to serve on a connection.
            pub fn new(service: S) -> ::std::sync::Arc<Self> {
                ::std::sync::Arc::new(Self(::std::sync::Arc::new(service)))
            }
        }

        impl<S: #trait_name> #p::Dispatcher for #dispatcher<S> {
            fn describe(&self) -> ::core::option::Option<#p::ServiceInfo> {
                const METHODS: &[(&str, u64)] = &[#(#described),*];
                ::core::option::Option::Some(#p::ServiceInfo {
                    name: #service_name,
                    methods: METHODS,
                })
            }

            fn dispatch(&self, #method: u64, #metadata: &#p::Metadata, #args: &[u8]) -> #p::Dispatch {
                self.dispatch_args(#method, #metadata, #p::Args::whole(#args))
            }

            fn dispatch_args(
                &self,
                #method: u64,
                #metadata: &#p::Metadata,
                #args: #p::Args<'_>,
            ) -> #p::Dispatch {
                let _ = (#metadata, &#args);
                #(#arms)*
                #p::Dispatch::UnknownMethod
            }
        }
    }
}

/// The dispatcher's branch for one method.
fn dispatch_arm(m: &Method, service_name: &str, root: &TokenStream) -> TokenStream {
    let p = quote! { #root::__private };
    let name = &m.name;
    let id = method_id(root, service_name, &name.unraw().to_string());
    let method = format_ident!("method", span = Span::mixed_site());
    let args = format_ident!("args", span = Span::mixed_site());
    let service = format_ident!("service", span = Span::mixed_site());
    let error = format_ident!("error", span = Span::mixed_site());
    let locals: Vec<_> = (0..m.args.len())
        .map(|i| format_ident!("arg{}", i, span = Span::mixed_site()))
        .collect();
    let types = tuple(m.args.iter().map(decoded).collect());
    let passed = m.args.iter().zip(&locals).map(|(a, local)| match &a.borrowed {
        None => quote! { #local },
        Some(inner) => {
            let owned = owned(inner);
            quote! { <#owned as ::core::borrow::Borrow<#inner>>::borrow(&#local) }
        }
    });
    let pattern = tuple(locals.iter().map(|l| quote! { #l }).collect());
    let crossing = crossing(m, root);
    let call = quote! { #service.#name(#(#passed),*).await };
    let metadata = format_ident!("metadata", span = Span::mixed_site());
    let refusal = format_ident!("refusal", span = Span::mixed_site());
    let method_name = name.unraw().to_string();
    // The value and error types the caller's schema must agree with.
    let (ok, err) = match &m.ret {
        Return::Value(ty) => (quote! { #ty }, quote! { ::core::convert::Infallible }),
        Return::Result { ty, .. } | Return::Alias(ty) => (
            quote! { <#ty as #p::IsResult>::Ok },
            quote! { <#ty as #p::IsResult>::Err },
        ),
    };
    // What the handler answers, spanned at the return type so that a type
    // that cannot be encoded is reported there.
    let reply = match &m.ret {
        Return::Value(ty) => quote! {
            ::core::result::Result::<#ty, ::core::convert::Infallible>::Ok(#call)
        },
        Return::Result { ty, .. } | Return::Alias(ty) => quote! {
            <#ty as #p::IsResult>::into_result(#call)
        },
    };
    let reply = quote_spanned! {m.ret.ty().span()=>
        ::std::boxed::Box::new(#reply) as ::std::boxed::Box<dyn #p::ReplyValue>
    };
    quote! {
        if #method == #id {
            #(#crossing)*
            if let ::core::option::Option::Some(#refusal) =
                #p::check_schema::<#types, #ok, #err>(#metadata, #service_name, #method_name)
            {
                return #p::Dispatch::InvalidPayload(#refusal);
            }
            return match #args.decode::<#types>() {
                ::core::result::Result::Err(#error) => #p::Dispatch::InvalidPayload(#error),
                ::core::result::Result::Ok(#pattern) => {
                    let #service = ::std::sync::Arc::clone(&self.0);
                    #p::Dispatch::Run(::std::boxed::Box::pin(async move {
                        #reply
                    }))
                }
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The docs of method `name` in the generated `impl <client>`.
    fn client_docs(file: &syn::File, name: &str) -> Vec<String> {
        let method = file
            .items
            .iter()
            .filter_map(|i| match i {
                syn::Item::Impl(i) if i.trait_.is_none() => Some(i),
                _ => None,
            })
            .flat_map(|i| &i.items)
            .find_map(|i| match i {
                syn::ImplItem::Fn(f) if f.sig.ident == name => Some(f),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no client method {name}"));
        method
            .attrs
            .iter()
            .filter(|a| a.path().is_ident("doc"))
            .map(|a| match &a.meta {
                syn::Meta::NameValue(nv) => match &nv.value {
                    syn::Expr::Lit(syn::ExprLit {
                        lit: syn::Lit::Str(s),
                        ..
                    }) => s.value(),
                    other => panic!("unexpected doc {}", quote!(#other)),
                },
                other => panic!("unexpected doc {}", quote!(#other)),
            })
            .collect()
    }

    #[test]
    fn client_methods_carry_the_trait_methods_docs() {
        let service = Service::parse(syn::parse_quote! {
            /// Text.
            pub trait Text {
                /// Upper-cases.
                ///
                /// Second paragraph.
                async fn upper(&self, s: &str) -> String;
                async fn bare(&self);
            }
        })
        .unwrap_or_else(|e| panic!("{e}"));
        let file: syn::File = syn::parse2(expand(&service, &quote!(::osmos))).expect("the expansion parses");
        assert_eq!(
            client_docs(&file, "upper"),
            [" Upper-cases.", "", " Second paragraph."]
        );
        assert_eq!(
            client_docs(&file, "upper_with"),
            ["Calls [`upper`](Self::upper) with `options`: a deadline, metadata."]
        );
        assert_eq!(client_docs(&file, "bare"), ["Calls `bare` of the peer's `Text`."]);
    }
}
