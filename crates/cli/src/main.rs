//! `snapbpf`: snapshot serverless functions into microVMs and restore them fast.
//!
//! A thin front-end: every subcommand parses its arguments and calls the `snapbpf`
//! library. Errors are printed with their whole cause chain on one line, exit code 1;
//! argument errors exit with 2.

use clap::{Parser, Subcommand};

mod cmd;
mod engine;

/// Fast cold starts for snapshot-restored microVM functions (SnapBPF, HotStorage '25).
#[derive(Debug, Parser)]
#[command(name = "snapbpf", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// The Firecracker binary for snapshots taken or restored with `--vmm firecracker`
    /// [default: $FIRECRACKER, else `firecracker` on PATH].
    #[arg(long, global = true, value_name = "PATH")]
    firecracker: Option<std::path::PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    Functions(cmd::functions::Args),
    Strategies(cmd::strategies::Args),
    Snapshot(cmd::snapshot::Args),
    Boot(cmd::boot::Args),
    Invoke(cmd::invoke::Args),
    Record(cmd::record::Args),
    Inspect(cmd::inspect::Args),
    Verify(cmd::verify::Args),
    Bench(cmd::bench::Args),
    Trace(cmd::trace::Args),
    Prefetch(cmd::prefetch::Args),
    Profile(cmd::profile::Args),
    UffdHandler(cmd::uffd_handler::Args),
    Store(cmd::store::Args),
    Push(cmd::fleet::PushArgs),
    Mount(cmd::fleet::MountArgs),
    #[command(name = "__worker", hide = true)]
    Worker(cmd::worker::Args),
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SNAPBPF_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    // `snapbpf ... | head`: a closed stdout ends the command quietly, as it would a C
    // tool killed by SIGPIPE (which stays ignored, so sockets report EPIPE instead).
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let text = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .unwrap_or_default();
        if text.starts_with("failed printing to stdout") && text.contains("Broken pipe") {
            std::process::exit(128 + libc::SIGPIPE);
        }
        default_hook(info);
    }));
    let cli = Cli::parse();
    if let Some(path) = &cli.firecracker {
        // Before any thread starts: the library and every VM worker process find the
        // binary there.
        std::env::set_var("FIRECRACKER", path);
    }
    // Library code that must end the process (after an interrupt's undo, or a fault
    // handler that cannot stop its vCPU) ends it this way.
    snapbpf_os::terminate::set_hook(|code| std::process::exit(code));
    if let Err(e) = snapbpf_os::interrupt::install() {
        tracing::warn!("interrupts will not clean up: {e}");
    }
    let result = match cli.command {
        Command::Functions(a) => cmd::functions::run(a),
        Command::Strategies(a) => cmd::strategies::run(a),
        Command::Snapshot(a) => cmd::snapshot::run(a),
        Command::Boot(a) => cmd::boot::run(a),
        Command::Invoke(a) => cmd::invoke::run(a),
        Command::Record(a) => cmd::record::run(a),
        Command::Inspect(a) => cmd::inspect::run(a),
        Command::Verify(a) => cmd::verify::run(a),
        Command::Bench(a) => cmd::bench::run(a),
        Command::Trace(a) => cmd::trace::run(a),
        Command::Prefetch(a) => cmd::prefetch::run(a),
        Command::Profile(a) => cmd::profile::run(a),
        Command::UffdHandler(a) => cmd::uffd_handler::run(a),
        Command::Store(a) => cmd::store::run(a),
        Command::Push(a) => cmd::fleet::push(a),
        Command::Mount(a) => cmd::fleet::mount(a),
        Command::Worker(a) => cmd::worker::run(a),
    };
    if let Err(e) = result {
        // One line: the whole cause chain, each cause once.
        let line = snapbpf::error_chain(e.as_ref()).replace('\n', " ");
        eprintln!("error: {line}");
        std::process::exit(1);
    }
}
