//! # osmos-macros: `#[osmos::service]`
//!
//! The attribute that turns an ordinary trait of `async fn`s into an osmos
//! service. Use it as `osmos::service` (the `osmos` crate re-exports it);
//! the documentation is on [`macro@service`].
//!
//! How it fits: `model.rs` checks the trait against the rules of a service
//! and reports every broken rule at its own span; `expand.rs` writes the
//! trait, the client and the dispatcher. The generated code names the session
//! API through `osmos::__private` or, for a crate that depends on
//! `osmos-session` without `osmos`, `osmos_session::__private` (found in the
//! user's `Cargo.toml` with `proc-macro-crate`, renamed dependencies
//! included).

use proc_macro::TokenStream;
use proc_macro_crate::{FoundCrate, crate_name};
use quote::{ToTokens, quote};
use syn::ItemTrait;

mod expand;
mod model;

/// Defines a service from a trait: the trait (implement it to serve), a
/// typed client `<Trait>Client` and a dispatcher `<Trait>Dispatcher`.
///
/// ```
/// use osmos::Facet;
///
/// /// Why a number did not parse.
/// #[derive(Debug, Facet)]
/// #[facet(crate = osmos::facet)]
/// pub struct ParseError {
///     /// What was wrong.
///     pub detail: String,
/// }
///
/// /// Text utilities.
/// #[osmos::service]
/// pub trait Text {
///     /// Upper-cases `s`.
///     async fn upper(&self, s: &str) -> String;
///     /// Parses a number.
///     async fn parse(&self, s: String) -> Result<u32, ParseError>;
/// }
///
/// struct Impl;
/// impl Text for Impl {
///     async fn upper(&self, s: &str) -> String {
///         s.to_uppercase()
///     }
///     async fn parse(&self, s: String) -> Result<u32, ParseError> {
///         s.parse().map_err(|e| ParseError { detail: format!("{s:?}: {e}") })
///     }
/// }
///
/// // Serve it: `SessionBuilder::new().serve(TextDispatcher::new(Impl))`.
/// // Call it: `TextClient::new(conn).upper("hi").await`, which returns
/// // `Result<String, CallError<Infallible>>`.
/// let _serve = TextDispatcher::new(Impl);
/// ```
///
/// # What is generated
///
/// - **The trait**, each `async fn m(&self, ..) -> R` written as
///   `fn m(&self, ..) -> impl Future<Output = R> + Send` with `Send + Sync +
///   'static` added to the supertraits, so the dispatcher can run calls on a
///   multi-threaded runtime. Implement it with plain `async fn`s.
/// - **`<Trait>Client`**: `new(conn)`, `From<Connection>`, `connection()`,
///   and for every method `m` an `async fn m(&self, ..)` and an
///   `async fn m_with(&self, options: CallOptions, ..)` (a deadline,
///   metadata). They return `Result<T, CallError<E>>`: `E` is the method's
///   error type, or `std::convert::Infallible` for a method that returns a
///   plain `T` (so `CallError::User` cannot happen). The method's doc
///   comments are carried over.
/// - **`<Trait>Dispatcher<S>`**: `new(impl) -> Arc<Self>`, a `Dispatcher`
///   whose `describe()` lists the methods.
///
/// Method ids are `method_id("Trait", "m")`: a client of one definition
/// calls a dispatcher of another of the same name, and an argument `&str`
/// on one side meets `String` on the other.
///
/// # Rules
///
/// - Methods are `async fn` taking `&self`, not generic, without a default
///   body; the trait is not generic.
/// - Arguments are named by plain identifiers (not patterns). Owned types
///   are sent as they are; a borrowed `&T` (`&str`, `&[u32]`, `&MyType`) is
///   sent as `T::to_owned()` (the client copies it once) and lent to the
///   implementation from the decoded `T::Owned`. `&mut T` and `impl Trait`
///   are refused. `options` is not an argument name (the `*_with` methods use
///   it), and `new`, `connection` and `m_with` beside a method `m` are not
///   method names (the client has methods of those names).
/// - A method returns a value `T`, `Result<T, E>`, or an alias whose name
///   ends in `Result` (`type MyResult<T> = Result<T, MyError>`): aliases are
///   resolved through a trait implemented for `Result`, so a type named
///   `...Result` must be a `Result`. An alias named otherwise
///   (`type Checked<T> = Result<T, E>`) is taken for a plain value: the
///   client then gets `Ok(Err(e))`, and a peer whose definition of the
///   method returns `Result<T, E>` disagrees on the encoding; name it
///   `...Result`. Nothing returned means `()`. Borrows
///   and `impl Trait` are refused.
/// - Every argument, value and error type is a `Facet` type (derive it with
///   `#[derive(osmos::Facet)] #[facet(crate = osmos::facet)]`). The std
///   types plugin APIs use are: `Duration`, `PathBuf`/`&Path`,
///   `IpAddr`/`SocketAddr`, 128-bit integers, maps and sets, `NonZero*`.
///   `SystemTime`, `Instant` and `OsString` are not, and are reported at the
///   argument that holds them. A method takes any number of arguments.
///
/// Broken rules are compile errors at the offending method, argument or type.
#[proc_macro_attribute]
pub fn service(attr: TokenStream, item: TokenStream) -> TokenStream {
    if !attr.is_empty() {
        let attr = proc_macro2::TokenStream::from(attr);
        return syn::Error::new_spanned(attr, "`#[osmos::service]` takes no arguments")
            .to_compile_error()
            .into();
    }
    let trait_: ItemTrait = match syn::parse(item.clone()) {
        Ok(t) => t,
        Err(e) => {
            let e = syn::Error::new(
                e.span(),
                format!("`#[osmos::service]` goes on a trait of `async fn` methods ({e})"),
            );
            let mut out = proc_macro2::TokenStream::from(item);
            out.extend(e.to_compile_error());
            return out.into();
        }
    };
    match model::Service::parse(trait_.clone()) {
        Ok(service) => expand::expand(&service, &root()).into(),
        // Keep the trait as written so that its uses do not add errors of
        // their own to the ones that matter.
        Err(e) => {
            let mut out = trait_.into_token_stream();
            out.extend(e.to_compile_error());
            out.into()
        }
    }
}

/// The path of the crate the generated code names: `::osmos` if the user's
/// crate depends on it (or is it), else `::osmos_session`, under whatever
/// name the user's `Cargo.toml` gives them.
fn root() -> proc_macro2::TokenStream {
    let named = |name: &str| {
        let ident = syn::Ident::new(name, proc_macro2::Span::call_site());
        quote! { ::#ident }
    };
    match crate_name("osmos") {
        // Inside `osmos` itself, which declares `extern crate self as osmos`.
        Ok(FoundCrate::Itself) => named("osmos"),
        Ok(FoundCrate::Name(name)) => named(&name),
        Err(_) => match crate_name("osmos-session") {
            Ok(FoundCrate::Itself) => named("osmos_session"),
            Ok(FoundCrate::Name(name)) => named(&name),
            // Neither: name `osmos`, so that the error says what to add.
            Err(_) => named("osmos"),
        },
    }
}
