//! Everything the kernel process writes to stdout and stderr — Rhai `print`, the host's
//! summaries, plugin output, warnings — becomes `stream` messages: file descriptors 1 and 2 are
//! pipes read by one thread each, which hands the text on as it arrives.
//!
//! Before a cell's result is sent, [`Capture::flush`] writes a marker behind everything already
//! written and waits until its reader has passed it, so a cell's output always precedes its
//! result and the `idle` status.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, RawFd};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const MARKER: &[u8] = b"\0\x01llmlab-kernel-flush\x01\0";

/// Receives `("stdout" | "stderr", text)` as it is written.
pub type Sink = Arc<dyn Fn(&'static str, String) + Send + Sync>;

struct Stream {
    fd: RawFd,
    passed: Mutex<Receiver<()>>,
}

/// The redirected stdout and stderr.
pub struct Capture {
    streams: Vec<Stream>,
    /// The original stderr, for the kernel's own diagnostics (the Jupyter server's log).
    original_stderr: Mutex<File>,
}

fn check(result: libc::c_int, what: &str) -> std::io::Result<libc::c_int> {
    if result < 0 {
        let error = std::io::Error::last_os_error();
        Err(std::io::Error::new(
            error.kind(),
            format!("{what}: {error}"),
        ))
    } else {
        Ok(result)
    }
}

impl Capture {
    /// Redirects fds 1 and 2 into pipes whose text goes to `sink`.
    pub fn install(sink: Sink) -> std::io::Result<Capture> {
        // SAFETY: plain descriptor calls; `saved` and the pipe ends are fresh descriptors we own.
        let saved = check(unsafe { libc::dup(2) }, "dup(stderr)")?;
        let original_stderr = unsafe { File::from_raw_fd(saved) };
        let mut streams = Vec::new();
        for (fd, name) in [(1, "stdout"), (2, "stderr")] {
            let mut ends = [0 as RawFd; 2];
            check(
                unsafe { libc::pipe2(ends.as_mut_ptr(), libc::O_CLOEXEC) },
                "pipe",
            )?;
            check(unsafe { libc::dup2(ends[1], fd) }, "dup2")?;
            unsafe { libc::close(ends[1]) };
            let reader = unsafe { File::from_raw_fd(ends[0]) };
            let (passed_tx, passed_rx) = channel();
            let sink = sink.clone();
            std::thread::Builder::new()
                .name(format!("kernel-{name}"))
                .spawn(move || pump(reader, name, sink, passed_tx))?;
            streams.push(Stream {
                fd,
                passed: Mutex::new(passed_rx),
            });
        }
        Ok(Capture {
            streams,
            original_stderr: Mutex::new(original_stderr),
        })
    }

    /// Waits until everything written to stdout and stderr so far has gone to the sink.
    pub fn flush(&self) {
        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().flush();
        for stream in &self.streams {
            let passed = stream.passed.lock().unwrap_or_else(|p| p.into_inner());
            while passed.try_recv().is_ok() {}
            // SAFETY: writing a buffer we own to a descriptor that stays open.
            let written = unsafe { libc::write(stream.fd, MARKER.as_ptr().cast(), MARKER.len()) };
            if written == MARKER.len() as isize {
                let _ = passed.recv_timeout(Duration::from_secs(5));
            }
        }
    }

    /// A line for the kernel's own log (not the notebook).
    pub fn log(&self, line: &str) {
        let mut err = self
            .original_stderr
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(err, "llmlab kernel: {line}");
    }
}

/// Reads one pipe until it closes, handing text to `sink` and acknowledging markers.
fn pump(mut reader: File, name: &'static str, sink: Sink, passed: Sender<()>) {
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        pending.extend_from_slice(&buf[..n]);
        while let Some(at) = find(&pending, MARKER) {
            let text: Vec<u8> = pending.drain(..at).collect();
            pending.drain(..MARKER.len());
            emit(&sink, name, &text);
            let _ = passed.send(());
        }
        let ready = ready_len(&pending);
        if ready > 0 {
            let text: Vec<u8> = pending.drain(..ready).collect();
            emit(&sink, name, &text);
        }
    }
}

fn emit(sink: &Sink, name: &'static str, text: &[u8]) {
    if !text.is_empty() {
        sink(name, String::from_utf8_lossy(text).into_owned());
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// How much of `pending` can go out now: not a tail that may be the start of a marker, nor an
/// incomplete UTF-8 character.
fn ready_len(pending: &[u8]) -> usize {
    let mut end = pending.len();
    for keep in (1..MARKER.len()).rev() {
        if pending.len() >= keep && pending.ends_with(&MARKER[..keep]) {
            end = pending.len() - keep;
            break;
        }
    }
    // Back off over a trailing partial UTF-8 sequence (at most 3 bytes).
    let text = &pending[..end];
    for back in 1..=3.min(text.len()) {
        let byte = text[text.len() - back];
        if byte & 0xC0 == 0x80 {
            continue; // continuation byte: look further back
        }
        if byte >= 0xC0 {
            let needed = if byte >= 0xF0 {
                4
            } else if byte >= 0xE0 {
                3
            } else {
                2
            };
            if back < needed {
                end = text.len() - back;
            }
        }
        break;
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_back_marker_prefixes_and_split_characters() {
        assert_eq!(ready_len(b"hello"), 5);
        assert_eq!(ready_len(b"hello\0"), 5);
        assert_eq!(ready_len(b"hello\0\x01llm"), 5);
        let e_acute = "é".as_bytes();
        assert_eq!(ready_len(&[b'a', e_acute[0]]), 1);
        assert_eq!(ready_len(&[b'a', e_acute[0], e_acute[1]]), 3);
        assert_eq!(ready_len("x€".as_bytes()), 4);
        assert_eq!(ready_len(&"x€".as_bytes()[..3]), 1);
    }

    #[test]
    fn pump_passes_text_and_acknowledges_markers() {
        let (r, w) = {
            let mut ends = [0 as RawFd; 2];
            assert_eq!(unsafe { libc::pipe(ends.as_mut_ptr()) }, 0);
            unsafe { (File::from_raw_fd(ends[0]), File::from_raw_fd(ends[1])) }
        };
        let seen = Arc::new(Mutex::new(String::new()));
        let s = seen.clone();
        let sink: Sink = Arc::new(move |_, text| s.lock().unwrap().push_str(&text));
        let (tx, rx) = channel();
        let pump = std::thread::spawn(move || pump(r, "stdout", sink, tx));
        let mut w = w;
        w.write_all(b"one ").unwrap();
        w.write_all(&MARKER[..5]).unwrap();
        w.write_all(&MARKER[5..]).unwrap();
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(*seen.lock().unwrap(), "one ");
        w.write_all("two é\n".as_bytes()).unwrap();
        w.write_all(MARKER).unwrap();
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(*seen.lock().unwrap(), "one two é\n");
        drop(w);
        pump.join().unwrap();
    }
}
