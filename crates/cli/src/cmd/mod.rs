//! One module per subcommand.

pub mod bench;
pub mod boot;
pub mod fleet;
pub mod functions;
pub mod inspect;
pub mod invoke;
pub mod prefetch;
pub mod profile;
pub mod record;
pub mod snapshot;
pub mod store;
pub mod strategies;
pub mod strategy_args;
pub mod trace;
pub mod uffd_handler;
pub mod verify;
pub mod worker;

use std::time::Duration;

/// Parses a timeout in seconds.
pub fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// This executable, which also serves as the VM worker.
pub fn current_exe() -> anyhow::Result<std::path::PathBuf> {
    use anyhow::Context;
    std::env::current_exe().context("cannot find the snapbpf executable for VM workers")
}

/// The command of one VM worker process (`snapbpf __worker`, see `snapbpf::launch`): the
/// launcher passes it everything else on its stdin.
pub fn worker_command(exe: &std::path::Path) -> std::process::Command {
    let mut c = std::process::Command::new(exe);
    c.arg("__worker");
    c
}

/// Looks up `function` and checks `input` against its inputs.
pub fn function_input(
    function: &str,
    input: u32,
) -> anyhow::Result<&'static snapbpf_functions::FunctionInfo> {
    let info = snapbpf_functions::Call::parse(function)
        .map_err(|e| anyhow::anyhow!("cannot run function '{function}': {e}"))?
        .info;
    if input >= info.inputs {
        anyhow::bail!(
            "function '{}' takes inputs 0..{}, got {input}",
            info.name,
            info.inputs
        );
    }
    Ok(info)
}

/// Who a server started here serves, besides root and its own user (`docs/security.md`).
#[derive(Debug, Clone, clap::Args)]
pub struct AccessArgs {
    /// Also serve this user id (repeatable). Its requests reach only snapshots in
    /// directories it owns.
    #[arg(long = "allow-uid", value_name = "UID")]
    pub allow_uids: Vec<u32>,
    /// Also serve processes of this group id; the socket is then 0660 and of this group
    /// (else 0600).
    #[arg(long, value_name = "GID")]
    pub group: Option<u32>,
}

impl AccessArgs {
    /// The policy these arguments ask for.
    pub fn policy(&self) -> snapbpf_os::access::AccessPolicy {
        snapbpf_os::access::AccessPolicy {
            uids: self.allow_uids.clone(),
            gid: self.group,
        }
    }
}

/// The store's socket unless `--socket` says otherwise.
pub const DEFAULT_STORE_SOCKET: &str = "/run/snapbpf/store.sock";
