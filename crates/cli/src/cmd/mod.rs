//! One module per subcommand.

pub mod boot;
pub mod functions;
pub mod inspect;
pub mod invoke;
pub mod snapshot;
pub mod worker;

use std::time::Duration;

/// Parses a timeout in seconds.
pub fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}
