//! A TCP proxy for fault injection: listens on 127.0.0.1 (a port the OS
//! picks), forwards each connection to a target, and applies the faults
//! queued for the next connections — cut after some bytes from the server,
//! stall, or reset at once. Connections with no fault queued pass through.
//! Independently, cuts can be planned at totals of the bytes all
//! connections carried from the server ([`FaultProxy::cut_at_totals`]):
//! whichever connection carries the byte at such a total is cut there.
//! Runs on its own threads; stops when dropped.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What happens to one proxied connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward normally.
    Pass,
    /// Forward, then close both sides after this many bytes from the server.
    CutAfter(u64),
    /// Accept, then close at once without forwarding anything.
    Reset,
    /// Forward this many bytes from the server, then stop forwarding (the
    /// connection stays open and silent) for the given time, then close.
    StallAfter(u64, Duration),
}

/// A running proxy.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    faults: Arc<Mutex<VecDeque<Fault>>>,
    stop: Arc<AtomicBool>,
    connections: Arc<AtomicU64>,
    from_server: Arc<Mutex<Totals>>,
    to_server: Arc<Mutex<Totals>>,
}

/// Bytes carried from the server by all connections, and the totals at
/// which to cut the connection carrying them (ascending).
#[derive(Debug, Default)]
struct Totals {
    carried: u64,
    cuts: VecDeque<u64>,
    done: u64,
}

impl Totals {
    /// Adds cuts at `totals`, keeping them ascending.
    fn plan(&mut self, totals: &[u64]) {
        let mut all: Vec<u64> = self
            .cuts
            .iter()
            .copied()
            .chain(totals.iter().copied())
            .collect();
        all.sort_unstable();
        self.cuts = all.into();
    }

    /// Accounts for `n` bytes read; returns how many to forward and whether
    /// to cut the connection after them.
    fn take(&mut self, n: u64) -> (u64, bool) {
        while self.cuts.front().is_some_and(|&c| c < self.carried) {
            self.cuts.pop_front(); // planned below what has passed already
        }
        match self.cuts.front() {
            Some(&c) if self.carried + n >= c => {
                self.cuts.pop_front();
                self.done += 1;
                let allowed = c - self.carried;
                self.carried = c;
                (allowed, true)
            }
            _ => {
                self.carried += n;
                (n, false)
            }
        }
    }
}

/// Forwards `from` to `to` until either ends, `limit` bytes have passed, or
/// (when carrying server bytes) a planned cut; returns whether it was cut.
fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    limit: Option<u64>,
    totals: Option<Arc<Mutex<Totals>>>,
) -> bool {
    let mut buf = vec![0u8; 64 * 1024];
    let mut moved = 0u64;
    loop {
        let want = match limit {
            Some(l) if moved >= l => return false,
            Some(l) => buf.len().min((l - moved) as usize),
            None => buf.len(),
        };
        let n = match from.read(&mut buf[..want]) {
            Ok(0) | Err(_) => return false,
            Ok(n) => n as u64,
        };
        let (forward, cut) = match &totals {
            Some(t) => t.lock().map(|mut t| t.take(n)).unwrap_or((n, false)),
            None => (n, false),
        };
        if to.write_all(&buf[..forward as usize]).is_err() {
            return false;
        }
        moved += forward;
        if cut {
            return true;
        }
    }
}

impl FaultProxy {
    /// A proxy to `target` (e.g. `127.0.0.1:8443`).
    pub fn start(target: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fault proxy");
        let addr = listener.local_addr().expect("proxy address");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let faults: Arc<Mutex<VecDeque<Fault>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let connections = Arc::new(AtomicU64::new(0));
        let from_server: Arc<Mutex<Totals>> = Arc::default();
        let to_server: Arc<Mutex<Totals>> = Arc::default();
        let (f, s, c, fs, ts) = (
            faults.clone(),
            stop.clone(),
            connections.clone(),
            from_server.clone(),
            to_server.clone(),
        );
        std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let client = match listener.accept() {
                    Ok((c, _)) => c,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                    Err(_) => break,
                };
                c.fetch_add(1, Ordering::SeqCst);
                let _ = client.set_nonblocking(false);
                let fault = f
                    .lock()
                    .map(|mut q| q.pop_front())
                    .ok()
                    .flatten()
                    .unwrap_or(Fault::Pass);
                if fault == Fault::Reset {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(target) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                let fs = fs.clone();
                let ts = ts.clone();
                std::thread::spawn(move || {
                    let (c2, s2) = match (client.try_clone(), server.try_clone()) {
                        (Ok(a), Ok(b)) => (a, b),
                        _ => return,
                    };
                    let up = std::thread::spawn(move || {
                        let (s3, c3) = (s2.try_clone(), c2.try_clone());
                        let cut = pump(c2, s2, None, Some(ts));
                        if let Ok(s3) = s3 {
                            let _ = s3.shutdown(if cut { Shutdown::Both } else { Shutdown::Write });
                        }
                        if let (true, Ok(c3)) = (cut, c3) {
                            let _ = c3.shutdown(Shutdown::Both);
                        }
                    });
                    let limit = match fault {
                        Fault::CutAfter(n) | Fault::StallAfter(n, _) => Some(n),
                        _ => None,
                    };
                    let (cl, sv) = (client.try_clone(), server.try_clone());
                    let cut = pump(server, client, limit, Some(fs));
                    if let Fault::StallAfter(_, d) = fault {
                        std::thread::sleep(d);
                    }
                    if let (Ok(cl), Ok(sv)) = (cl, sv) {
                        if fault == Fault::Pass && !cut {
                            let _ = cl.shutdown(Shutdown::Write);
                        } else {
                            let _ = cl.shutdown(Shutdown::Both);
                            let _ = sv.shutdown(Shutdown::Both);
                        }
                    }
                    let _ = up.join();
                });
            }
        });
        FaultProxy {
            addr,
            faults,
            stop,
            connections,
            from_server,
            to_server,
        }
    }

    /// Plans cuts of uploads: when the bytes carried to the server (all
    /// connections together) reach each of `totals`, the connection
    /// carrying them is closed there, mid-request.
    pub fn cut_uploads_at_totals(&self, totals: &[u64]) {
        if let Ok(mut t) = self.to_server.lock() {
            t.plan(totals);
        }
    }

    /// Planned upload cuts that have happened so far.
    pub fn upload_cuts_done(&self) -> u64 {
        self.to_server.lock().map(|t| t.done).unwrap_or(0)
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Queues faults for the next connections, in order.
    pub fn inject(&self, faults: &[Fault]) {
        if let Ok(mut q) = self.faults.lock() {
            q.extend(faults.iter().copied());
        }
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }

    /// Bytes forwarded from the server to clients so far.
    pub fn bytes_from_server(&self) -> u64 {
        self.from_server.lock().map(|t| t.carried).unwrap_or(0)
    }

    /// Plans cuts: when the bytes carried from the server (all connections
    /// together, counted from the proxy's start) reach each of `totals`,
    /// the connection carrying them is closed there.
    pub fn cut_at_totals(&self, totals: &[u64]) {
        if let Ok(mut t) = self.from_server.lock() {
            t.plan(totals);
        }
    }

    /// Planned cuts that have happened so far.
    pub fn cuts_done(&self) -> u64 {
        self.from_server.lock().map(|t| t.done).unwrap_or(0)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server that answers every connection with `len` bytes of 0x5a.
    fn server(len: usize) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(mut c) = c else { break };
                std::thread::spawn(move || {
                    let _ = c.write_all(&vec![0x5a; len]);
                });
            }
        });
        addr
    }

    fn fetch(addr: SocketAddr) -> std::io::Result<Vec<u8>> {
        let mut s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut out = Vec::new();
        s.read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn passes_cuts_resets_and_stalls() {
        let p = FaultProxy::start(server(100_000));
        p.inject(&[
            Fault::CutAfter(1000),
            Fault::Reset,
            Fault::StallAfter(10, Duration::from_millis(200)),
        ]);
        assert_eq!(fetch(p.addr()).unwrap().len(), 1000);
        assert!(fetch(p.addr()).map(|v| v.is_empty()).unwrap_or(true));
        let t = std::time::Instant::now();
        assert_eq!(fetch(p.addr()).unwrap().len(), 10);
        assert!(t.elapsed() >= Duration::from_millis(200));
        assert_eq!(
            fetch(p.addr()).unwrap().len(),
            100_000,
            "no fault left: passes"
        );
        assert_eq!(p.connections(), 4);
    }

    #[test]
    fn cuts_at_planned_totals() {
        let p = FaultProxy::start(server(100_000));
        p.cut_at_totals(&[150_000, 30_000]);
        assert_eq!(fetch(p.addr()).unwrap().len(), 30_000);
        assert_eq!(fetch(p.addr()).unwrap().len(), 100_000);
        assert_eq!(fetch(p.addr()).unwrap().len(), 20_000);
        assert_eq!(fetch(p.addr()).unwrap().len(), 100_000);
        assert_eq!(p.cuts_done(), 2);
        assert_eq!(p.bytes_from_server(), 250_000);
    }
}
