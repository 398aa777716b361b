//! The rules the kit checks, one file per subject; each is a method of the run.

mod breakers;
mod execute;
mod expiry;
mod primitives;
mod rounds;
