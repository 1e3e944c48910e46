//! `linux-nora` and `linux-ra`: plain demand paging from a `MAP_PRIVATE` mapping of the
//! snapshot's memory file, as vanilla Firecracker restores, with the kernel's fault
//! readahead off (`MADV_RANDOM`) or on with the paper's 128 KiB window.
//!
//! # The readahead window
//! Fault read-around uses the window of the opened file (`file->f_ra.ra_pages`), which
//! the kernel copies from the device's `read_ahead_kb` when the file is opened. There is
//! no per-file knob, so `linux-ra` opens the memory file while the device's value is set
//! to the window and restores the device value right after, under an exclusive lock so
//! concurrent restores do not interleave. The window then stays with this open file only.
//! Files without a block device (tmpfs) have no readahead; the window is then reported
//! as absent.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use snapbpf_vmm::{FaultReadahead, GuestMemory};

use super::registry::{parse_as, OptionInfo, StrategyInfo, StrategyOptions, StrategySpec};
use super::{Restored, Strategy, StrategyError};
use crate::snapshot::Snapshot;

/// The option that backs guest memory with huge page-cache folios (linux-ra, snapbpf).
pub const THP_OPTION: OptionInfo = OptionInfo {
    name: "thp",
    value: None,
    help: "back guest memory with huge (2 MiB) page-cache folios (needs transparent huge pages)",
};

/// Registry row of `linux-nora`.
pub static NORA_INFO: StrategyInfo = StrategyInfo {
    name: "linux-nora",
    description: "demand paging from a MAP_PRIVATE mapping of the snapshot, readahead off",
    options: &[],
    required: &[],
    record: false,
    artifacts: &[],
    parse: |o| parse_as(o).map(StrategySpec::LinuxNora),
};

/// Registry row of `linux-ra`.
pub static RA_INFO: StrategyInfo = StrategyInfo {
    name: "linux-ra",
    description: "demand paging with the kernel's 128 KiB fault read-around (the paper's baseline)",
    options: &[THP_OPTION],
    required: &[],
    record: false,
    artifacts: &[],
    parse: |o| parse_as(o).map(StrategySpec::LinuxRa),
};

/// Options of `linux-nora`: none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoraOptions {}

impl StrategyOptions for NoraOptions {
    const INFO: &'static StrategyInfo = &NORA_INFO;
    fn build(&self) -> Box<dyn Strategy> {
        Box::new(LinuxPaging::no_readahead())
    }
}

/// Options of `linux-ra`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadaheadOptions {
    /// Back guest memory with huge page-cache folios.
    #[serde(default)]
    pub thp: bool,
}

impl StrategyOptions for ReadaheadOptions {
    const INFO: &'static StrategyInfo = &RA_INFO;
    fn set(&mut self, name: &str, _: Option<&str>) -> Result<(), String> {
        match name {
            "thp" => self.thp = true,
            other => return Err(format!("unexpected option {other}")),
        }
        Ok(())
    }
    fn render(&self) -> Vec<String> {
        if self.thp {
            vec!["thp".into()]
        } else {
            Vec::new()
        }
    }
    fn build(&self) -> Box<dyn Strategy> {
        Box::new(LinuxPaging::readahead().with_huge_pages(self.thp))
    }
}

/// The paper's Linux-RA window: the kernel default of 128 KiB (32 pages).
pub const PAPER_READAHEAD_KIB: u64 = 128;

/// Demand paging from the page cache.
#[derive(Debug, Clone, Copy)]
pub struct LinuxPaging {
    readahead_kib: Option<u64>,
    huge_pages: bool,
}

impl LinuxPaging {
    /// Linux-NoRA: every fault reads one page.
    pub fn no_readahead() -> Self {
        Self {
            readahead_kib: None,
            huge_pages: false,
        }
    }

    /// Linux-RA with the paper's 128 KiB window.
    pub fn readahead() -> Self {
        Self {
            readahead_kib: Some(PAPER_READAHEAD_KIB),
            huge_pages: false,
        }
    }

    /// Backs guest memory with huge page-cache folios (see
    /// [`GuestMemory::use_huge_pages`]): faults then read and map whole 2 MiB folios.
    pub fn with_huge_pages(mut self, on: bool) -> Self {
        self.huge_pages = on;
        self
    }
}

impl Strategy for LinuxPaging {
    fn name(&self) -> &'static str {
        if self.readahead_kib.is_some() {
            "linux-ra"
        } else {
            "linux-nora"
        }
    }

    fn restore(&self, snapshot: &Snapshot) -> Result<Restored, StrategyError> {
        let path = snapshot.memory_path();
        let (file, window) = match self.readahead_kib {
            Some(kib) => open_with_readahead_window(&path, kib)?,
            None => (
                File::open(&path).map_err(StrategyError::io(format!("open {}", path.display())))?,
                None,
            ),
        };
        let memory = GuestMemory::map_file_private(&file, snapshot.meta.mem_bytes)?;
        memory.set_fault_readahead(if self.readahead_kib.is_some() {
            FaultReadahead::On
        } else {
            FaultReadahead::Off
        })?;
        if self.huge_pages {
            memory.use_huge_pages()?;
        }
        Ok(Restored {
            readahead_kib: window,
            ..Restored::plain(memory)
        })
    }
}

/// The sysfs `read_ahead_kb` of the block device holding `path`, if it has one.
pub fn device_readahead_knob(path: &Path) -> Option<PathBuf> {
    let dev = std::fs::metadata(path).ok()?.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    // A whole disk's bdi is named after it; a partition shares its disk's bdi.
    let direct = PathBuf::from(format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb"));
    if direct.exists() {
        return Some(direct);
    }
    let via_parent = PathBuf::from(format!(
        "/sys/dev/block/{major}:{minor}/../queue/read_ahead_kb"
    ));
    via_parent.exists().then_some(via_parent)
}

/// Opens `path` so that its file readahead window is `kib`; returns the file and the
/// window actually in effect (`None` when the file has no block device).
pub fn open_with_readahead_window(
    path: &Path,
    kib: u64,
) -> Result<(File, Option<u64>), StrategyError> {
    let open = || File::open(path).map_err(StrategyError::io(format!("open {}", path.display())));
    let Some(knob) = device_readahead_knob(path) else {
        return Ok((open()?, None));
    };
    let knob_err =
        |what: &str| StrategyError::io(format!("{what} {} (needs root)", knob.display()));
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open("/run/snapbpf-readahead.lock")
        .map_err(StrategyError::io("open /run/snapbpf-readahead.lock"))?;
    // SAFETY: plain flock on a descriptor we own; released when `lock` is dropped.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(StrategyError::io("lock /run/snapbpf-readahead.lock")(
            std::io::Error::last_os_error(),
        ));
    }
    let mut sysfs = File::options()
        .read(true)
        .write(true)
        .open(&knob)
        .map_err(knob_err("open"))?;
    let mut old = String::new();
    sysfs.read_to_string(&mut old).map_err(knob_err("read"))?;
    let old = old.trim().to_string();
    if old == kib.to_string() {
        return Ok((open()?, Some(kib)));
    }
    let set = |f: &mut File, v: &str| -> std::io::Result<()> {
        f.rewind()?;
        f.write_all(v.as_bytes())
    };
    let (undo_knob, undo_value) = (knob.clone(), old.clone());
    let _interrupted =
        snapbpf_os::interrupt::on_interrupt("restored the device's read_ahead_kb", move || {
            let _ = std::fs::write(&undo_knob, &undo_value);
        });
    set(&mut sysfs, &kib.to_string()).map_err(knob_err("write"))?;
    let file = open();
    // Restore the device setting whatever happened to the open.
    set(&mut sysfs, &old).map_err(knob_err("restore"))?;
    Ok((file?, Some(kib)))
}
