//! A minimal HTTP/1.1 client for Firecracker's API socket: one request per connection,
//! a JSON body with its `Content-Length`, and the status line, headers and body of the
//! answer read by a deadline. While it waits it also watches Firecracker's pidfd, so a
//! Firecracker that dies mid-call ends the wait at once.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::process::{poll_ready, PidFd};

/// Largest response header block accepted.
const MAX_HEADERS: usize = 16 << 10;
/// Largest response body accepted.
const MAX_BODY: usize = 64 << 10;

/// An HTTP response.
#[derive(Debug)]
pub(crate) struct Response {
    /// The status code.
    pub status: u16,
    /// The reason phrase (may be empty).
    pub reason: String,
    /// The body.
    pub body: Vec<u8>,
}

/// Errors of one HTTP exchange over the API socket.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// Connecting failed.
    #[error("cannot connect to the API socket {socket}: {source}")]
    Connect {
        /// The socket.
        socket: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Writing the request failed.
    #[error("cannot send the request: {0}")]
    Send(#[source] std::io::Error),
    /// Reading the response failed.
    #[error("cannot read the response: {0}")]
    Receive(#[source] std::io::Error),
    /// No complete response by the deadline.
    #[error("no complete response within {0:?}")]
    Timeout(Duration),
    /// The peer closed the connection before a complete response.
    #[error("the connection closed before a complete response")]
    Closed,
    /// Firecracker exited while the request was outstanding.
    #[error("Firecracker exited before answering")]
    PeerExited,
    /// The response is not HTTP/1.x as expected.
    #[error("malformed response: {0}")]
    Malformed(String),
}

/// Sends `method uri` with the JSON `body` to the API socket `socket` and reads the
/// response by `deadline`, giving up early if the process behind `pidfd` exits.
pub(crate) fn request(
    socket: &Path,
    method: &str,
    uri: &str,
    body: &[u8],
    deadline: Instant,
    pidfd: &PidFd,
) -> Result<Response, HttpError> {
    let started = Instant::now();
    let mut stream = snapbpf_os::unix::connect_within(socket, deadline).map_err(|source| {
        HttpError::Connect {
            socket: socket.to_path_buf(),
            source,
        }
    })?;
    let mut head =
        format!("{method} {uri} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n");
    if !body.is_empty() {
        head.push_str("Content-Type: application/json\r\n");
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut message = head.into_bytes();
    message.extend_from_slice(body);
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1));
    stream
        .set_write_timeout(Some(left))
        .map_err(HttpError::Send)?;
    stream.write_all(&message).map_err(HttpError::Send)?;

    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut parsed: Option<(u16, String, usize, usize)> = None;
    loop {
        if let Some((status, reason, body_at, len)) = &parsed {
            if buf.len() >= body_at + len {
                return Ok(Response {
                    status: *status,
                    reason: reason.clone(),
                    body: buf[*body_at..body_at + len].to_vec(),
                });
            }
        }
        match poll_ready(&[stream.as_fd(), pidfd.fd()], deadline).map_err(HttpError::Receive)? {
            None => return Err(HttpError::Timeout(started.elapsed())),
            Some(1) => {
                // Firecracker exited; drain whatever it managed to answer first.
                stream.set_nonblocking(true).map_err(HttpError::Receive)?;
                match stream.read(&mut chunk) {
                    Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                    _ => return Err(HttpError::PeerExited),
                }
            }
            Some(_) => match stream.read(&mut chunk) {
                Ok(0) => return Err(HttpError::Closed),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(HttpError::Receive(e)),
            },
        }
        if parsed.is_none() {
            parsed = parse_head(&buf)?;
        }
    }
}

/// Parses the status line and headers once they are complete: status, reason, where the
/// body starts and its length.
fn parse_head(buf: &[u8]) -> Result<Option<(u16, String, usize, usize)>, HttpError> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buf.len() > MAX_HEADERS {
            return Err(HttpError::Malformed(format!(
                "no end of headers in the first {MAX_HEADERS} bytes"
            )));
        }
        return Ok(None);
    };
    let head = String::from_utf8_lossy(&buf[..end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let (version, code, reason) = (parts.next(), parts.next(), parts.next());
    if !version.is_some_and(|v| v.starts_with("HTTP/1.")) {
        return Err(HttpError::Malformed(format!("status line {status_line:?}")));
    }
    let status = code
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| HttpError::Malformed(format!("status line {status_line:?}")))?;
    let mut length = 0usize;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(HttpError::Malformed(format!("header line {line:?}")));
        };
        if name.trim().eq_ignore_ascii_case("content-length") {
            length = value
                .trim()
                .parse()
                .map_err(|_| HttpError::Malformed(format!("header line {line:?}")))?;
        }
        if name.trim().eq_ignore_ascii_case("transfer-encoding") {
            return Err(HttpError::Malformed(format!("unsupported {line:?}")));
        }
    }
    if length > MAX_BODY {
        return Err(HttpError::Malformed(format!(
            "a body of {length} bytes (at most {MAX_BODY})"
        )));
    }
    Ok(Some((
        status,
        reason.unwrap_or_default().trim().to_string(),
        end + 4,
        length,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_parse() {
        assert!(parse_head(b"HTTP/1.1 204 \r\nServer: x").unwrap().is_none());
        let (status, reason, at, len) =
            parse_head(b"HTTP/1.1 204 \r\nServer: Firecracker API\r\n\r\n")
                .unwrap()
                .unwrap();
        assert_eq!((status, reason.as_str(), len), (204, "", 0));
        assert_eq!(at, 42);
        let r = b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\ncontent-length: 12\r\n\r\n{\"a\":\"b\"}";
        let (status, reason, _, len) = parse_head(r).unwrap().unwrap();
        assert_eq!((status, reason.as_str(), len), (400, "Bad Request", 12));
        let e = parse_head(b"SSH-2.0\r\n\r\n").unwrap_err();
        assert_eq!(e.to_string(), "malformed response: status line \"SSH-2.0\"");
    }
}
