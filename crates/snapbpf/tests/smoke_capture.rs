use snapbpf::capture::*;
#[test]
#[ignore]
fn smoke() {
    let path = std::path::Path::new("/var/tmp/snapbpf_smoke");
    std::fs::write(path, vec![1u8; 64 << 20]).unwrap();
    let f = std::fs::File::open(path).unwrap();
    unsafe {
        libc::fdatasync(std::os::fd::AsRawFd::as_raw_fd(&f));
        libc::posix_fadvise(
            std::os::fd::AsRawFd::as_raw_fd(&f),
            0,
            0,
            libc::POSIX_FADV_DONTNEED,
        );
    }
    let opts = CaptureOptions {
        sources: vec![
            TraceSource::AddToPageCache,
            TraceSource::Fault,
            TraceSource::MapPages,
        ],
        ..Default::default()
    };
    let c = PageCacheCapture::start_with(path, &opts).unwrap();
    println!("{:?}", c.file());
    std::process::Command::new("dd")
        .args([
            "if=/var/tmp/snapbpf_smoke",
            "of=/dev/null",
            "bs=4096",
            "count=10",
            "skip=100",
        ])
        .status()
        .unwrap();
    let p = c.stop().unwrap();
    println!(
        "pages {} events {} by src {:?} hist {:?} lost {} matched {} dur {:?}",
        p.pages.len(),
        p.total_events,
        p.events_by_source,
        &p.order_histogram[..6],
        p.lost_events,
        p.matched_events,
        p.duration
    );
    println!("{:?}", p.pages.iter().take(10).collect::<Vec<_>>());
}
