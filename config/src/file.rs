//! Opening the files a config is read from or names (plugins) so that a
//! wrong path cannot hang or exhaust the daemon: an operator can point
//! `fulcrum check-config`, a start or a reload at a FIFO, a device or a
//! directory by mistake, and a file can grow while it is read.

use std::fmt;
use std::fs::{File, FileType, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// The largest config file `load` reads, in bytes (4 MiB): far above any
/// written by hand, and still nothing to hold in memory.
pub const MAX_CONFIG_BYTES: u64 = 4 << 20;

/// Why a file was refused. `Display` names the problem, never the file's
/// contents.
#[derive(Debug)]
pub enum FileError {
    /// Opening, inspecting or reading it failed.
    Io(io::Error),
    /// Not a regular file: a directory, FIFO, socket or device (its type).
    NotRegular(FileType),
    /// More than `limit` bytes: `size` is the size the file reported or,
    /// for one that grew while it was read (or reports none, as procfs
    /// files do), the bytes read before giving up.
    TooLarge { size: u64, limit: u64 },
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileError::Io(e) => write!(f, "{e}"),
            FileError::NotRegular(t) => write!(f, "not a regular file ({})", describe(*t)),
            FileError::TooLarge { size, limit } => write!(f, "too large: {size} bytes, limit {limit}"),
        }
    }
}

impl std::error::Error for FileError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            FileError::Io(e) => Some(e),
            FileError::NotRegular(_) | FileError::TooLarge { .. } => None,
        }
    }
}

impl From<io::Error> for FileError {
    fn from(e: io::Error) -> Self {
        FileError::Io(e)
    }
}

fn describe(t: FileType) -> &'static str {
    match t {
        _ if t.is_dir() => "a directory",
        _ if t.is_fifo() => "a FIFO",
        _ if t.is_socket() => "a socket",
        _ if t.is_char_device() => "a character device",
        _ if t.is_block_device() => "a block device",
        _ => "of another type",
    }
}

/// Opens `path` for reading if it is a regular file of at most `max_bytes`
/// bytes; FIFOs, devices, sockets and directories are refused, and opening
/// one does not block (a FIFO does not wait for a writer). The checks are
/// made on the opened descriptor (fstat), so what was checked is what is
/// read, even if the path is replaced meanwhile. The size can still grow
/// after the check: read at most `max_bytes + 1` bytes of the file (as
/// `read_regular` does) to notice.
pub fn open_regular(path: &Path, max_bytes: u64) -> Result<File, FileError> {
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a
    // writer; on a regular file it changes nothing. O_NOCTTY: a daemon
    // without a controlling terminal would otherwise acquire any terminal
    // device it opens, even one it then refuses.
    let file = OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY).open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(FileError::NotRegular(meta.file_type()));
    }
    if meta.len() > max_bytes {
        return Err(FileError::TooLarge { size: meta.len(), limit: max_bytes });
    }
    Ok(file)
}

/// The contents of the regular file at `path`, if they are at most
/// `max_bytes` bytes: `open_regular`, then a read that stops one byte past
/// the limit, so that neither a file that grows meanwhile nor one whose
/// reported size is not its length (procfs files say 0) is read without end.
pub fn read_regular(path: &Path, max_bytes: u64) -> Result<Vec<u8>, FileError> {
    let file = open_regular(path, max_bytes)?;
    let mut bytes = Vec::new();
    file.take(max_bytes.saturating_add(1)).read_to_end(&mut bytes)?;
    let size = bytes.len() as u64;
    if size > max_bytes {
        return Err(FileError::TooLarge { size, limit: max_bytes });
    }
    Ok(bytes)
}
