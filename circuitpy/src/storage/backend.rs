//! How the engine, the primitive protocol and the conformance kit reach a storage: one trait
//! over both flavours, so that protocol code is written once for blocking and async
//! storages.

use std::future::Future;
use std::time::Duration;

use super::{AsyncStorage, Request, Snapshot, Storage};
use crate::clock::Clock;
use crate::error::StorageError;

/// The storage calls the engine and the primitive algorithm make, over either flavour.
pub(crate) trait Backend: Sync {
    fn increment(
        &self,
        key: &str,
        ttl: Duration,
    ) -> impl Future<Output = Result<u64, StorageError>> + Send;
    fn increment_by(
        &self,
        key: &str,
        count: u64,
        ttl: Duration,
    ) -> impl Future<Output = Result<u64, StorageError>> + Send;
    fn get_count(&self, key: &str) -> impl Future<Output = Result<u64, StorageError>> + Send;
    fn expire_after(
        &self,
        key: &str,
        ttl: Duration,
    ) -> impl Future<Output = Result<(), StorageError>> + Send;
    fn execute(
        &self,
        request: &Request<'_>,
    ) -> impl Future<Output = Result<Snapshot, StorageError>> + Send;
    fn clock(&self) -> &Clock;
}

/// A [`Storage`] seen as a [`Backend`]; its futures are ready on their first poll.
pub(crate) struct Blocking<'a, S: ?Sized>(pub(crate) &'a S);

/// An [`AsyncStorage`] seen as a [`Backend`].
pub(crate) struct Async<'a, S: ?Sized>(pub(crate) &'a S);

impl<S: Storage + ?Sized> Backend for Blocking<'_, S> {
    async fn increment(&self, key: &str, ttl: Duration) -> Result<u64, StorageError> {
        Storage::increment(self.0, key, ttl)
    }
    async fn increment_by(
        &self,
        key: &str,
        count: u64,
        ttl: Duration,
    ) -> Result<u64, StorageError> {
        Storage::increment_by(self.0, key, count, ttl)
    }
    async fn get_count(&self, key: &str) -> Result<u64, StorageError> {
        Storage::get_count(self.0, key)
    }
    async fn expire_after(&self, key: &str, ttl: Duration) -> Result<(), StorageError> {
        Storage::expire_after(self.0, key, ttl)
    }
    async fn execute(&self, request: &Request<'_>) -> Result<Snapshot, StorageError> {
        Storage::execute(self.0, request)
    }
    fn clock(&self) -> &Clock {
        Storage::clock(self.0)
    }
}

impl<S: AsyncStorage + ?Sized> Backend for Async<'_, S> {
    fn increment(
        &self,
        key: &str,
        ttl: Duration,
    ) -> impl Future<Output = Result<u64, StorageError>> + Send {
        AsyncStorage::increment(self.0, key, ttl)
    }
    fn increment_by(
        &self,
        key: &str,
        count: u64,
        ttl: Duration,
    ) -> impl Future<Output = Result<u64, StorageError>> + Send {
        AsyncStorage::increment_by(self.0, key, count, ttl)
    }
    fn get_count(&self, key: &str) -> impl Future<Output = Result<u64, StorageError>> + Send {
        AsyncStorage::get_count(self.0, key)
    }
    fn expire_after(
        &self,
        key: &str,
        ttl: Duration,
    ) -> impl Future<Output = Result<(), StorageError>> + Send {
        AsyncStorage::expire_after(self.0, key, ttl)
    }
    fn execute(
        &self,
        request: &Request<'_>,
    ) -> impl Future<Output = Result<Snapshot, StorageError>> + Send {
        AsyncStorage::execute(self.0, request)
    }
    fn clock(&self) -> &Clock {
        AsyncStorage::clock(self.0)
    }
}

/// Drives a future built only from blocking calls, which is ready on its first poll; no
/// async runtime is involved.
pub(crate) fn ready<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(output) = future.as_mut().poll(&mut context) {
            return output;
        }
        // Not reached by blocking backends; yielding keeps a misbehaving one from spinning hot.
        std::thread::yield_now();
    }
}
