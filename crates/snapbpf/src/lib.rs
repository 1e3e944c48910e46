//! placeholder

pub mod capture;
pub mod prefetch;
pub mod workingset;
