//! Frames as tokens: a `FrameRef` names one 2 KiB chunk of an I/O backend's
//! memory plus where the frame lies in it. It is not `Clone`, so holding a
//! `&mut Chunk` proves exclusive access to that chunk's bytes, and any number
//! of frames of one batch can be borrowed mutably at the same time.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

/// Size of every frame buffer (an AF_XDP UMEM chunk).
pub const FRAME_SIZE: usize = 2048;
/// Bytes before a received frame's first byte, free for headers the engine
/// prepends in place (tunnel encapsulation). Equals the kernel's
/// XDP_PACKET_HEADROOM, where AF_XDP puts received data.
pub const HEADROOM: usize = 256;

/// Index of an interface among those an I/O backend was opened on.
pub type PortId = u8;

/// The exclusive right to one chunk of one backend's memory.
#[derive(Debug, PartialEq, Eq)]
pub struct Chunk {
    pool: u32,
    index: u32,
}

/// A frame owned by the application between `recv` and `send`/`recycle`.
///
/// The frame is `buffer[start..start + len]` of the chunk's buffer; the
/// dataplane may move `start` back into the headroom or change `len`, and set
/// `port` to the interface it must leave by. Every `FrameRef` must go back to
/// its backend through `send` or `recycle`, or its chunk is lost.
#[derive(Debug, PartialEq, Eq)]
pub struct FrameRef {
    pub chunk: Chunk,
    pub start: usize,
    pub len: usize,
    /// Ingress port after `recv`; egress port for `send`.
    pub port: PortId,
}

impl FrameRef {
    /// Whether `start..start+len` is a non-empty range inside a chunk.
    pub fn in_bounds(&self) -> bool {
        self.len > 0 && self.start.checked_add(self.len).is_some_and(|end| end <= FRAME_SIZE)
    }
}

/// A backend's frame memory: `chunks` buffers of FRAME_SIZE bytes, owned by
/// the backend, which keeps it alive at least as long as this value.
#[derive(Debug)]
pub(crate) struct FrameMem {
    base: NonNull<u8>,
    chunks: u32,
    pool: u32,
}

// SAFETY: the memory is plain bytes; access to a chunk is granted only
// through the unique `Chunk` token for it.
unsafe impl Send for FrameMem {}

static NEXT_POOL: AtomicU32 = AtomicU32::new(1);

impl FrameMem {
    /// # Safety
    /// `base` points to `chunks * FRAME_SIZE` bytes that stay valid and are
    /// accessed by no one else except through chunks this `FrameMem` hands
    /// out and takes back.
    pub(crate) unsafe fn new(base: NonNull<u8>, chunks: u32) -> FrameMem {
        FrameMem { base, chunks, pool: NEXT_POOL.fetch_add(1, Ordering::Relaxed) }
    }

    pub(crate) fn chunks(&self) -> u32 {
        self.chunks
    }

    /// A token for chunk `index`; the caller guarantees it is the only one.
    pub(crate) fn token(&self, index: u32) -> Chunk {
        debug_assert!(index < self.chunks);
        Chunk { pool: self.pool, index }
    }

    /// The chunk's index if the token belongs to this memory.
    pub(crate) fn index(&self, chunk: &Chunk) -> Option<u32> {
        (chunk.pool == self.pool && chunk.index < self.chunks).then_some(chunk.index)
    }

    /// The whole FRAME_SIZE buffer of a chunk, or None if the token belongs
    /// to another backend.
    pub(crate) fn buffer<'a>(&'a self, chunk: &'a mut Chunk) -> Option<&'a mut [u8]> {
        let index = self.index(chunk)? as usize;
        // SAFETY: in bounds (checked above); the `&mut Chunk` is the unique
        // token for this chunk, so no other reference to these bytes exists
        // for 'a, and the backend outlives the borrow of `self`.
        Some(unsafe { std::slice::from_raw_parts_mut(self.base.as_ptr().add(index * FRAME_SIZE), FRAME_SIZE) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds() {
        let f = |start, len| FrameRef { chunk: Chunk { pool: 0, index: 0 }, start, len, port: 0 };
        assert!(f(HEADROOM, 60).in_bounds());
        assert!(f(0, FRAME_SIZE).in_bounds());
        assert!(!f(0, 0).in_bounds());
        assert!(!f(1, FRAME_SIZE).in_bounds());
        assert!(!f(usize::MAX, 2).in_bounds());
    }

    #[test]
    fn foreign_tokens_are_refused() {
        let mut mem_a = vec![0u8; 2 * FRAME_SIZE];
        let mut mem_b = vec![0u8; 2 * FRAME_SIZE];
        // SAFETY: the vectors outlive the FrameMems and are not touched otherwise.
        let a = unsafe { FrameMem::new(NonNull::new(mem_a.as_mut_ptr()).unwrap(), 2) };
        // SAFETY: as above.
        let b = unsafe { FrameMem::new(NonNull::new(mem_b.as_mut_ptr()).unwrap(), 2) };
        let mut ta = a.token(1);
        assert!(b.buffer(&mut ta).is_none());
        let buf = a.buffer(&mut ta).unwrap();
        assert_eq!(buf.len(), FRAME_SIZE);
        buf[0] = 7;
        assert_eq!(mem_a[FRAME_SIZE], 7);
    }
}
