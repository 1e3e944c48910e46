//! A TCP proxy that delays every byte by a fixed time in each direction: the latency half
//! of a network emulator, for kernels built without `tc netem` (this host's has TBF and
//! HTB for bandwidth, no netem). `scripts/measure-fleet.py` runs it between the clients
//! and an S3 server in a network namespace behind a TBF-limited veth.
//!
//! `cargo run --release -p snapbpf-fleet --example delay_proxy -- LISTEN UPSTREAM ONE_WAY_US`
//!
//! Each direction has a reader that timestamps what it reads and a writer that sends it
//! once its time has come, so throughput is not limited by the delay (a delay line, as
//! netem's), only latency added. Both sockets ACK at once (`TCP_QUICKACK`) and send at
//! once (`TCP_NODELAY`): the proxy adds exactly its delay and no Nagle or delayed-ACK
//! stalls of its own.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::time::{Duration, Instant};

fn quickack(s: &TcpStream) {
    let one: libc::c_int = 1;
    // SAFETY: setsockopt on a socket we own with a pointer to a local int.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_QUICKACK,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
}

/// Copies `from` to `to`, each read delivered `delay` after it was read.
fn pump(mut from: TcpStream, mut to: TcpStream, delay: Duration) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let writer = std::thread::spawn(move || {
        for (due, data) in rx {
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if to.write_all(&data).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
    let mut buf = vec![0u8; 256 << 10];
    loop {
        quickack(&from);
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if tx
                    .send((Instant::now() + delay, buf[..n].to_vec()))
                    .is_err()
                {
                    break;
                }
            }
        }
    }
    drop(tx);
    let _ = writer.join();
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, upstream, one_way_us] = args.as_slice() else {
        return Err("usage: delay_proxy LISTEN_ADDR UPSTREAM_ADDR ONE_WAY_DELAY_US".into());
    };
    let delay = Duration::from_micros(one_way_us.parse()?);
    let listener = TcpListener::bind(listen)?;
    eprintln!("delay_proxy: {listen} -> {upstream}, {delay:?} each way");
    for client in listener.incoming() {
        let Ok(client) = client else { continue };
        let upstream = upstream.clone();
        std::thread::spawn(move || {
            let Ok(server) = TcpStream::connect(&upstream) else {
                return;
            };
            for s in [&client, &server] {
                let _ = s.set_nodelay(true);
            }
            let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
                return;
            };
            let up = std::thread::spawn(move || pump(client, server, delay));
            pump(s2, c2, delay);
            let _ = up.join();
        });
    }
    Ok(())
}
