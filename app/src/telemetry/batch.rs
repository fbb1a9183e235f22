//! A log writer that gathers lines and writes them in batches from its own
//! thread.
//!
//! A request that logs appends its line to a shared buffer under a mutex and
//! goes on: no system call, no wake-up of another thread. The writer thread
//! wakes when the first line of a batch arrives, lets the batch gather for
//! [`WINDOW`] (or until [`FLUSH_AT`] bytes are waiting), and writes it with
//! one `write`. tracing-appender's non-blocking writer, which this replaces,
//! sends each line through a channel to a thread that writes it on its own:
//! under load that is one futex wake on the request's thread and one `write`
//! per line (`perf` put the wake in every request of `hit/memory+reqlog`).
//!
//! Nothing is dropped: past [`CAPACITY`] bytes a line waits for the writer
//! to take the batch, as the channel's bounded queue made it wait before.
//! Dropping the [`BatchGuard`] writes what is buffered and stops the thread;
//! a line logged after that is written directly.

use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// How long a batch gathers after its first line before it is written.
pub const WINDOW: Duration = Duration::from_millis(5);
/// A batch this large is written at once, without waiting out the window.
pub const FLUSH_AT: usize = 64 * 1024;
/// Past this many buffered bytes, a line waits for the writer (never lost).
pub const CAPACITY: usize = 8 * 1024 * 1024;

struct State {
    lines: Vec<u8>,
    /// The writer thread waits for a first line (nothing buffered).
    writer_idle: bool,
    /// The writer was asked to write before the window ends.
    flush_asked: bool,
    /// Lines waiting for room.
    producers_waiting: usize,
    closed: bool,
}

struct Shared {
    state: Mutex<State>,
    writer: Condvar,
    room: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves whole lines or none: the
        // buffer is still fit to write.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The [`MakeWriter`] to give `tracing_subscriber::fmt`.
pub struct BatchWriter {
    shared: Arc<Shared>,
    /// Where lines go once the writer thread has stopped.
    direct: Arc<Mutex<Option<Box<dyn Write + Send>>>>,
}

/// Stops the writer thread when dropped, after writing what is buffered.
/// Hold it until the process ends.
#[must_use = "dropping the guard stops the log writer"]
pub struct BatchGuard<W: Write + Send + 'static> {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<W>>,
    direct: Arc<Mutex<Option<Box<dyn Write + Send>>>>,
}

/// Starts the writer thread over `out` (stderr in the service).
///
/// # Errors
///
/// The thread cannot be started.
pub fn batched<W: Write + Send + 'static>(out: W) -> io::Result<(BatchWriter, BatchGuard<W>)> {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            lines: Vec::with_capacity(FLUSH_AT),
            writer_idle: false,
            flush_asked: false,
            producers_waiting: 0,
            closed: false,
        }),
        writer: Condvar::new(),
        room: Condvar::new(),
    });
    let direct = Arc::new(Mutex::new(None));
    let thread = {
        let shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("log-writer".into())
            .spawn(move || run(&shared, out))?
    };
    Ok((
        BatchWriter {
            shared: Arc::clone(&shared),
            direct: Arc::clone(&direct),
        },
        BatchGuard {
            shared,
            thread: Some(thread),
            direct,
        },
    ))
}

/// The writer thread: waits for a first line, lets the batch gather, writes
/// it outside the lock. Returns `out` when closed and drained.
fn run<W: Write>(shared: &Shared, mut out: W) -> W {
    let mut batch = Vec::with_capacity(FLUSH_AT);
    loop {
        let mut state = shared.lock();
        while state.lines.is_empty() && !state.closed {
            state.writer_idle = true;
            state = shared
                .writer
                .wait(state)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        state.writer_idle = false;
        if state.lines.is_empty() {
            // Closed, and nothing left.
            return out;
        }
        if !state.closed && !state.flush_asked && state.lines.len() < FLUSH_AT {
            state = shared
                .writer
                .wait_timeout(state, WINDOW)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
        state.flush_asked = false;
        std::mem::swap(&mut state.lines, &mut batch);
        let waiting = state.producers_waiting > 0;
        drop(state);
        if waiting {
            shared.room.notify_all();
        }
        // Nowhere to report a failed write of the log but the log itself.
        let _ = out.write_all(&batch).and_then(|()| out.flush());
        batch.clear();
        // A burst can leave a batch's buffer large; do not keep it forever.
        if batch.capacity() > 4 * FLUSH_AT {
            batch = Vec::with_capacity(FLUSH_AT);
        }
    }
}

impl BatchWriter {
    fn append(&self, line: &[u8]) -> io::Result<()> {
        let mut state = self.shared.lock();
        while state.lines.len() >= CAPACITY && !state.closed {
            state.producers_waiting += 1;
            if !state.flush_asked {
                state.flush_asked = true;
                self.shared.writer.notify_one();
            }
            state = self
                .shared
                .room
                .wait(state)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            state.producers_waiting -= 1;
        }
        if state.closed {
            drop(state);
            let mut direct = self.direct.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(out) = direct.as_mut() {
                return out.write_all(line).and_then(|()| out.flush());
            }
            // Closed, the thread not yet stopped: the guard writes what is
            // buffered once it has (it holds `direct` while it does).
            self.shared.lock().lines.extend_from_slice(line);
            return Ok(());
        }
        state.lines.extend_from_slice(line);
        let wake = if state.writer_idle {
            state.writer_idle = false;
            true
        } else if state.lines.len() >= FLUSH_AT && !state.flush_asked {
            state.flush_asked = true;
            true
        } else {
            false
        };
        drop(state);
        if wake {
            self.shared.writer.notify_one();
        }
        Ok(())
    }
}

/// One line, as `tracing_subscriber::fmt` writes it: a single `write_all` of
/// the formatted event, appended whole.
pub struct LineWriter<'a> {
    writer: &'a BatchWriter,
}

impl Write for LineWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.writer.append(bytes)?;
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BatchWriter {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter { writer: self }
    }
}

impl<W: Write + Send + 'static> Drop for BatchGuard<W> {
    fn drop(&mut self) {
        {
            let mut state = self.shared.lock();
            state.closed = true;
        }
        self.shared.writer.notify_one();
        self.shared.room.notify_all();
        let Some(thread) = self.thread.take() else {
            return;
        };
        let mut out: Box<dyn Write + Send> = match thread.join() {
            Ok(out) => Box::new(out),
            // The writer panicked (in `out`'s own write): stderr from here.
            Err(_) => Box::new(io::stderr()),
        };
        let mut direct = self.direct.lock().unwrap_or_else(|p| p.into_inner());
        let rest = std::mem::take(&mut self.shared.lock().lines);
        let _ = out.write_all(&rest).and_then(|()| out.flush());
        *direct = Some(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// A sink the test can read, counting the writes it was given.
    #[derive(Clone, Default)]
    struct Sink {
        bytes: Arc<Mutex<Vec<u8>>>,
        writes: Arc<Mutex<usize>>,
        /// Each write takes this long (a slow terminal or pipe).
        delay: Duration,
    }

    impl Write for Sink {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            std::thread::sleep(self.delay);
            self.bytes.lock().unwrap().extend_from_slice(bytes);
            *self.writes.lock().unwrap() += 1;
            Ok(bytes.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn line(writer: &BatchWriter, text: &str) {
        writer.make_writer().write_all(text.as_bytes()).unwrap();
    }

    #[test]
    fn lines_from_many_threads_arrive_whole_and_in_each_threads_order() {
        let sink = Sink::default();
        let (writer, guard) = batched(sink.clone()).unwrap();
        std::thread::scope(|scope| {
            for thread in 0..4 {
                let writer = &writer;
                scope.spawn(move || {
                    for n in 0..10_000 {
                        line(writer, &format!("t{thread} n{n} {}\n", "x".repeat(n % 50)));
                    }
                });
            }
        });
        drop(guard);
        let text = String::from_utf8(sink.bytes.lock().unwrap().clone()).unwrap();
        let mut next = [0usize; 4];
        for got in text.lines() {
            let (thread, rest) = got.split_once(' ').unwrap();
            let thread: usize = thread[1..].parse().unwrap();
            let (n, pad) = rest.split_once(' ').unwrap();
            let n: usize = n[1..].parse().unwrap();
            assert_eq!(
                n, next[thread],
                "thread {thread}: line out of order or lost"
            );
            assert_eq!(pad, "x".repeat(n % 50), "a line was torn");
            next[thread] += 1;
        }
        assert_eq!(next, [10_000; 4]);
    }

    #[test]
    fn a_burst_of_lines_costs_a_few_writes_not_one_each() {
        let sink = Sink::default();
        let (writer, guard) = batched(sink.clone()).unwrap();
        for n in 0..1_000 {
            line(&writer, &format!("line {n}\n"));
        }
        drop(guard);
        let writes = *sink.writes.lock().unwrap();
        assert_eq!(
            sink.bytes
                .lock()
                .unwrap()
                .iter()
                .filter(|&&b| b == b'\n')
                .count(),
            1_000
        );
        // 1,000 short lines appended in well under one window: one batch,
        // or a few if the thread was descheduled.
        assert!(writes <= 10, "{writes} writes for 1,000 lines");
    }

    #[test]
    fn a_lone_line_is_written_without_waiting_for_more() {
        let sink = Sink::default();
        let (writer, _guard) = batched(sink.clone()).unwrap();
        let started = Instant::now();
        line(&writer, "alone\n");
        while sink.bytes.lock().unwrap().is_empty() {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "the line was never written without a flush"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn a_full_buffer_makes_the_next_line_wait_and_loses_nothing() {
        // A sink slower than the producer: the buffer fills to CAPACITY.
        let sink = Sink {
            delay: Duration::from_millis(20),
            ..Sink::default()
        };
        let (writer, guard) = batched(sink.clone()).unwrap();
        let big = format!("{}\n", "y".repeat(256 * 1024 - 1));
        let lines = 3 * CAPACITY / big.len();
        for _ in 0..lines {
            line(&writer, &big);
            let buffered = writer.shared.lock().lines.len();
            assert!(
                buffered <= CAPACITY + big.len(),
                "{buffered} bytes buffered"
            );
        }
        drop(guard);
        assert_eq!(sink.bytes.lock().unwrap().len(), lines * big.len());
    }

    #[test]
    fn a_line_after_the_guard_is_dropped_is_written_directly() {
        let sink = Sink::default();
        let (writer, guard) = batched(sink.clone()).unwrap();
        line(&writer, "before\n");
        drop(guard);
        line(&writer, "after\n");
        assert_eq!(&*sink.bytes.lock().unwrap(), b"before\nafter\n");
    }
}
