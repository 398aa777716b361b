//! Rewrites the guarded function's body; the signature stays exactly as written.

use proc_macro2::{TokenStream, TokenTree};
use quote::{ToTokens, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{FnArg, ItemFn, Pat, ReturnType, Type};

use crate::args::Args;

pub(crate) fn circuit_breaker(args: TokenStream, item: TokenStream) -> TokenStream {
    let function: ItemFn = match syn::parse2(item.clone()) {
        Ok(function) => function,
        Err(error) => {
            let error = syn::Error::new(
                error.span(),
                "`#[circuit_breaker]` goes on a function returning `Result<T, E>`",
            );
            return with_error(item, error);
        }
    };
    match syn::parse2::<Args>(args).and_then(|args| expand(&args, &function)) {
        Ok(expanded) => expanded,
        // Keep the function as written so the rest of the crate still type-checks.
        Err(error) => with_error(function.into_token_stream(), error),
    }
}

fn with_error(item: TokenStream, error: syn::Error) -> TokenStream {
    let error = error.into_compile_error();
    quote!(#error #item)
}

fn expand(args: &Args, function: &ItemFn) -> syn::Result<TokenStream> {
    let ItemFn {
        attrs,
        vis,
        sig,
        block,
    } = function;
    if let Some(constness) = &sig.constness {
        return Err(syn::Error::new(
            constness.span(),
            "`#[circuit_breaker]` cannot guard a `const fn`",
        ));
    }
    let return_type = result_type(&sig.output, sig)?;
    let krate = match &args.krate {
        Some(path) => path.to_token_stream(),
        None => quote!(::circuitpy),
    };
    let private = quote!(#krate::__private);
    let handler = &args.handler;
    let method = sig.ident.to_string();

    let key = match &args.key {
        Some(expr) => quote_spanned! {expr.span()=>
            ::core::option::Option::Some(#private::key_str(&(#expr)))
        },
        None => quote!(::core::option::Option::None),
    };
    let is_async = sig.asyncness.is_some();
    let rejected = match &args.fallback {
        Some(fallback) => {
            let arguments = argument_names(sig)?;
            let call = quote_spanned!(fallback.span()=> #fallback(#(#arguments),*));
            if is_async {
                // Spanned too, so a fallback that is not async is reported at its name.
                quote_spanned!(fallback.span()=> #call.await)
            } else {
                call
            }
        }
        None => quote_spanned! {return_type.span()=>
            ::core::result::Result::Err(::core::convert::From::from(__circuitpy_rejection))
        },
    };
    // The body keeps its own `return` and `?`: it runs as a closure (or async block) whose
    // type is pinned to the function's, except where a `let` cannot name it (`impl Trait`).
    let body = if mentions_impl_trait(return_type) {
        quote!(#block)
    } else {
        quote! {{
            #[allow(unreachable_code, clippy::let_and_return, clippy::needless_return)]
            let __circuitpy_return: #return_type = #block;
            #[allow(unreachable_code)]
            __circuitpy_return
        }}
    };
    // An async function on an in-process storage (a constant) admits and records without
    // awaiting anything, so its future carries no storage futures in its live states.
    let enter = if is_async {
        quote_spanned! {handler.span()=>
            if #private::in_process::<#handler>() {
                #private::enter_now::<#handler>(&#handler, &__CIRCUITPY_SITE, #key, #method)
            } else {
                #private::enter_async::<#handler>(&#handler, &__CIRCUITPY_SITE, #key, #method).await
            }
        }
    } else {
        quote_spanned!(handler.span()=> #private::enter::<#handler>(&#handler, &__CIRCUITPY_SITE, #key, #method))
    };
    // The method name carries the handler's span: an unmet bound on the handler's storage
    // is reported there.
    let run = if is_async {
        let complete = syn::Ident::new("complete_async", handler.span());
        let complete_now = syn::Ident::new("complete_now", handler.span());
        quote! {{
            let __circuitpy_result = #private::catch_async(async move #body).await;
            if #private::in_process::<#handler>() {
                __circuitpy_guard.#complete_now(__circuitpy_result)
            } else {
                __circuitpy_guard.#complete(__circuitpy_result).await
            }
        }}
    } else {
        // On an in-process storage (a constant) the body runs uncaught and a panic is
        // recorded as it unwinds, which keeps the body's result out of `catch_unwind`.
        let complete = syn::Ident::new("complete", handler.span());
        let run_in_process = syn::Ident::new("run_in_process", handler.span());
        quote! {{
            let __circuitpy_body = move || #body;
            if #private::in_process_blocking::<#handler>() {
                __circuitpy_guard.#run_in_process(__circuitpy_body)
            } else {
                __circuitpy_guard.#complete(#private::catch(__circuitpy_body))
            }
        }}
    };
    // Checked first, so that a handler that is not one, or whose consts are invalid, is
    // reported at the handler's name, even by `cargo check`. The call is spelled with the handler's span only (a path keeping the macro's span
    // would get the error reported at the whole attribute); the `use` keeps the crate
    // path's own span, so an unknown `crate = ...` is reported there.
    let alias = syn::Ident::new("__circuitpy_check_handler", handler.span());
    let call = quote_spanned!(handler.span()=> #alias::<#handler>());
    let check = quote! {
        const {
            use #private::check_handler as #alias;
            #call
        };
    };
    let guard_mut = if is_async { quote!(mut) } else { quote!() };
    Ok(quote! {
        #(#attrs)*
        #vis #sig {
            #check
            static __CIRCUITPY_SITE: #private::Site = #private::Site::new();
            let #guard_mut __circuitpy_guard = match #enter {
                ::core::result::Result::Ok(guard) => guard,
                ::core::result::Result::Err(__circuitpy_rejection) => {
                    let _ = &__circuitpy_rejection;
                    // `From::from` is the identity when the error type is the rejection.
                    #[allow(clippy::useless_conversion)]
                    let __circuitpy_rejected = #rejected;
                    return __circuitpy_rejected;
                }
            };
            #run
        }
    })
}

/// The return type, which must be spelled `Result<..>` (any path ending in `Result`, so
/// aliases such as `io::Result<T>` work).
fn result_type<'a>(output: &'a ReturnType, sig: &syn::Signature) -> syn::Result<&'a Type> {
    let message = "`#[circuit_breaker]` needs a function returning `Result<T, E>`";
    match output {
        ReturnType::Default => Err(syn::Error::new(sig.paren_token.span.close(), message)),
        ReturnType::Type(_, ty) => match &**ty {
            Type::Path(path)
                if path.qself.is_none()
                    && path
                        .path
                        .segments
                        .last()
                        .is_some_and(|s| s.ident == "Result") =>
            {
                Ok(ty)
            }
            _ => Err(syn::Error::new_spanned(ty, message)),
        },
    }
}

fn mentions_impl_trait(ty: &Type) -> bool {
    fn scan(tokens: TokenStream) -> bool {
        tokens.into_iter().any(|token| match token {
            TokenTree::Ident(ident) => ident == "impl",
            TokenTree::Group(group) => scan(group.stream()),
            _ => false,
        })
    }
    scan(ty.to_token_stream())
}

/// The names to pass a fallback: the receiver, then each argument.
fn argument_names(sig: &syn::Signature) -> syn::Result<Vec<TokenStream>> {
    sig.inputs
        .iter()
        .map(|input| match input {
            FnArg::Receiver(receiver) => Ok(receiver.self_token.to_token_stream()),
            FnArg::Typed(typed) => match &*typed.pat {
                Pat::Ident(ident) if ident.subpat.is_none() => {
                    let name = &ident.ident;
                    Ok(quote!(#name))
                }
                pattern => Err(syn::Error::new(
                    pattern.span(),
                    "`fallback` passes each argument on by name: give this argument a plain name",
                )),
            },
        })
        .collect()
}
