//! HTTP checks: the request, and the judgement of a response as it
//! arrives. HTTP/1.0 with `Connection: close`, so the body is never
//! chunked and ends where the server closes.

use std::net::SocketAddr;

use fulcrum_config::StatusRange;

use super::Failure;

/// Most of a response read: the status line and the start of the body
/// (HAProxy's default check buffer is 16 KiB too). A string further in is
/// not found.
pub const MAX_RESPONSE: usize = 16 * 1024;

/// One backend's HTTP check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpCheck {
    request: Box<[u8]>,
    status: StatusRange,
    content: Option<Box<[u8]>>,
}

/// Where a response stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Judgement {
    /// Not enough of it yet.
    Pending,
    Pass,
    Fail(Failure),
}

impl HttpCheck {
    /// The Host header is `host`, else the checked address and port.
    pub fn new(to: SocketAddr, path: &str, status: StatusRange, content: Option<&str>, host: Option<&str>) -> HttpCheck {
        let host = host.map_or_else(|| to.to_string(), str::to_string);
        let request = format!("GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: fulcrum-health\r\nAccept: */*\r\nConnection: close\r\n\r\n");
        let content = content.filter(|c| !c.is_empty()).map(|c| c.as_bytes().into());
        HttpCheck { request: request.into_bytes().into(), status, content }
    }

    pub fn request(&self) -> &[u8] {
        &self.request
    }

    /// Judges the response so far; `complete` when no more will come (the
    /// server closed, or `MAX_RESPONSE` is reached).
    pub fn judge(&self, resp: &[u8], complete: bool) -> Judgement {
        let pending = if complete { Judgement::Fail(Failure::BadResponse) } else { Judgement::Pending };
        let Some(line_end) = find(resp, b"\r\n") else { return pending };
        // "HTTP/1.1 200 OK": the version, a space, three digits, a space
        // (or nothing) before the reason.
        let line = &resp[..line_end];
        let shaped = line.len() >= 12
            && line.starts_with(b"HTTP/1.")
            && line[7].is_ascii_digit()
            && line[8] == b' '
            && line[9..12].iter().all(u8::is_ascii_digit)
            && line.get(12).is_none_or(|&c| c == b' ');
        if !shaped {
            return Judgement::Fail(Failure::BadResponse);
        }
        let code = line[9..12].iter().fold(0u16, |n, &c| n * 10 + u16::from(c - b'0'));
        if !(self.status.first..=self.status.last).contains(&code) {
            return Judgement::Fail(Failure::Status(code));
        }
        let Some(content) = &self.content else { return Judgement::Pass };
        let Some(head_end) = find(resp, b"\r\n\r\n") else { return pending };
        match find(&resp[head_end + 4..], content) {
            Some(_) => Judgement::Pass,
            None if complete => Judgement::Fail(Failure::ContentMissing),
            None => Judgement::Pending,
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(content: Option<&str>) -> HttpCheck {
        HttpCheck::new("198.18.0.11:80".parse().unwrap(), "/health", StatusRange { first: 200, last: 399 }, content, None)
    }

    #[test]
    fn the_request_is_http_1_0_with_a_host() {
        let r = check(None);
        assert_eq!(
            std::str::from_utf8(r.request()).unwrap(),
            "GET /health HTTP/1.0\r\nHost: 198.18.0.11:80\r\nUser-Agent: fulcrum-health\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        );
        let v6 = HttpCheck::new("[2001:db8::11]:8080".parse().unwrap(), "/", StatusRange { first: 200, last: 200 }, None, None);
        assert!(std::str::from_utf8(v6.request()).unwrap().contains("Host: [2001:db8::11]:8080\r\n"));
        let named = HttpCheck::new("198.18.0.11:80".parse().unwrap(), "/", StatusRange { first: 200, last: 200 }, None, Some("www.lab.test"));
        assert!(std::str::from_utf8(named.request()).unwrap().contains("Host: www.lab.test\r\n"));
    }

    #[test]
    fn status_codes_are_judged_against_the_range() {
        let c = check(None);
        assert_eq!(c.judge(b"HTTP/1.1 200 OK\r\n", false), Judgement::Pass);
        assert_eq!(c.judge(b"HTTP/1.0 302 Found\r\n", false), Judgement::Pass);
        assert_eq!(c.judge(b"HTTP/1.0 204\r\n", false), Judgement::Pass);
        assert_eq!(c.judge(b"HTTP/1.1 503 Service Unavailable\r\n", false), Judgement::Fail(Failure::Status(503)));
        assert_eq!(c.judge(b"HTTP/1.1 20", false), Judgement::Pending);
        assert_eq!(c.judge(b"HTTP/1.1 20", true), Judgement::Fail(Failure::BadResponse));
        for bad in [&b"SSH-2.0-OpenSSH\r\n"[..], b"HTTP/1.1 2x0 OK\r\n", b"HTTP/1.1 2000 OK\r\n", b"HTTP/2 200\r\n"] {
            assert_eq!(c.judge(bad, false), Judgement::Fail(Failure::BadResponse), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn content_must_be_in_the_body() {
        let c = check(Some("ok"));
        let head = b"HTTP/1.1 200 OK\r\nX-State: ok\r\n\r\n";
        assert_eq!(c.judge(head, false), Judgement::Pending);
        assert_eq!(c.judge(head, true), Judgement::Fail(Failure::ContentMissing));
        assert_eq!(c.judge(&[&head[..], b"all ok\n"].concat(), false), Judgement::Pass);
        assert_eq!(c.judge(b"HTTP/1.1 200 OK\r\nContent-Le", true), Judgement::Fail(Failure::BadResponse));
        // The status decides first.
        assert_eq!(c.judge(b"HTTP/1.1 500 Oops\r\n\r\nok", true), Judgement::Fail(Failure::Status(500)));
    }
}
