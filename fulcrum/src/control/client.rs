//! The CLI's side of the control socket (`fulcrum status`, `stats`,
//! `reload`).

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use super::api::{Request, Response};
use crate::error::Error;

/// A reload resolves new backends' neighbours (seconds each at worst).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(120);

/// Sends one request to the daemon listening on `socket`; its response
/// (which may be `Response::Error`), or why there is none.
pub fn request(socket: &Path, req: &Request) -> Result<Response, Error> {
    request_within(socket, req, RESPONSE_TIMEOUT)
}

/// `request`, giving up when the answer takes longer than `timeout`.
pub fn request_within(socket: &Path, req: &Request, timeout: Duration) -> Result<Response, Error> {
    let conn = UnixStream::connect(socket).map_err(|e| {
        let what = match e.kind() {
            ErrorKind::NotFound | ErrorKind::ConnectionRefused => return Error::NotRunning { socket: socket.display().to_string(), source: e },
            ErrorKind::PermissionDenied => format!("permission denied on {}: the control socket is root's only (run this as root)", socket.display()),
            _ => format!("connecting to {}", socket.display()),
        };
        Error::System { what, source: e }
    })?;
    let io = || format!("talking to fulcrum on {}", socket.display());
    conn.set_read_timeout(Some(timeout)).map_err(Error::system(io()))?;
    let mut line = serde_json::to_string(req).map_err(|source| Error::Json { what: "encoding the request".into(), source })?;
    line.push('\n');
    (&conn).write_all(line.as_bytes()).map_err(Error::system(io()))?;
    let mut answer = String::new();
    BufReader::new(&conn).read_line(&mut answer).map_err(Error::system(io()))?;
    if answer.is_empty() {
        return Err(Error::Refused(format!("fulcrum on {} closed the connection without answering (see its log)", socket.display())));
    }
    serde_json::from_str(&answer)
        .map_err(|source| Error::Json { what: format!("unreadable answer from fulcrum on {} (a different version?)", socket.display()), source })
}
