//! In-memory backend: frames injected by a test come out of `recv`, frames
//! given to `send` are kept for the test to inspect.

use std::collections::VecDeque;
use std::ptr::NonNull;
use std::time::Duration;

use super::frame::{Chunk, FRAME_SIZE, FrameMem, FrameRef, HEADROOM, PortId};
use super::{IoError, PacketIo};

pub struct MemoryIo {
    mem: FrameMem,
    /// Owns the bytes `mem` points into; freed in Drop.
    raw: NonNull<[u8]>,
    free: Vec<u32>,
    rx: VecDeque<FrameRef>,
    sent: Vec<(PortId, Vec<u8>)>,
    batch: usize,
}

impl MemoryIo {
    /// A backend with `frames` buffers; `recv` returns at most `batch` per call.
    pub fn new(frames: u32, batch: usize) -> MemoryIo {
        let raw = NonNull::from(Box::leak(vec![0u8; frames as usize * FRAME_SIZE].into_boxed_slice()));
        // SAFETY: `raw` is owned by this value, freed only in Drop, and
        // touched only through `mem`.
        let mem = unsafe { FrameMem::new(raw.cast(), frames) };
        MemoryIo { mem, raw, free: (0..frames).rev().collect(), rx: VecDeque::new(), sent: Vec::new(), batch }
    }

    /// Queues `bytes` as a frame received on `port`, at offset HEADROOM.
    /// False when no buffer is free or the frame does not fit.
    pub fn inject(&mut self, port: PortId, bytes: &[u8]) -> bool {
        if bytes.is_empty() || bytes.len() > FRAME_SIZE - HEADROOM {
            return false;
        }
        let Some(index) = self.free.pop() else {
            return false;
        };
        let mut frame = FrameRef { chunk: self.mem.token(index), start: HEADROOM, len: bytes.len(), port };
        if let Some(buf) = self.mem.buffer(&mut frame.chunk) {
            buf[HEADROOM..HEADROOM + bytes.len()].copy_from_slice(bytes);
        }
        self.rx.push_back(frame);
        true
    }

    /// Frames sent so far, with their egress port, oldest first.
    pub fn take_sent(&mut self) -> Vec<(PortId, Vec<u8>)> {
        std::mem::take(&mut self.sent)
    }

    /// Buffers neither queued for `recv` nor held by the application.
    pub fn free_frames(&self) -> usize {
        self.free.len()
    }

    fn release(&mut self, frame: &FrameRef) {
        if let Some(index) = self.mem.index(&frame.chunk) {
            self.free.push(index);
        }
    }
}

impl PacketIo for MemoryIo {
    fn recv(&mut self, out: &mut Vec<FrameRef>) -> Result<usize, IoError> {
        let n = self.batch.min(self.rx.len());
        out.extend(self.rx.drain(..n));
        Ok(n)
    }

    fn buffer<'a>(&'a self, chunk: &'a mut Chunk) -> Option<&'a mut [u8]> {
        self.mem.buffer(chunk)
    }

    fn send(&mut self, frames: &mut Vec<FrameRef>) -> Result<usize, IoError> {
        let mut sent = 0;
        for mut frame in frames.drain(..) {
            if frame.in_bounds()
                && let Some(buf) = self.mem.buffer(&mut frame.chunk)
            {
                self.sent.push((frame.port, buf[frame.start..frame.start + frame.len].to_vec()));
                sent += 1;
            }
            self.release(&frame);
        }
        Ok(sent)
    }

    fn alloc(&mut self) -> Option<FrameRef> {
        let index = self.free.pop()?;
        Some(FrameRef { chunk: self.mem.token(index), start: HEADROOM, len: 0, port: 0 })
    }

    fn recycle(&mut self, frames: &mut Vec<FrameRef>) {
        for frame in frames.drain(..) {
            self.release(&frame);
        }
    }

    fn wait(&mut self, _timeout: Duration) -> Result<(), IoError> {
        Ok(())
    }
}

impl Drop for MemoryIo {
    fn drop(&mut self) {
        // SAFETY: `raw` came from Box::leak in `new` and is freed only here.
        drop(unsafe { Box::from_raw(self.raw.as_ptr()) });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_go_round() {
        let mut io = MemoryIo::new(4, 2);
        assert!(io.inject(1, b"abc"));
        assert!(io.inject(0, b"defg"));
        assert!(io.inject(0, b"h"));
        assert!(!io.inject(0, &[0; FRAME_SIZE]));
        let mut batch = Vec::new();
        assert_eq!(io.recv(&mut batch).unwrap(), 2);
        assert_eq!(batch[0].port, 1);

        // Prepend two bytes in place, as encapsulation would.
        let f = &mut batch[0];
        f.start -= 2;
        f.len += 2;
        f.port = 0;
        let buf = io.buffer(&mut f.chunk).unwrap();
        buf[f.start..f.start + 2].copy_from_slice(b"XY");
        assert_eq!(&buf[f.start..f.start + f.len], b"XYabc");

        let mut out = vec![batch.remove(0)];
        io.recycle(&mut batch);
        assert_eq!(io.send(&mut out).unwrap(), 1);
        assert_eq!(io.take_sent(), vec![(0, b"XYabc".to_vec())]);
        assert_eq!(io.free_frames(), 3);
        assert_eq!(io.recv(&mut batch).unwrap(), 1);
    }

    #[test]
    fn out_of_bounds_frames_are_dropped_not_sent() {
        let mut io = MemoryIo::new(1, 8);
        io.inject(0, b"abc");
        let mut batch = Vec::new();
        io.recv(&mut batch).unwrap();
        batch[0].len = FRAME_SIZE;
        assert_eq!(io.send(&mut batch).unwrap(), 0);
        assert_eq!(io.free_frames(), 1);
    }

    #[test]
    fn several_frames_borrowed_at_once() {
        let mut io = MemoryIo::new(2, 8);
        io.inject(0, b"a");
        io.inject(0, b"b");
        let mut batch = Vec::new();
        io.recv(&mut batch).unwrap();
        let (x, y) = batch.split_at_mut(1);
        let (bx, by) = (io.buffer(&mut x[0].chunk).unwrap(), io.buffer(&mut y[0].chunk).unwrap());
        std::mem::swap(&mut bx[HEADROOM], &mut by[HEADROOM]);
        io.send(&mut batch).unwrap();
        assert_eq!(io.take_sent(), vec![(0, b"b".to_vec()), (0, b"a".to_vec())]);
    }
}
