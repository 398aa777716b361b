//! Breaker keys: borrowed for the handler's static key, shared for keys computed per call, so
//! that neither a call nor a rejection allocates.

use std::sync::Arc;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Key {
    Static(&'static str),
    Shared(Arc<str>),
}

impl Key {
    pub(crate) fn as_str(&self) -> &str {
        match self {
            Key::Static(key) => key,
            Key::Shared(key) => key,
        }
    }
}

/// Joins a handler's key and a per-call key: `"{handler}:{per_call}"`.
pub(crate) fn join(base: &str, per_call: &str) -> Arc<str> {
    let mut joined = String::with_capacity(base.len() + 1 + per_call.len());
    joined.push_str(base);
    joined.push(':');
    joined.push_str(per_call);
    joined.into()
}
