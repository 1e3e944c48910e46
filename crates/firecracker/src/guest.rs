//! The snapbpf guest's line protocol over a [`Serial`] ([`snapbpf_guest_abi::serial`]):
//! the guest reports ready after init, then answers every `input <n>` with a done line.
//! Console lines are skipped (logged at debug level); a panic line is an error carrying
//! its message.

use std::time::Instant;

use snapbpf_guest_abi::serial::{
    CHECKSUM_DIGITS, CONSOLE, DONE, INPUT, KEY_ABI, KEY_CHECKSUM, KEY_CYCLES, KEY_FUNCTION,
    KEY_INVOCATIONS, PANIC, READY,
};

use crate::serial::{Serial, SerialError};

/// The guest finished its init phase (the snapshot point).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ready {
    /// The guest's ABI version ([`snapbpf_guest_abi::ABI_VERSION`] for this build).
    pub abi: u32,
    /// The index of the function it runs.
    pub function: u32,
}

/// The guest finished one invocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Done {
    /// The checksum of the invocation's output.
    pub checksum: u64,
    /// Invocations completed since the guest booted.
    pub invocations: u64,
    /// The guest's `rdtsc` delta around the invocation.
    pub cycles: u64,
}

/// Errors talking to the guest.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// The serial port failed (Firecracker died, a timeout, ...).
    #[error("{what}: {source}")]
    Serial {
        /// What was awaited or sent.
        what: &'static str,
        /// What failed.
        source: SerialError,
    },
    /// The guest panicked.
    #[error("the guest panicked: {0}")]
    Panic(String),
    /// The guest wrote a protocol line that does not parse.
    #[error("the guest wrote a malformed line while {what}: {line:?}")]
    Malformed {
        /// What was awaited.
        what: &'static str,
        /// The line.
        line: String,
    },
    /// The guest wrote something that is not the protocol (not a snapbpf guest?).
    #[error("the guest wrote {line:?} while {what} (expected `{expected} ...`)")]
    Unexpected {
        /// What was awaited.
        what: &'static str,
        /// What the line should have started with.
        expected: &'static str,
        /// The line.
        line: String,
    },
}

/// The rest of `line` after `keyword` and a space (or the end of the line).
fn after<'l>(line: &'l str, keyword: &str) -> Option<&'l str> {
    let rest = line.strip_prefix(keyword)?;
    if rest.is_empty() {
        return Some(rest);
    }
    rest.strip_prefix(' ')
}

/// The value of `key` (e.g. `abi=`) among the space-separated fields of `fields`.
fn field<'l>(fields: &'l str, key: &str) -> Option<&'l str> {
    fields.split(' ').find_map(|f| f.strip_prefix(key))
}

fn decimal<T: std::str::FromStr>(s: &str) -> Option<T> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Parses a ready line's fields.
fn parse_ready(fields: &str) -> Option<Ready> {
    Some(Ready {
        abi: decimal(field(fields, KEY_ABI)?)?,
        function: decimal(field(fields, KEY_FUNCTION)?)?,
    })
}

/// Parses a done line's fields.
fn parse_done(fields: &str) -> Option<Done> {
    let hex = field(fields, KEY_CHECKSUM)?;
    if hex.len() != CHECKSUM_DIGITS
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    Some(Done {
        checksum: u64::from_str_radix(hex, 16).ok()?,
        invocations: decimal(field(fields, KEY_INVOCATIONS)?)?,
        cycles: decimal(field(fields, KEY_CYCLES)?)?,
    })
}

/// Reads lines until one that is not console output and checks that it starts with
/// `keyword`; a panic line is the error it means.
fn next_report(
    serial: &mut Serial,
    deadline: Instant,
    what: &'static str,
    keyword: &'static str,
) -> Result<String, GuestError> {
    loop {
        let line = serial
            .read_line(deadline)
            .map_err(|source| GuestError::Serial { what, source })?;
        if let Some(text) = after(&line, CONSOLE) {
            tracing::debug!("guest console: {text}");
            continue;
        }
        if let Some(message) = after(&line, PANIC) {
            return Err(GuestError::Panic(message.to_string()));
        }
        if after(&line, keyword).is_none() {
            return Err(GuestError::Unexpected {
                what,
                expected: keyword,
                line,
            });
        }
        return Ok(line);
    }
}

/// Waits for the guest's ready line (skipping console lines; a panic line is an error
/// with its message).
pub fn wait_ready(serial: &mut Serial, deadline: Instant) -> Result<Ready, GuestError> {
    const WHAT: &str = "waiting for the guest to be ready";
    let line = next_report(serial, deadline, WHAT, READY)?;
    match after(&line, READY).and_then(parse_ready) {
        Some(ready) => Ok(ready),
        None => Err(GuestError::Malformed { what: WHAT, line }),
    }
}

/// Sends `input <input>` and waits for the guest's done line (skipping console lines; a
/// panic line is an error with its message).
pub fn invoke(serial: &mut Serial, input: u32, deadline: Instant) -> Result<Done, GuestError> {
    const WHAT: &str = "waiting for the guest's result";
    serial
        .write_line(&format!("{INPUT} {input}"))
        .map_err(|source| GuestError::Serial {
            what: "sending the input to the guest",
            source,
        })?;
    let line = next_report(serial, deadline, WHAT, DONE)?;
    match after(&line, DONE).and_then(parse_done) {
        Some(done) => Ok(done),
        None => Err(GuestError::Malformed { what: WHAT, line }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guests_lines_parse() {
        let fields = after("snapbpf ready abi=2 function=7", READY).unwrap();
        assert_eq!(
            parse_ready(fields),
            Some(Ready {
                abi: 2,
                function: 7
            })
        );
        let fields = after(
            "snapbpf done checksum=00000000deadbeef invocations=3 cycles=123456",
            DONE,
        )
        .unwrap();
        assert_eq!(
            parse_done(fields),
            Some(Done {
                checksum: 0xdead_beef,
                invocations: 3,
                cycles: 123_456
            })
        );
        for bad in [
            "checksum=deadbeef invocations=1 cycles=1",
            "checksum=00000000DEADBEEF invocations=1 cycles=1",
            "checksum=00000000deadbeef invocations=-1 cycles=1",
            "checksum=00000000deadbeef cycles=1",
        ] {
            assert_eq!(parse_done(bad), None, "{bad}");
        }
        assert_eq!(after("snapbpf readyish", READY), None);
        assert_eq!(after("snapbpf panic", PANIC), Some(""));
        assert_eq!(after("snapbpf console hi there", CONSOLE), Some("hi there"));
    }
}
