//! The export queue: sampling never waits for the network. The agent's loop hands each window's
//! request to `Exporter::enqueue` and goes on; a thread of its own sends them in order, retries
//! a collector that is down or slow with exponential backoff, and when the queue is full drops
//! the oldest request. Every request ends in exactly one counter: sent, dropped (queue full, or
//! still queued at shutdown) or rejected (refused for good), so nothing is lost silently.

use std::{
    collections::VecDeque,
    sync::{Arc, Condvar, Mutex, MutexGuard},
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use super::{
    config::{ExportConfig, Protocol},
    grpc,
    http::{self, SendError},
};

/// The first wait after a failed export; it doubles up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(8);

/// One window's request, encoded, with what it holds (for the counters).
pub struct Batch {
    pub body: Vec<u8>,
    pub samples: u64,
}

/// What became of the requests so far. Each request is counted once, in one of
/// `sent`, `dropped` or `rejected`, when its fate is known; `failures` counts failed attempts
/// (a request retried three times and then sent adds 3 there and 1 to `sent`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExportCounters {
    pub sent_requests: u64,
    pub sent_samples: u64,
    /// Dropped unsent: the queue was full (the oldest goes), or shutdown came first.
    pub dropped_requests: u64,
    pub dropped_samples: u64,
    /// Refused by the collector for good (a 4xx other than 429).
    pub rejected_requests: u64,
    pub rejected_samples: u64,
    /// Profiles the collector said it rejected in an accepted request (partial success).
    pub rejected_profiles: u64,
    /// Failed attempts, retried or not.
    pub failures: u64,
    pub last_error: Option<String>,
    /// Bytes sent (compressed, as on the wire; for gRPC the message before compression).
    pub sent_bytes: u64,
}

struct State {
    queue: VecDeque<Batch>,
    capacity: usize,
    config: ExportConfig,
    counters: ExportCounters,
    stopping: bool,
    /// Set when the configuration changed: a sleeping backoff retries at once.
    woken: bool,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic in the sender would poison the lock; the counters are still right.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The queue and its sender thread.
pub struct Exporter {
    shared: Arc<Shared>,
    sender: Option<JoinHandle<()>>,
}

impl Exporter {
    /// Starts the sender; at most `capacity` requests wait (about `capacity` intervals of
    /// outage are kept).
    pub fn start(config: ExportConfig, capacity: usize) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                capacity: capacity.max(1),
                config,
                counters: ExportCounters::default(),
                stopping: false,
                woken: false,
            }),
            changed: Condvar::new(),
        });
        let for_sender = Arc::clone(&shared);
        let sender = thread::Builder::new()
            .name("otlp-export".into())
            .spawn(move || send_loop(&for_sender))
            .ok();
        Self { shared, sender }
    }

    /// Queues a request; when the queue is full the oldest waiting one is dropped (counted).
    pub fn enqueue(&self, batch: Batch) {
        let mut s = self.shared.lock();
        while s.queue.len() >= s.capacity {
            if let Some(old) = s.queue.pop_front() {
                s.counters.dropped_requests += 1;
                s.counters.dropped_samples += old.samples;
                s.counters.last_error =
                    Some("export queue full: dropped the oldest request".into());
            }
        }
        s.queue.push_back(batch);
        drop(s);
        self.shared.changed.notify_all();
    }

    /// Sends with `config` from the next attempt on (SIGHUP).
    pub fn reconfigure(&self, config: ExportConfig) {
        let mut s = self.shared.lock();
        s.config = config;
        s.woken = true;
        drop(s);
        self.shared.changed.notify_all();
    }

    /// The counters and the requests waiting.
    pub fn status(&self) -> (ExportCounters, usize) {
        let s = self.shared.lock();
        (s.counters.clone(), s.queue.len())
    }

    /// Sends what is queued, for up to `grace`, then stops; what is still queued is counted as
    /// dropped. Returns the final counters.
    pub fn shutdown(mut self, grace: Duration) -> ExportCounters {
        let deadline = Instant::now() + grace;
        {
            let mut s = self.shared.lock();
            s.stopping = true;
            s.woken = true;
            self.shared.changed.notify_all();
            while !s.queue.is_empty() && Instant::now() < deadline {
                let left = deadline.saturating_duration_since(Instant::now());
                s = self
                    .shared
                    .changed
                    .wait_timeout(s, left.min(Duration::from_millis(100)))
                    .map(|(g, _)| g)
                    .unwrap_or_else(|p| p.into_inner().0);
            }
            let left: Vec<Batch> = s.queue.drain(..).collect();
            for b in left {
                s.counters.dropped_requests += 1;
                s.counters.dropped_samples += b.samples;
            }
        }
        self.shared.changed.notify_all();
        // The sender ends after its current attempt (bounded by the export timeout).
        if let Some(t) = self.sender.take() {
            let _ = t.join();
        }
        self.shared.lock().counters.clone()
    }
}

fn send_loop(shared: &Shared) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        let (body, config) = {
            let mut s = shared.lock();
            while s.queue.is_empty() && !s.stopping {
                s = shared.changed.wait(s).unwrap_or_else(|p| p.into_inner());
            }
            let Some(front) = s.queue.front() else {
                return; // stopping, nothing left
            };
            // Compressed outside the lock; the batch stays queued (and can be dropped as the
            // oldest) until its fate is known.
            (front.body.clone(), s.config.clone())
        };
        let (result, wire) = match config.protocol {
            Protocol::HttpProtobuf => {
                let wire = http::encode_body(&config, &body);
                (http::post(&config, &wire), wire.len())
            }
            Protocol::Grpc => (grpc::export(&config, &body), body.len()),
        };
        let mut s = shared.lock();
        let retry = match result {
            Ok(accepted) => {
                // The request may have been dropped as the oldest while it was in flight; then
                // it is counted dropped already, and the front is another one.
                if let Some(b) = pop_if_same(&mut s.queue, &body) {
                    s.counters.sent_requests += 1;
                    s.counters.sent_samples += b.samples;
                    s.counters.sent_bytes += wire as u64;
                }
                if accepted.rejected_profiles > 0 {
                    s.counters.rejected_profiles += accepted.rejected_profiles as u64;
                    s.counters.last_error = Some(format!(
                        "the collector rejected {} profiles: {}",
                        accepted.rejected_profiles, accepted.message
                    ));
                }
                backoff = FIRST_BACKOFF;
                false
            }
            Err(SendError::Permanent(why)) => {
                s.counters.failures += 1;
                if let Some(b) = pop_if_same(&mut s.queue, &body) {
                    s.counters.rejected_requests += 1;
                    s.counters.rejected_samples += b.samples;
                }
                s.counters.last_error = Some(why);
                false
            }
            Err(SendError::Retryable(why)) => {
                s.counters.failures += 1;
                s.counters.last_error = Some(why);
                true
            }
        };
        drop(s);
        shared.changed.notify_all();
        if retry {
            let until = Instant::now() + backoff;
            backoff = (backoff * 2).min(MAX_BACKOFF);
            let mut s = shared.lock();
            s.woken = false;
            while !s.woken && Instant::now() < until {
                let left = until.saturating_duration_since(Instant::now());
                s = shared
                    .changed
                    .wait_timeout(s, left)
                    .map(|(g, _)| g)
                    .unwrap_or_else(|p| p.into_inner().0);
            }
            if s.stopping && s.queue.is_empty() {
                return;
            }
        }
    }
}

/// Pops the front batch if it is the one just sent (same body).
fn pop_if_same(queue: &mut VecDeque<Batch>, body: &[u8]) -> Option<Batch> {
    if queue.front().is_some_and(|b| b.body == body) {
        queue.pop_front()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read as _, Write as _},
        net::TcpListener,
    };

    use super::*;
    use crate::agent::config::{Endpoint, Protocol};

    fn config(port: u16) -> ExportConfig {
        ExportConfig {
            protocol: Protocol::HttpProtobuf,
            endpoint: Endpoint {
                host: "127.0.0.1".into(),
                port,
                path: "/v1development/profiles".into(),
            },
            headers: Vec::new(),
            gzip: false,
            timeout: Duration::from_secs(2),
            resource: Vec::new(),
        }
    }

    fn batch(n: u8) -> Batch {
        Batch {
            body: vec![n; 10],
            samples: 100,
        }
    }

    /// A port with nothing listening on it.
    fn closed_port() -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    }

    /// A collector that is down: the queue keeps the newest `capacity` requests and counts the
    /// rest as dropped; at shutdown what is left is dropped too. Every request is counted once.
    #[test]
    fn a_collector_that_is_down_never_blocks_and_every_request_is_counted() {
        let e = Exporter::start(config(closed_port()), 3);
        let started = Instant::now();
        for n in 0..10 {
            e.enqueue(batch(n));
        }
        assert!(
            started.elapsed() < Duration::from_millis(100),
            "enqueue never waits"
        );
        let c = e.shutdown(Duration::from_millis(300));
        assert_eq!(c.sent_requests, 0);
        assert_eq!(c.dropped_requests, 10);
        assert_eq!(c.dropped_samples, 1000);
        assert!(c.failures >= 1);
        assert!(c.last_error.unwrap().contains("connect"));
    }

    /// A collector that comes back: what was queued during the outage is delivered, in order.
    #[test]
    fn queued_requests_are_delivered_when_the_collector_comes_back() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let e = Exporter::start(config(port), 8);
        e.enqueue(batch(1));
        e.enqueue(batch(2));
        thread::sleep(Duration::from_millis(700));
        assert!(e.status().0.failures >= 1);
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let server = thread::spawn(move || {
            let mut bodies = Vec::new();
            for _ in 0..2 {
                let (mut s, _) = listener.accept().unwrap();
                let mut got = Vec::new();
                let mut buf = [0u8; 1024];
                while !got.ends_with(&[bodies.len() as u8 + 1; 10]) {
                    let n = s.read(&mut buf).unwrap();
                    if n == 0 {
                        break;
                    }
                    got.extend_from_slice(&buf[..n]);
                }
                s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                    .unwrap();
                bodies.push(got[got.len() - 10]);
            }
            bodies
        });
        // A reconfiguration wakes the backoff: the retry comes at once.
        e.reconfigure(config(port));
        assert_eq!(server.join().unwrap(), [1, 2]);
        let c = e.shutdown(Duration::from_secs(2));
        assert_eq!(
            (c.sent_requests, c.sent_samples, c.dropped_requests),
            (2, 200, 0)
        );
    }
}
