//! The conformance kit on storages in this process: the in-memory one, correct and broken
//! ones written from the primitives, and the custom storage of `examples/custom_storage.rs`.

mod custom;
mod memory;
