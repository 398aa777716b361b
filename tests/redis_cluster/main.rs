//! The cluster storages (feature `redis-cluster`) against a real six-node Redis Cluster the
//! tests start: the conformance kit, breakers spread over every primary, one breaker shared
//! by several processes, and a primary killed under load.

mod failover;
mod fleet;
mod kit;
mod spread;
