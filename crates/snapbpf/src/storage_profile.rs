//! Storage profiles: running VMs on storage of another class than the host's (`--device`).
//!
//! Our virtio disk reads about 2.7 GB/s; the papers' SATA SSDs read 540-550 MB/s at about
//! 95k random 4 KiB IOPS, which is where compressed working sets (Sabre) and sequential
//! against random reads matter. A [`Throttle`] is a blkio cgroup that limits reads of one
//! block device to a profile's bandwidth and IOPS; every process (or thread) moved into it
//! reads at that speed, including its page-cache reads. cgroup v1's
//! `blkio.throttle.read_{bps,iops}_device` is used where the blkio controller is mounted,
//! cgroup v2's `io.max` where the io controller is; with neither, a profile other than
//! [`StorageProfile::Native`] is refused.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A storage class VMs run on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StorageProfile {
    /// The host's device, unthrottled.
    #[default]
    Native,
    /// A SATA SSD of the papers' class: 550 MB/s, 95 000 read IOPS.
    Sata,
}

impl StorageProfile {
    /// Parses `native` or `sata`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "native" => Ok(Self::Native),
            "sata" => Ok(Self::Sata),
            other => Err(format!("unknown device profile '{other}' (native, sata)")),
        }
    }

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Sata => "sata",
        }
    }

    /// Read bandwidth and IOPS limits, `None` for no throttle.
    pub fn limits(self) -> Option<(u64, u64)> {
        match self {
            Self::Native => None,
            Self::Sata => Some((550_000_000, 95_000)),
        }
    }
}

/// Errors setting up a throttle.
#[derive(Debug, thiserror::Error)]
pub enum ThrottleError {
    /// Neither controller is available.
    #[error("device profile '{0}' needs the cgroup v1 blkio or the cgroup v2 io controller, and neither is mounted here")]
    NoController(&'static str),
    /// The device of a path could not be found.
    #[error("cannot find the block device holding {path}")]
    Device {
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A cgroup file could not be written.
    #[error("cannot configure the cgroup {path}")]
    Cgroup {
        /// The file.
        path: PathBuf,
        /// The OS error (often: not root).
        #[source]
        source: std::io::Error,
    },
}

/// Which cgroup interface throttles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Controller {
    V1Blkio,
    V2Io,
}

/// A cgroup whose reads of one block device are throttled; removed on drop (once the
/// processes in it have exited or been moved out).
#[derive(Debug)]
pub struct Throttle {
    dir: PathBuf,
    controller: Controller,
    root: PathBuf,
    profile: StorageProfile,
    device: (u32, u32),
    _undo: snapbpf_os::interrupt::Guard,
}

fn cgroup_write(path: &Path, value: &str) -> Result<(), ThrottleError> {
    std::fs::write(path, value).map_err(|source| ThrottleError::Cgroup {
        path: path.to_path_buf(),
        source,
    })
}

/// The mount point of cgroup v1's blkio hierarchy, or of a cgroup v2 hierarchy whose root
/// offers the io controller.
fn find_controller() -> Option<(Controller, PathBuf)> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    let mut v2 = None;
    for line in mounts.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [_, dir, kind, options, ..] = fields[..] else {
            continue;
        };
        if kind == "cgroup" && options.split(',').any(|o| o == "blkio") {
            return Some((Controller::V1Blkio, PathBuf::from(dir)));
        }
        if kind == "cgroup2" {
            let controllers = std::fs::read_to_string(Path::new(dir).join("cgroup.controllers"))
                .unwrap_or_default();
            if controllers.split_whitespace().any(|c| c == "io") {
                v2 = Some((Controller::V2Io, PathBuf::from(dir)));
            }
        }
    }
    v2
}

/// The whole disk (major, minor) holding `path`: throttling is per disk, so a partition
/// is mapped to its parent.
pub fn block_device_of(path: &Path) -> Result<(u32, u32), ThrottleError> {
    let err = |source| ThrottleError::Device {
        path: path.to_path_buf(),
        source,
    };
    let dev = std::fs::metadata(path).map_err(err)?.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let sys = PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
    if !sys.exists() {
        return Err(err(std::io::Error::other(format!(
            "device {major}:{minor} is not a block device (a network or virtual filesystem)"
        ))));
    }
    if sys.join("partition").exists() {
        let parent = std::fs::read_to_string(sys.join("../dev")).map_err(err)?;
        let mut parts = parent.trim().split(':').map(|n| n.parse::<u32>());
        if let (Some(Ok(major)), Some(Ok(minor))) = (parts.next(), parts.next()) {
            return Ok((major, minor));
        }
    }
    Ok((major, minor))
}

impl Throttle {
    /// A new throttled cgroup for the device holding `path`, with `profile`'s limits;
    /// `None` for [`StorageProfile::Native`].
    pub fn new(profile: StorageProfile, path: &Path) -> Result<Option<Self>, ThrottleError> {
        let Some((bps, iops)) = profile.limits() else {
            return Ok(None);
        };
        let (controller, root) =
            find_controller().ok_or(ThrottleError::NoController(profile.name()))?;
        let (major, minor) = block_device_of(path)?;
        let dir = root.join(format!("snapbpf-{}-{}", profile.name(), std::process::id()));
        if let Err(source) = std::fs::create_dir(&dir) {
            if source.kind() != std::io::ErrorKind::AlreadyExists {
                return Err(ThrottleError::Cgroup { path: dir, source });
            }
        }
        let undo_dir = dir.clone();
        let undo =
            snapbpf_os::interrupt::on_interrupt("removed the device-profile cgroup", move || {
                let _ = std::fs::remove_dir(&undo_dir);
            });
        let throttle = Self {
            dir,
            controller,
            root,
            profile,
            device: (major, minor),
            _undo: undo,
        };
        match controller {
            Controller::V1Blkio => {
                cgroup_write(
                    &throttle.dir.join("blkio.throttle.read_bps_device"),
                    &format!("{major}:{minor} {bps}"),
                )?;
                cgroup_write(
                    &throttle.dir.join("blkio.throttle.read_iops_device"),
                    &format!("{major}:{minor} {iops}"),
                )?;
            }
            Controller::V2Io => {
                // The io controller must be enabled for the root's children.
                let _ = std::fs::write(throttle.root.join("cgroup.subtree_control"), "+io");
                cgroup_write(
                    &throttle.dir.join("io.max"),
                    &format!("{major}:{minor} rbps={bps} riops={iops}"),
                )?;
            }
        }
        Ok(Some(throttle))
    }

    /// The profile it applies.
    pub fn profile(&self) -> StorageProfile {
        self.profile
    }

    /// The disk it throttles (major, minor).
    pub fn device(&self) -> (u32, u32) {
        self.device
    }

    /// Moves process `pid` (all its threads, and the children it starts later) in.
    pub fn add_process(&self, pid: u32) -> Result<(), ThrottleError> {
        cgroup_write(&self.dir.join("cgroup.procs"), &pid.to_string())
    }

    /// Runs `work` on the calling thread inside the cgroup (cgroup v1 moves single
    /// threads; under v2, which moves whole processes, `work` runs unthrottled and this
    /// says so by returning `None`).
    pub fn run_throttled<T>(&self, work: impl FnOnce() -> T) -> Result<Option<T>, ThrottleError> {
        if self.controller != Controller::V1Blkio {
            return Ok(None);
        }
        // SAFETY: gettid takes no arguments and returns the caller's thread id.
        let tid = unsafe { libc::syscall(libc::SYS_gettid) };
        cgroup_write(&self.dir.join("tasks"), &tid.to_string())?;
        let out = work();
        cgroup_write(&self.root.join("tasks"), &tid.to_string())?;
        Ok(Some(out))
    }
}

impl Drop for Throttle {
    fn drop(&mut self) {
        // Fails while a process is still in it: it is removed by the last one's exit
        // only if we try again, so try a few times for exiting workers.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        tracing::warn!("cannot remove the cgroup {}", self.dir.display());
    }
}

/// What a device delivers to our own reads: sequential bandwidth (4 MiB direct reads)
/// and random 4 KiB read IOPS over `file`, at most `budget` bytes and one second each.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceSpeed {
    /// Sequential read bandwidth, MB/s (10^6 bytes).
    pub seq_mb_s: f64,
    /// Random 4 KiB reads per second (one at a time).
    pub rand_4k_iops: f64,
}

/// Measures `file`'s device with direct reads (the page cache is not involved).
pub fn measure(file: &Path) -> std::io::Result<DeviceSpeed> {
    use std::time::{Duration, Instant};
    let (f, _) = snapbpf_store::fsutil::open_direct(file)?;
    let len = f.metadata()?.len();
    let chunk = 4u64 << 20;
    let mut buf = snapbpf_store::fsutil::AlignedBuf::new(chunk)?;
    let started = Instant::now();
    let (mut offset, mut bytes) = (0u64, 0u64);
    while offset + chunk <= len && started.elapsed() < Duration::from_secs(1) {
        bytes += snapbpf_store::fsutil::read_at(&f, buf.as_mut_slice(), offset)? as u64;
        offset += chunk;
    }
    let seq_mb_s = bytes as f64 / started.elapsed().as_secs_f64() / 1e6;
    let pages = len / 4096;
    let started = Instant::now();
    let mut reads = 0u64;
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    while pages > 0 && started.elapsed() < Duration::from_secs(1) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let page = state % pages;
        snapbpf_store::fsutil::read_at(&f, &mut buf.as_mut_slice()[..4096], page * 4096)?;
        reads += 1;
    }
    Ok(DeviceSpeed {
        seq_mb_s,
        rand_4k_iops: reads as f64 / started.elapsed().as_secs_f64(),
    })
}
