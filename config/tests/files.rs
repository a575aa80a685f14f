//! What `load` and `check_files` do with paths that are not a small regular
//! file: a FIFO, a device, a directory, a file too large or one that never
//! ends. Each is refused with a message saying which, promptly, and without
//! echoing what the file holds.

use std::error::Error;
use std::fs::File;
use std::io::ErrorKind;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use fulcrum_config::*;

const VALID: &str = "[[interface]]\nname = \"lb0\"\nrole = \"one-arm\"\n";

/// A directory of its own under the system's temporary one, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let dir = std::env::temp_dir().join(format!("fulcrum-config-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Dir(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    fn fifo(&self, name: &str) -> PathBuf {
        let path = self.path(name);
        let made = std::process::Command::new("mkfifo").arg("-m").arg("600").arg(&path).status().expect("run mkfifo (coreutils)");
        assert!(made.success(), "mkfifo {}", path.display());
        path
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `f`'s result, or a failure if it takes more than a few seconds: what
/// this file tests is that nothing blocks, and a hang must fail the test,
/// not stall the run.
fn promptly<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || tx.send(f()));
    rx.recv_timeout(Duration::from_secs(10)).expect("blocked: no answer within 10 s")
}

fn load_error(path: &Path) -> String {
    let path = path.to_path_buf();
    let errors = promptly(move || load(&path)).unwrap_err();
    assert_eq!(errors.0.len(), 1, "{errors}");
    assert_eq!(errors.iter().next().unwrap().line, None);
    errors.to_string()
}

#[test]
fn open_regular_accepts_a_regular_file_within_the_limit() {
    let dir = Dir::new("open-ok");
    let path = dir.path("fulcrum.toml");
    std::fs::write(&path, VALID).unwrap();
    let file = open_regular(&path, VALID.len() as u64).unwrap();
    assert_eq!(file.metadata().unwrap().len(), VALID.len() as u64);
    assert_eq!(read_regular(&path, VALID.len() as u64).unwrap(), VALID.as_bytes());
    // One byte short of the file is too large, by fstat alone.
    let e = open_regular(&path, VALID.len() as u64 - 1).unwrap_err();
    assert!(matches!(e, FileError::TooLarge { size, limit } if size == VALID.len() as u64 && limit == size - 1), "{e:?}");
    assert_eq!(e.to_string(), format!("too large: {} bytes, limit {}", VALID.len(), VALID.len() - 1));
}

#[test]
fn open_regular_refuses_what_is_not_a_regular_file_without_blocking() {
    let dir = Dir::new("open-kinds");
    let fifo = dir.fifo("fifo.toml");
    let kinds = promptly(move || {
        [fifo.as_path(), Path::new("/dev/zero"), Path::new("/dev/null"), fifo.parent().unwrap()].map(|p| match open_regular(p, MAX_CONFIG_BYTES) {
            Err(FileError::NotRegular(t)) => (t.is_fifo(), t.is_char_device(), t.is_dir()),
            other => panic!("{}: {other:?}", p.display()),
        })
    });
    assert_eq!(kinds, [(true, false, false), (false, true, false), (false, true, false), (false, false, true)]);
}

#[test]
fn file_errors_keep_the_io_error_as_their_source() {
    let e = open_regular(Path::new("/nonexistent/plugin.wasm"), 1).unwrap_err();
    let FileError::Io(io) = &e else { panic!("{e:?}") };
    assert_eq!(io.kind(), ErrorKind::NotFound);
    assert_eq!(e.to_string(), "No such file or directory (os error 2)");
    let source = e.source().expect("a source").downcast_ref::<std::io::Error>().expect("an io::Error");
    assert_eq!(source.kind(), ErrorKind::NotFound);
    let not_regular = open_regular(Path::new("/dev/null"), 1).unwrap_err();
    assert!(not_regular.source().is_none());
    assert_eq!(not_regular.to_string(), "not a regular file (a character device)");
}

/// A regular file whose size says 0 and which holds more: the read stops at
/// the limit plus one byte.
#[test]
fn read_regular_stops_one_byte_past_the_limit() {
    let status = Path::new("/proc/self/status");
    assert_eq!(File::open(status).unwrap().metadata().unwrap().len(), 0, "procfs reports no size");
    let e = read_regular(status, 10).unwrap_err();
    assert!(matches!(e, FileError::TooLarge { size: 11, limit: 10 }), "{e:?}");
    assert_eq!(e.to_string(), "too large: 11 bytes, limit 10");
}

#[test]
fn load_refuses_fifos_devices_and_directories() {
    let dir = Dir::new("load-kinds");
    let fifo = dir.fifo("fulcrum.toml");
    assert_eq!(load_error(&fifo), format!("{}: cannot read: not a regular file (a FIFO)", fifo.display()));
    assert_eq!(load_error(Path::new("/dev/zero")), "/dev/zero: cannot read: not a regular file (a character device)");
    assert_eq!(load_error(&dir.0), format!("{}: cannot read: not a regular file (a directory)", dir.0.display()));
}

#[test]
fn load_refuses_files_above_the_limit_and_reads_one_at_it() {
    assert_eq!(MAX_CONFIG_BYTES, 4 * 1024 * 1024);
    let dir = Dir::new("load-size");
    // Exactly the limit: a valid config padded with a comment.
    let at_limit = dir.path("at-limit.toml");
    let padding = MAX_CONFIG_BYTES as usize - VALID.len() - 2;
    std::fs::write(&at_limit, format!("{VALID}#{}\n", "x".repeat(padding))).unwrap();
    assert_eq!(std::fs::metadata(&at_limit).unwrap().len(), MAX_CONFIG_BYTES);
    assert!(load(&at_limit).is_ok());
    // One byte more, whatever it holds; the message shows none of it.
    let above = dir.path("above.toml");
    std::fs::write(&above, format!("{VALID}#{}\n", "SECRET".repeat(padding / 6 + 1))).unwrap();
    let size = std::fs::metadata(&above).unwrap().len();
    assert!(size > MAX_CONFIG_BYTES);
    assert_eq!(load_error(&above), format!("{}: cannot read: too large: {size} bytes, limit 4194304", above.display()));
}

#[test]
fn check_files_refuses_plugins_that_are_not_regular_files_without_blocking() {
    let dir = Dir::new("check-kinds");
    dir.fifo("fifo.wasm");
    std::fs::create_dir(dir.path("dir.wasm")).unwrap();
    let origin = dir.path("fulcrum.toml").display().to_string();
    let text = format!(
        "{VALID}[[vip]]\naddress = \"198.18.0.100\"\nprotocol = \"tcp\"\nmode = \"nat\"\nscheduler = \"fifo.wasm\"\nhealth = {{ kind = \"icmp\", policy = \"dir.wasm\" }}\nbackend = []\n"
    );
    let config = parse(&text, &origin).unwrap();
    let errors = {
        let origin = origin.clone();
        promptly(move || check_files(&config, &origin)).unwrap_err().to_string()
    };
    let d = dir.0.display();
    assert_eq!(
        errors,
        format!(
            "{origin}: vip 198.18.0.100:*/tcp: scheduler: cannot open plugin {d}/fifo.wasm: not a regular file (a FIFO)\n\
             {origin}: vip 198.18.0.100:*/tcp: health.policy: cannot open plugin {d}/dir.wasm: not a regular file (a directory)"
        )
    );
}

#[test]
fn check_files_opens_https_checks_ca_files_once_each() {
    let dir = Dir::new("check-ca");
    let origin = dir.path("fulcrum.toml").display().to_string();
    let backends = "[[vip.backend]]\naddress = \"198.18.0.11\"\n[[vip.backend]]\naddress = \"198.18.0.12\"\n";
    let text = format!(
        "{VALID}[[vip]]\naddress = \"198.18.0.100\"\nprotocol = \"tcp\"\nport = 443\nmode = \"dsr\"\nhealth = {{ kind = \"https-status\", ca_file = \"ca.pem\" }}\n{backends}"
    );
    let config = parse(&text, &origin).unwrap();
    let d = dir.0.display();
    assert_eq!(
        check_files(&config, &origin).unwrap_err().to_string(),
        format!("{origin}: vip 198.18.0.100:443/tcp: health.ca_file: cannot open CA file {d}/ca.pem: No such file or directory (os error 2)")
    );
    std::fs::write(dir.path("ca.pem"), "").unwrap();
    check_files(&config, &origin).unwrap();
}

#[test]
fn invalid_utf8_is_reported_at_the_line_of_the_first_bad_byte() {
    let dir = Dir::new("utf8");
    let path = dir.path("fulcrum.toml");
    // Line 4 is valid UTF-8 (é, two bytes), line 6 holds a lone 0xff after
    // "SECRET", line 7 another bad byte, not reported.
    let mut text = format!("{VALID}# caf\u{e9}\n[daemon]\n").into_bytes();
    text.extend_from_slice(b"xdp_mode = \"SECRET\xff\"\n\xfe\n");
    std::fs::write(&path, &text).unwrap();
    let errors = load(&path).unwrap_err();
    assert_eq!(errors.to_string(), format!("{}:6: not valid UTF-8 (at byte 19 of the line): a config is UTF-8 text", path.display()));
    assert_eq!(errors.iter().next().unwrap().line, Some(6));
    // A bad first byte: line 1, byte 1.
    std::fs::write(&path, b"\x80").unwrap();
    assert_eq!(load(&path).unwrap_err().to_string(), format!("{}:1: not valid UTF-8 (at byte 1 of the line): a config is UTF-8 text", path.display()));
}
