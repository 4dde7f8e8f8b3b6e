//! A TCP proxy for fault injection: listens on 127.0.0.1 (a port the OS
//! picks), forwards each connection to a target, and applies the faults
//! queued for the next connections — cut after some bytes from the server,
//! stall, or reset at once. Connections with no fault queued pass through.
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
    from_server: Arc<AtomicU64>,
}

fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    limit: Option<u64>,
    count: Option<Arc<AtomicU64>>,
) -> u64 {
    let mut buf = vec![0u8; 64 * 1024];
    let mut moved = 0u64;
    loop {
        let want = match limit {
            Some(l) if moved >= l => break,
            Some(l) => buf.len().min((l - moved) as usize),
            None => buf.len(),
        };
        let n = match from.read(&mut buf[..want]) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        moved += n as u64;
        if let Some(c) = &count {
            c.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
    moved
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
        let from_server = Arc::new(AtomicU64::new(0));
        let (f, s, c, fs) = (
            faults.clone(),
            stop.clone(),
            connections.clone(),
            from_server.clone(),
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
                std::thread::spawn(move || {
                    let (c2, s2) = match (client.try_clone(), server.try_clone()) {
                        (Ok(a), Ok(b)) => (a, b),
                        _ => return,
                    };
                    let up = std::thread::spawn(move || {
                        let s3 = s2.try_clone();
                        pump(c2, s2, None, None);
                        if let Ok(s3) = s3 {
                            let _ = s3.shutdown(Shutdown::Write);
                        }
                    });
                    let limit = match fault {
                        Fault::CutAfter(n) | Fault::StallAfter(n, _) => Some(n),
                        _ => None,
                    };
                    let (cl, sv) = (client.try_clone(), server.try_clone());
                    pump(server, client, limit, Some(fs));
                    if let Fault::StallAfter(_, d) = fault {
                        std::thread::sleep(d);
                    }
                    if let (Ok(cl), Ok(sv)) = (cl, sv) {
                        if fault == Fault::Pass {
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
        }
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
        self.from_server.load(Ordering::Relaxed)
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
}
