//! Background processes of a lab: killed when dropped, output collected.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use super::LabError;

type Lines = Arc<(Mutex<Vec<String>>, Condvar)>;

pub struct Proc {
    child: Child,
    lines: Lines,
    name: String,
}

impl Proc {
    pub(crate) fn spawn(args: &[&str]) -> Result<Proc, LabError> {
        let mut child = Command::new(args[0])
            .args(&args[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| LabError(format!("cannot start `{}`: {e}", args.join(" "))))?;
        let lines: Lines = Arc::default();
        // Drain both pipes so the process never blocks on a full one.
        if let Some(out) = child.stdout.take() {
            collect(out, lines.clone());
        }
        if let Some(err) = child.stderr.take() {
            collect(err, lines.clone());
        }
        Ok(Proc { child, lines, name: args.join(" ") })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (e.g. libc::SIGTERM) to the process.
    pub fn signal(&self, signal: i32) {
        // The child may have exited already: nothing left to signal.
        let _ = fulcrum_io::unix::kill(self.child.id(), signal);
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The first output line (stdout or stderr) matching `pred`, waiting
    /// up to `timeout` for it.
    pub fn wait_for_line(&self, pred: impl Fn(&str) -> bool, timeout: Duration) -> Option<String> {
        self.wait_for_nth_line(pred, 1, timeout)
    }

    /// The `n`-th output line matching `pred` (1-based), waiting up to
    /// `timeout` for it: the next of several alike events.
    pub fn wait_for_nth_line(&self, pred: impl Fn(&str) -> bool, n: usize, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        let (lock, cvar) = &*self.lines;
        let mut lines = lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if let Some(l) = lines.iter().filter(|l| pred(l)).nth(n.saturating_sub(1)) {
                return Some(l.clone());
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            lines = cvar.wait_timeout(lines, left).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    /// Everything the process printed so far, for error messages.
    pub fn output(&self) -> String {
        let lines = self.lines.0.lock().unwrap_or_else(|e| e.into_inner());
        format!("[{}]\n{}", self.name, lines.join("\n"))
    }
}

fn collect(pipe: impl Read + Send + 'static, lines: Lines) {
    thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            let (lock, cvar) = &*lines;
            lock.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            cvar.notify_all();
        }
    });
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
