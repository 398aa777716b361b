//! The attribute's options: `handler = Path, key = expr, fallback = path, is_failure = path,
//! crate = "path"`.

use proc_macro2::Span;
use syn::ext::IdentExt;
use syn::parse::{Parse, ParseStream};
use syn::{Expr, Ident, LitStr, Path, Token};

const OPTIONS: &str = "expected one of `handler`, `key`, `fallback`, `is_failure`, `crate`";

pub(crate) struct Args {
    pub(crate) handler: Path,
    pub(crate) key: Option<Expr>,
    pub(crate) fallback: Option<Path>,
    pub(crate) is_failure: Option<Path>,
    pub(crate) krate: Option<Path>,
}

impl Parse for Args {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let mut handler = None;
        let mut key = None;
        let mut fallback = None;
        let mut is_failure = None;
        let mut krate = None;
        while !input.is_empty() {
            let name = Ident::parse_any(input)?;
            input.parse::<Token![=]>()?;
            match name.to_string().as_str() {
                "handler" => set_once(&mut handler, &name, input.parse()?)?,
                "key" => set_once(&mut key, &name, input.parse()?)?,
                "fallback" => set_once(&mut fallback, &name, input.parse()?)?,
                "is_failure" => set_once(&mut is_failure, &name, input.parse()?)?,
                "crate" => {
                    let path: LitStr = input.parse()?;
                    set_once(&mut krate, &name, path.parse_with(Path::parse_mod_style)?)?;
                }
                other => {
                    return Err(syn::Error::new(
                        name.span(),
                        format!("unknown option `{other}`; {OPTIONS}"),
                    ));
                }
            }
            if input.is_empty() {
                break;
            }
            input.parse::<Token![,]>()?;
        }
        let handler = handler.ok_or_else(|| {
            syn::Error::new(
                Span::call_site(),
                "missing `handler = ...`: name the unit struct that implements `circuitpy::CircuitBreaker`",
            )
        })?;
        Ok(Args {
            handler,
            key,
            fallback,
            is_failure,
            krate,
        })
    }
}

/// Stores an option's value, or fails on the option's second appearance.
fn set_once<T>(slot: &mut Option<T>, name: &Ident, value: T) -> syn::Result<()> {
    if slot.is_some() {
        return Err(syn::Error::new(
            name.span(),
            format!("duplicate option `{name}`; each option may appear once"),
        ));
    }
    *slot = Some(value);
    Ok(())
}
