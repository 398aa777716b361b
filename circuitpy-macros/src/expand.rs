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
    // One call per phase: admission, then the body run under the permit, which records
    // its outcome. The method names carry the handler's span, so an unmet bound on the
    // handler's storage (a blocking function on an async-only storage) is reported there.
    let enter = if is_async {
        // Awaited only if the storage must be asked: a decision handed over through a
        // future would pass the permit through this function's future and back.
        let enter = syn::Ident::new("enter_async", handler.span());
        quote_spanned! {handler.span()=>
            '__circuitpy_entered: {
                let __circuitpy_asking = match #private::#enter::<#handler>(&#handler, &__CIRCUITPY_SITE, #key, #method) {
                    #private::Entering::Decided(admission) => break '__circuitpy_entered admission,
                    #private::Entering::Asking(asking) => asking,
                };
                __circuitpy_asking.await
            }
        }
    } else {
        let enter = syn::Ident::new("enter", handler.span());
        quote_spanned!(handler.span()=> #private::#enter::<#handler>(&#handler, &__CIRCUITPY_SITE, #key, #method))
    };
    // A closure, so that the error type is inferred from the body and a predicate of the
    // wrong type is reported at its own name.
    let counts = match &args.is_failure {
        Some(is_failure) => {
            quote_spanned!(is_failure.span()=> |__circuitpy_error| #is_failure(__circuitpy_error))
        }
        None => quote_spanned!(handler.span()=> #private::handler_counts(&#handler)),
    };
    let run = if is_async {
        let run = syn::Ident::new("run_async", handler.span());
        quote_spanned! {handler.span()=>
            __circuitpy_permit.#run(async move #body, #counts).await
        }
    } else {
        let run = syn::Ident::new("run", handler.span());
        quote_spanned! {handler.span()=>
            __circuitpy_permit.#run(move || #body, #counts)
        }
    };
    // Spanned at the handler: a handler that is not one is reported there.
    let permit = quote_spanned! {handler.span()=>
        let __circuitpy_permit = match #enter {
            ::core::result::Result::Ok(permit) => permit,
            ::core::result::Result::Err(__circuitpy_rejection) => {
                let _ = &__circuitpy_rejection;
                // `From::from` is the identity when the error type is the rejection.
                #[allow(clippy::useless_conversion)]
                let __circuitpy_rejected = #rejected;
                return __circuitpy_rejected;
            }
        };
    };
    // Checked first, so that a handler that is not one, or whose consts are invalid, is
    // reported at the handler's name. A `const` item is evaluated by `cargo check` too (an
    // inline `const` block only when the function is compiled); it cannot name the
    // function's generics or `Self`, where the block is used instead. The call is spelled
    // with the handler's span only (a path keeping the macro's span would get the error
    // reported at the whole attribute); the `use` keeps the crate path's own span, so an
    // unknown `crate = ...` is reported there.
    let alias = syn::Ident::new("__circuitpy_check_handler", handler.span());
    let call = quote_spanned!(handler.span()=> #alias::<#handler>());
    let check = if mentions_generics(handler, sig) {
        quote! {
            const {
                use #private::check_handler as #alias;
                #call
            };
        }
    } else {
        quote! {
            const _: () = {
                use #private::check_handler as #alias;
                #call
            };
        }
    };
    // Without a fallback the body is handed over with the breaker's place, found before the
    // body takes the arguments a per-call key borrows: a blocking call runs the closed
    // breaker's call apart from every other; an async one is one future that admits the
    // call in its first poll and polls the body at once, so that the permit stays out of
    // the function's future unless the body is pending. (A fallback needs the arguments
    // after a rejection, so there the call is admitted before the body is made.)
    let call = if args.fallback.is_none() {
        let (run, body, wait) = if is_async {
            ("guarded", quote!(async move #body), quote!(.await))
        } else {
            ("call", quote!(move || #body), quote!())
        };
        let locate = syn::Ident::new("locate", handler.span());
        let run = syn::Ident::new(run, handler.span());
        quote_spanned! {handler.span()=>
            let __circuitpy_located = #private::#locate::<#handler>(&#handler, &__CIRCUITPY_SITE, #key, #method);
            #private::#run(
                __circuitpy_located,
                #body,
                #counts,
                |__circuitpy_rejection| {
                    // `From::from` is the identity when the error type is the rejection.
                    #[allow(clippy::useless_conversion)]
                    let __circuitpy_rejected = #rejected;
                    __circuitpy_rejected
                },
            )
            #wait
        }
    } else {
        quote!(#permit #run)
    };
    Ok(quote! {
        #(#attrs)*
        #vis #sig {
            #check
            static __CIRCUITPY_SITE: #private::Site = #private::Site::new();
            #call
        }
    })
}

/// Whether the handler's path names `Self` or one of the function's generic parameters,
/// which an item inside the function cannot.
fn mentions_generics(handler: &syn::Path, sig: &syn::Signature) -> bool {
    let generics: Vec<String> = sig
        .generics
        .params
        .iter()
        .filter_map(|param| match param {
            syn::GenericParam::Type(ty) => Some(ty.ident.to_string()),
            syn::GenericParam::Const(constant) => Some(constant.ident.to_string()),
            syn::GenericParam::Lifetime(_) => None,
        })
        .collect();
    fn scan(tokens: TokenStream, generics: &[String]) -> bool {
        tokens.into_iter().any(|token| match token {
            TokenTree::Ident(ident) => {
                ident == "Self" || generics.iter().any(|generic| ident == generic)
            }
            TokenTree::Group(group) => scan(group.stream(), generics),
            _ => false,
        })
    }
    scan(handler.to_token_stream(), &generics)
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
