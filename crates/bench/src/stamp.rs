//! A run's provenance: what it ran on and when.

use std::path::Path;

use crate::Stamp;

fn first_line(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.lines().next().map(|l| l.trim().to_string()))
}

/// The provenance of a run whose snapshots are under `snapshots`: git revision, kernel,
/// CPU, cores, the snapshots' disk and the date.
pub(crate) fn stamp(git_rev: &str, snapshots: &Path) -> Stamp {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let disk = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(snapshots)
            .ok()
            .map(|m| {
                let (maj, min) = (libc_major(m.dev()), libc_minor(m.dev()));
                let name = std::fs::read_link(format!("/sys/dev/block/{maj}:{min}"))
                    .ok()
                    .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                    .unwrap_or_else(|| format!("{maj}:{min}"));
                let model = first_line(&format!("/sys/block/{name}/device/model"))
                    .or_else(|| first_line(&format!("/sys/block/{name}/device/vendor")))
                    .unwrap_or_default();
                let rotational = first_line(&format!("/sys/block/{name}/queue/rotational"))
                    .map(|r| {
                        if r == "0" {
                            " (non-rotational)"
                        } else {
                            " (rotational)"
                        }
                    })
                    .unwrap_or("");
                format!("{name} {model}{rotational}").trim().to_string()
            })
            .unwrap_or_else(|| "unknown".into())
    };
    Stamp {
        git_rev: git_rev.into(),
        kernel: first_line("/proc/sys/kernel/osrelease").unwrap_or_else(|| "unknown".into()),
        cpu,
        cores: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        disk,
        date: utc_now(),
    }
}

fn libc_major(dev: u64) -> u64 {
    ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0xfff)
}

fn libc_minor(dev: u64) -> u64 {
    ((dev >> 12) & 0xffff_ff00) | (dev & 0xff)
}

/// Current UTC time as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
