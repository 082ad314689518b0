//! A UDP proxy on loopback that damages the path between a sender and a receiver: it drops,
//! duplicates, reorders and delays datagrams, and can cut the link entirely (now, for a while, or
//! once the client has sent a number of bytes).
//!
//! QUIC must survive loss, duplication and reordering (RFC 9000/9002), and walship must turn what
//! it cannot survive (a long cut) into a clean failure PostgreSQL retries. The proxy keeps one
//! upstream socket per client address, like a NAT, so several senders may use it at once.
//! Randomness comes from a seeded generator: tests print the seed and take one back through
//! `WALSHIP_FAULT_SEED`.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How long a proxy thread blocks before checking whether the proxy is being dropped.
const POLL: Duration = Duration::from_millis(20);
/// Extra delay of a reordered datagram, so that a few later ones overtake it. QUIC may declare
/// it lost and send its frames again, as it would on a real path that reorders.
const REORDER_HOLD: Duration = Duration::from_millis(2);
/// Largest datagram handled (QUIC uses at most ~1500 bytes on loopback by default).
const MAX_DATAGRAM: usize = 65_536;

/// What the proxy does to each datagram, in both directions.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Probability of dropping a datagram.
    pub drop: f64,
    /// Probability of sending a datagram twice.
    pub duplicate: f64,
    /// Probability of holding a datagram back so that later ones overtake it.
    pub reorder: f64,
    /// Added to every datagram's trip.
    pub delay: Duration,
    /// Drop everything.
    pub cut: bool,
    /// Set `cut` once this many more bytes (counted from [`Proxy::set`]) went from clients to
    /// the target.
    pub cut_after_upstream_bytes: Option<u64>,
}

/// Counts of what the proxy did.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stats {
    pub forwarded: u64,
    pub dropped: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub upstream_bytes: u64,
}

/// A running proxy; dropping it stops its threads.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

struct Shared {
    target: SocketAddr,
    faults: Mutex<Faults>,
    stats: Mutex<Stats>,
    rng: Mutex<Rng>,
    stop: AtomicBool,
    upstream_bytes: AtomicU64,
}

/// A datagram waiting in the delay line.
struct Delayed {
    due: Instant,
    seq: u64,
    socket: Arc<UdpSocket>,
    dest: Option<SocketAddr>,
    data: Vec<u8>,
}

impl Proxy {
    /// Listen on 127.0.0.1 (a free port) and forward to `target` (`host:port`, UDP).
    pub fn start(target: &str, seed: u64) -> Proxy {
        let target: SocketAddr = target
            .parse()
            .unwrap_or_else(|e| panic!("proxy target {target}: {e}"));
        let listen = UdpSocket::bind("127.0.0.1:0").expect("proxy: bind 127.0.0.1:0");
        listen.set_read_timeout(Some(POLL)).expect("read timeout");
        let addr = listen.local_addr().expect("proxy local addr");
        let shared = Arc::new(Shared {
            target,
            faults: Mutex::new(Faults::default()),
            stats: Mutex::new(Stats::default()),
            rng: Mutex::new(Rng::new(seed)),
            stop: AtomicBool::new(false),
            upstream_bytes: AtomicU64::new(0),
        });
        let (delay_tx, delay_rx) = mpsc::channel::<Delayed>();
        let listen = Arc::new(listen);
        let mut threads = Vec::new();
        {
            let shared = shared.clone();
            threads.push(thread::spawn(move || delay_line(&shared, delay_rx)));
        }
        {
            let shared = shared.clone();
            threads.push(thread::spawn(move || clients(&shared, listen, delay_tx)));
        }
        Proxy {
            addr,
            shared,
            threads,
        }
    }

    /// `127.0.0.1:PORT`, for a sender's `receiver` setting.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// Replace the faults.
    pub fn set(&self, mut faults: Faults) {
        let mut f = self.shared.faults.lock().expect("faults lock");
        // Internally the limit is absolute: bytes counted since the proxy started.
        let sent = self.shared.upstream_bytes.load(Ordering::Relaxed);
        faults.cut_after_upstream_bytes = faults.cut_after_upstream_bytes.map(|n| sent + n);
        *f = faults;
    }

    /// Cut the link (drop everything) or heal it.
    pub fn cut(&self, on: bool) {
        self.shared.faults.lock().expect("faults lock").cut = on;
    }

    /// Cut the link now and heal it after `for_`, from a background thread.
    pub fn cut_for(&self, for_: Duration) -> JoinHandle<()> {
        self.cut(true);
        let shared = self.shared.clone();
        thread::spawn(move || {
            thread::sleep(for_);
            shared.faults.lock().expect("faults lock").cut = false;
        })
    }

    pub fn is_cut(&self) -> bool {
        self.shared.faults.lock().expect("faults lock").cut
    }

    pub fn stats(&self) -> Stats {
        let mut s = *self.shared.stats.lock().expect("stats lock");
        s.upstream_bytes = self.shared.upstream_bytes.load(Ordering::Relaxed);
        s
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The seed for randomised fault runs: `WALSHIP_FAULT_SEED` if set, else the clock. Printed, so
/// that a failing run can be repeated.
pub fn seed(test: &str) -> u64 {
    let seed = match std::env::var("WALSHIP_FAULT_SEED") {
        Ok(s) => s
            .parse()
            .unwrap_or_else(|e| panic!("WALSHIP_FAULT_SEED={s:?} is not a u64: {e}")),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1),
    };
    eprintln!("{test}: fault seed {seed} (repeat with WALSHIP_FAULT_SEED={seed})");
    seed
}

/// Accept datagrams from clients, one upstream socket (and return thread) per client address.
fn clients(shared: &Arc<Shared>, listen: Arc<UdpSocket>, delay: mpsc::Sender<Delayed>) {
    let mut flows: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut returns = Vec::new();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    while !shared.stop.load(Ordering::Relaxed) {
        let (n, client) = match listen.recv_from(&mut buf) {
            Ok(v) => v,
            Err(_) => continue, // timeout (or a transient error): check `stop` again
        };
        let upstream = match flows.get(&client) {
            Some(u) => u.clone(),
            None => {
                let u = UdpSocket::bind("127.0.0.1:0").expect("proxy: bind upstream socket");
                u.connect(shared.target).expect("proxy: connect upstream");
                u.set_read_timeout(Some(POLL)).expect("read timeout");
                let u = Arc::new(u);
                flows.insert(client, u.clone());
                let (shared, up, listen, delay) =
                    (shared.clone(), u.clone(), listen.clone(), delay.clone());
                returns.push(thread::spawn(move || {
                    let mut buf = vec![0u8; MAX_DATAGRAM];
                    while !shared.stop.load(Ordering::Relaxed) {
                        if let Ok(n) = up.recv(&mut buf) {
                            forward(&shared, &delay, &listen, Some(client), &buf[..n], false);
                        }
                    }
                }));
                u
            }
        };
        forward(shared, &delay, &upstream, None, &buf[..n], true);
    }
    for t in returns {
        let _ = t.join();
    }
}

/// Apply the faults to one datagram and send it (now or through the delay line).
fn forward(
    shared: &Shared,
    delay: &mpsc::Sender<Delayed>,
    socket: &Arc<UdpSocket>,
    dest: Option<SocketAddr>,
    data: &[u8],
    upstream: bool,
) {
    let faults = {
        let mut f = shared.faults.lock().expect("faults lock");
        if upstream {
            let total = shared
                .upstream_bytes
                .fetch_add(data.len() as u64, Ordering::Relaxed)
                + data.len() as u64;
            if f.cut_after_upstream_bytes
                .is_some_and(|limit| total > limit)
            {
                f.cut = true;
                f.cut_after_upstream_bytes = None;
            }
        }
        f.clone()
    };
    let (dropped, copies, reordered) = {
        let mut rng = shared.rng.lock().expect("rng lock");
        let dropped = faults.cut || rng.chance(faults.drop);
        let copies = if rng.chance(faults.duplicate) { 2 } else { 1 };
        (dropped, copies, rng.chance(faults.reorder))
    };
    {
        let mut s = shared.stats.lock().expect("stats lock");
        if dropped {
            s.dropped += 1;
            return;
        }
        s.forwarded += 1;
        s.duplicated += (copies - 1) as u64;
        s.reordered += reordered as u64;
    }
    let mut wait = faults.delay;
    if reordered {
        wait += REORDER_HOLD;
    }
    for _ in 0..copies {
        if wait.is_zero() {
            send(socket, dest, data);
        } else {
            let _ = delay.send(Delayed {
                due: Instant::now() + wait,
                seq: 0,
                socket: socket.clone(),
                dest,
                data: data.to_vec(),
            });
        }
    }
}

fn send(socket: &UdpSocket, dest: Option<SocketAddr>, data: &[u8]) {
    // A send error (the peer's port is gone) is what a lossy network does anyway.
    let _ = match dest {
        Some(d) => socket.send_to(data, d),
        None => socket.send(data),
    };
}

/// Send delayed datagrams when they are due, earliest first.
fn delay_line(shared: &Shared, rx: mpsc::Receiver<Delayed>) {
    let mut heap: BinaryHeap<Reverse<(Instant, u64)>> = BinaryHeap::new();
    let mut items: HashMap<u64, Delayed> = HashMap::new();
    let mut seq = 0u64;
    loop {
        let now = Instant::now();
        while let Some(Reverse((due, id))) = heap.peek().copied() {
            if due > now {
                break;
            }
            heap.pop();
            if let Some(d) = items.remove(&id) {
                send(&d.socket, d.dest, &d.data);
            }
        }
        if shared.stop.load(Ordering::Relaxed) {
            return;
        }
        let wait = heap
            .peek()
            .map(|Reverse((due, _))| due.saturating_duration_since(now))
            .unwrap_or(POLL)
            .min(POLL);
        match rx.recv_timeout(wait) {
            Ok(mut d) => {
                seq += 1;
                d.seq = seq;
                heap.push(Reverse((d.due, seq)));
                items.insert(seq, d);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                if heap.is_empty() {
                    return;
                }
            }
        }
    }
}

/// xorshift64*: small, seedable, good enough to pick which datagrams to damage (and, in the
/// soak, which fault comes when).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    /// A duration between `lo` and `hi` milliseconds, inclusive.
    pub fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next_u64() % (hi - lo + 1))
    }
}
