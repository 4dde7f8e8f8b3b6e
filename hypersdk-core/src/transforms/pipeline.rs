//! The transform pipeline: digest, compress and encrypt on threads at once.
//!
//! ```text
//!            fixed-size chunks          frames, in order
//! input ─▶ [digest] ─┬─▶ [compress #1] ─┬─▶ [encrypt] ─▶ output
//! (async   thread    ├─▶ [compress #2] ─┤   thread       (async or
//!  or sync)          └─▶ …  N threads  ─┘                 blocking)
//! ```
//!
//! [`PipelineInput`] cuts whatever is written into chunks of exactly
//! `chunk_size` bytes (the last may be shorter). The digest thread hashes each
//! chunk as it passes (the digest is of the input bytes: what a manifest
//! names) and deals the chunks round-robin to the compression threads; each
//! compresses its chunk into one independent frame (see
//! [`compress`](super::compress)); the encryption thread takes the frames
//! back in the same round-robin order, so the output is in input order, and
//! seals them with [`EncryptWriter`]. Stages
//! that are not asked for are left out. Every link is a bounded channel, so a
//! slow consumer slows the producer and memory stays bounded:
//!
//! ```text
//! chunks in flight ≤ 2 × queue_depth (input and output queues)
//!                  + 3 × workers     (two queued to and one from each compressor)
//!                  + workers + 2     (one being worked on per thread)
//! ```
//!
//! With the defaults (1 MiB chunks, depth 4, 2 workers) that is at most 18
//! MiB, plus about 1.3 MiB of zstd state per worker at level 1, whatever the
//! input size. (Two chunks queued to each compressor, not one, keep the
//! digest thread — the one stage that cannot be split — from waiting on a
//! compressor that the scheduler has briefly set aside.)
//!
//! A failing stage drops its channels, so the stages around it stop too and
//! writes to the input fail; [`PipelineOutput::finish`] then returns the
//! error of the stage that failed first.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use hypersdk_formats::manifest::{DigestAlgorithm, Hasher};
use tokio::sync::mpsc;

use super::compress::Compression;
use super::encrypt::{EncryptWriter, KeySource};
use crate::error::{Error, Result};

/// What a pipeline does to the bytes, in this order: digest, compress, encrypt.
#[derive(Debug, Clone)]
pub struct TransformSpec {
    /// Digest of the input bytes, or None.
    pub digest: Option<DigestAlgorithm>,
    /// Compression, or None.
    pub compression: Option<Compression>,
    /// Encryption key, or None.
    pub encryption: Option<KeySource>,
    /// Chunk size between stages, and the compression frame size (≥ 64 KiB).
    pub chunk_size: usize,
    /// Chunks the input and output queues hold.
    pub queue_depth: usize,
    /// Compression threads (default: the number of cores).
    pub workers: usize,
}

impl Default for TransformSpec {
    fn default() -> Self {
        TransformSpec {
            digest: Some(DigestAlgorithm::Sha256),
            compression: None,
            encryption: None,
            chunk_size: 1 << 20,
            queue_depth: 4,
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
        }
    }
}

impl TransformSpec {
    /// Whether the output differs from the input (compression or encryption).
    pub fn changes_bytes(&self) -> bool {
        self.compression.is_some() || self.encryption.is_some()
    }

    /// The suffix these transforms add to a file name, e.g. `.zst.enc`.
    pub fn extension(&self) -> String {
        crate::transforms::wrapped_extension(self.compression.as_ref(), self.encryption.is_some())
    }

    /// The most memory the pipeline's queues and buffers hold, in bytes
    /// (see the module docs).
    pub fn memory_bound(&self) -> usize {
        let workers = if self.compression.is_some() {
            self.workers.max(1)
        } else {
            0
        };
        self.chunk_size.max(1 << 16) * (2 * self.queue_depth.max(1) + 4 * workers + 2)
    }
}

/// Recycled chunk buffers: the stages hand finished buffers back instead of
/// freeing them, so a long run does not allocate (and fault in) fresh memory
/// for every chunk. A buffer is taken from the pool before a new one is
/// allocated, so the pool never raises the number of buffers alive above the
/// number in flight at the busiest moment.
#[derive(Debug, Clone)]
struct Pool {
    bufs: Arc<Mutex<Vec<Vec<u8>>>>,
    /// Capacity of pooled buffers: a chunk, or a compressed frame of one.
    cap: usize,
    max: usize,
}

impl Pool {
    fn new(chunk: usize, max: usize) -> Self {
        Pool {
            bufs: Arc::new(Mutex::new(Vec::new())),
            cap: chunk + chunk / 64 + 4096,
            max,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Vec<u8>>> {
        self.bufs.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self) -> Vec<u8> {
        self.lock()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(self.cap))
    }

    fn put(&self, mut b: Vec<u8>) {
        if (self.cap..=2 * self.cap).contains(&b.capacity()) {
            let mut bufs = self.lock();
            if bufs.len() < self.max {
                b.clear();
                bufs.push(b);
            }
        }
    }
}

/// What a finished pipeline reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelineSummary {
    /// Bytes that went in.
    pub input_bytes: u64,
    /// Bytes that came out.
    pub output_bytes: u64,
    /// Hex digest of the input, if asked for.
    pub digest: Option<String>,
}

/// The writing end: cut into chunks and sent to the first stage. Use
/// [`write`](Self::write) from async code or `std::io::Write` from a thread
/// (not from inside the async runtime); then [`close`](Self::close).
#[derive(Debug)]
pub struct PipelineInput {
    tx: Option<mpsc::Sender<Vec<u8>>>,
    /// Set by `close`: the input ended on purpose, not by being dropped.
    closed: Arc<AtomicBool>,
    buf: Vec<u8>,
    chunk: usize,
    pool: Pool,
}

/// The reading end: stage output in order, then the summary.
#[derive(Debug)]
pub struct PipelineOutput {
    rx: mpsc::Receiver<Vec<u8>>,
    pool: Pool,
    output_bytes: u64,
    /// Digest states, one before each output buffer (a pipeline that
    /// passes its chunks on unchanged).
    marks: Option<Receiver<Hasher>>,
    mark: Option<Hasher>,
    threads: Vec<(&'static str, JoinHandle<Result<Option<Stats>>>)>,
}

/// What the digest thread found.
#[derive(Debug)]
struct Stats {
    input_bytes: u64,
    digest: Option<String>,
}

fn stopped() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::BrokenPipe,
        "the transform pipeline stopped",
    )
}

impl PipelineInput {
    fn take_chunk(&mut self) -> Vec<u8> {
        let fresh = self.pool.get();
        std::mem::replace(&mut self.buf, fresh)
    }

    /// An empty buffer of at least `chunk_size` capacity, recycled when
    /// possible: fill it with exactly `chunk_size` bytes and pass it to
    /// [`write_owned`](Self::write_owned) to avoid a copy.
    pub fn buffer(&self) -> Vec<u8> {
        self.pool.get()
    }

    /// Appends bytes (async).
    pub async fn write(&mut self, mut data: &[u8]) -> std::io::Result<()> {
        while !data.is_empty() {
            if let Some(full) = self.fill(&mut data) {
                let tx = self.tx.as_ref().ok_or_else(stopped)?;
                tx.send(full).await.map_err(|_| stopped())?;
            }
        }
        Ok(())
    }

    /// Moves bytes from the front of `data` into the chunk being filled;
    /// returns the chunk once it is full.
    fn fill(&mut self, data: &mut &[u8]) -> Option<Vec<u8>> {
        let take = (self.chunk - self.buf.len()).min(data.len());
        self.buf.extend_from_slice(&data[..take]);
        *data = &data[take..];
        (self.buf.len() == self.chunk).then(|| self.take_chunk())
    }

    /// Hands over a buffer without copying it (async). A buffer of exactly
    /// `chunk_size` bytes, given when nothing is pending, goes on as one
    /// chunk; anything else is cut like [`write`](Self::write).
    pub async fn write_owned(&mut self, data: Vec<u8>) -> std::io::Result<()> {
        if self.buf.is_empty() && data.len() == self.chunk {
            let tx = self.tx.as_ref().ok_or_else(stopped)?;
            return tx.send(data).await.map_err(|_| stopped());
        }
        self.write(&data).await
    }

    /// The same, from a thread.
    pub fn write_owned_blocking(&mut self, data: Vec<u8>) -> std::io::Result<()> {
        if self.buf.is_empty() && data.len() == self.chunk {
            let tx = self.tx.as_ref().ok_or_else(stopped)?;
            return tx.blocking_send(data).map_err(|_| stopped());
        }
        std::io::Write::write_all(self, &data)
    }

    /// The chunk size: buffers of this size pass through
    /// [`write_owned`](Self::write_owned) without a copy.
    pub fn chunk_size(&self) -> usize {
        self.chunk
    }

    /// Sends the last partial chunk and closes the input (async).
    pub async fn close(mut self) -> std::io::Result<()> {
        let tx = self.tx.take().ok_or_else(stopped)?;
        if !self.buf.is_empty() {
            let last = self.take_chunk();
            tx.send(last).await.map_err(|_| stopped())?;
        }
        self.closed.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Sends the last partial chunk and closes the input (from a thread).
    pub fn close_blocking(mut self) -> std::io::Result<()> {
        let tx = self.tx.take().ok_or_else(stopped)?;
        if !self.buf.is_empty() {
            let last = self.take_chunk();
            tx.blocking_send(last).map_err(|_| stopped())?;
        }
        self.closed.store(true, Ordering::SeqCst);
        Ok(())
    }
}

impl std::io::Write for PipelineInput {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let mut rest = data;
        while !rest.is_empty() {
            if let Some(full) = self.fill(&mut rest) {
                let tx = self.tx.as_ref().ok_or_else(stopped)?;
                tx.blocking_send(full).map_err(|_| stopped())?;
            }
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl PipelineOutput {
    /// The next output buffer, or None when the pipeline is done (or failed:
    /// [`finish`](Self::finish) tells).
    pub async fn recv(&mut self) -> Option<Vec<u8>> {
        let b = self.rx.recv().await?;
        self.output_bytes += b.len() as u64;
        if let Some(m) = &self.marks {
            // Sent before its buffer, so already there.
            self.mark = m.try_recv().ok();
        }
        Some(b)
    }

    /// The digest state before the bytes of the buffer last received, for
    /// a pipeline that passes its input on unchanged (digest only): with
    /// it, a checkpoint can record the digest at any byte of the output
    /// and the object be continued there without reading it back.
    pub fn mark(&self) -> Option<&Hasher> {
        self.mark.as_ref()
    }

    /// The same, from a thread.
    pub fn blocking_recv(&mut self) -> Option<Vec<u8>> {
        let b = self.rx.blocking_recv()?;
        self.output_bytes += b.len() as u64;
        if let Some(m) = &self.marks {
            self.mark = m.try_recv().ok();
        }
        Some(b)
    }

    /// Hands a buffer from [`recv`](Self::recv) back for reuse once its
    /// bytes are written out (optional; it saves allocations).
    pub fn recycle(&self, buf: Vec<u8>) {
        self.pool.put(buf);
    }

    /// Joins the stages (waiting for them without blocking the runtime) and
    /// returns the summary, or the first stage error. Output not yet received
    /// is dropped.
    pub async fn finish(self) -> Result<PipelineSummary> {
        tokio::task::spawn_blocking(move || self.finish_blocking())
            .await
            .map_err(|e| Error::Internal(format!("joining the transform pipeline: {e}")))?
    }

    /// The same, from a thread.
    pub fn finish_blocking(self) -> Result<PipelineSummary> {
        let PipelineOutput {
            mut rx,
            threads,
            output_bytes,
            ..
        } = self;
        rx.close();
        let mut first_err = None;
        let mut stats = None;
        for (name, t) in threads {
            match t.join() {
                Ok(Ok(Some(s))) => stats = Some(s),
                Ok(Ok(None)) => {}
                Ok(Err(e)) => {
                    first_err.get_or_insert(e);
                }
                Err(_) => {
                    first_err.get_or_insert(Error::Internal(format!(
                        "the {name} thread of the transform pipeline panicked"
                    )));
                }
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        let stats =
            stats.ok_or_else(|| Error::Internal("the digest thread reported nothing".into()))?;
        Ok(PipelineSummary {
            input_bytes: stats.input_bytes,
            output_bytes,
            digest: stats.digest,
        })
    }
}

/// Starts the stage threads of `spec`.
pub fn start(spec: &TransformSpec) -> Result<(PipelineInput, PipelineOutput)> {
    start_at(spec, None)
}

/// Where a pipeline continues an object: `offset` input bytes are already
/// stored (unchanged: only a pipeline that does not change bytes can
/// continue), and `hasher` has digested them.
#[derive(Debug)]
pub struct Continue {
    /// Bytes already stored.
    pub offset: u64,
    /// The digest state after them.
    pub hasher: Hasher,
}

/// [`start`], continuing an object (see [`Continue`]): the summary then
/// counts and digests the kept bytes too.
pub fn start_at(
    spec: &TransformSpec,
    resume: Option<Continue>,
) -> Result<(PipelineInput, PipelineOutput)> {
    if resume.is_some() && spec.changes_bytes() {
        return Err(Error::Internal(
            "only a pipeline that stores bytes unchanged can continue an object".into(),
        ));
    }
    let chunk = spec.chunk_size.max(1 << 16);
    let depth = spec.queue_depth.max(1);
    let (in_tx, mut in_rx) = mpsc::channel::<Vec<u8>>(depth);
    let (out_tx, out_rx) = mpsc::channel::<Vec<u8>>(depth);
    let mut threads: Vec<(&'static str, JoinHandle<Result<Option<Stats>>>)> = Vec::new();
    let pool = Pool::new(chunk, 2 * depth + 4 * spec.workers.max(1) + 4);
    let spawn = |name: &'static str,
                 f: Box<dyn FnOnce() -> Result<Option<Stats>> + Send>|
     -> Result<(&'static str, JoinHandle<Result<Option<Stats>>>)> {
        std::thread::Builder::new()
            .name(format!("hsdk-{name}"))
            .spawn(f)
            .map(|h| (name, h))
            .map_err(|e| Error::Internal(format!("cannot start the {name} thread: {e}")))
    };

    // Where the digest thread sends chunks, and where the last stage reads them.
    let mut to_workers: Vec<SyncSender<Vec<u8>>> = Vec::new();
    let mut from_workers: Vec<Receiver<Vec<u8>>> = Vec::new();
    if let Some(c) = spec.compression {
        for _ in 0..spec.workers.max(1) {
            let mut encoder = c.frame_encoder()?;
            let (wtx, wrx) = sync_channel::<Vec<u8>>(2);
            let (ftx, frx) = sync_channel::<Vec<u8>>(1);
            to_workers.push(wtx);
            from_workers.push(frx);
            let pool = pool.clone();
            threads.push(spawn(
                "compress",
                Box::new(move || {
                    while let Ok(data) = wrx.recv() {
                        let mut frame = pool.get();
                        encoder.encode(&data, &mut frame)?;
                        pool.put(data);
                        if ftx.send(frame).is_err() {
                            break; // downstream stopped; its error tells why
                        }
                    }
                    Ok(None)
                }),
            )?);
        }
    }

    // The stage after the digest: compression workers, or a direct link.
    let (direct_tx, direct_rx) = if to_workers.is_empty() && spec.encryption.is_some() {
        let (t, r) = sync_channel::<Vec<u8>>(1);
        (Some(t), Some(r))
    } else {
        (None, None)
    };
    let tail_needed = !from_workers.is_empty() || spec.encryption.is_some();
    // Unchanged chunks: the digest state before each goes with it. (At most
    // one more than the output queue holds is waiting.)
    let (mut marks_tx, marks_rx) = match (tail_needed, spec.digest) {
        (false, Some(_)) => {
            let (t, r) = std::sync::mpsc::channel::<Hasher>();
            (Some(t), Some(r))
        }
        _ => (None, None),
    };

    // `closed`: the input was closed, not dropped. `ended`: the digest thread
    // saw that close, so the tail may finish the output (an abandoned input
    // must not leave output that looks complete).
    let closed = Arc::new(AtomicBool::new(false));
    let ended = Arc::new(AtomicBool::new(false));

    // The digest thread.
    {
        let closed = closed.clone();
        let ended = ended.clone();
        let (start_n, mut hasher) = match resume {
            Some(c) => (c.offset, Some(c.hasher)),
            None => (0, spec.digest.map(Hasher::new)),
        };
        let out_tx = (!tail_needed).then(|| out_tx.clone());
        let marks_tx = marks_tx.take();
        let to_workers = to_workers;
        threads.push(spawn(
            "digest",
            Box::new(move || {
                let mut n: u64 = start_n;
                let mut next = 0usize;
                while let Some(data) = in_rx.blocking_recv() {
                    n += data.len() as u64;
                    if let Some(h) = hasher.as_mut() {
                        if let Some(m) = &marks_tx {
                            let _ = m.send(h.clone());
                        }
                        h.update(&data);
                    }
                    let sent = if !to_workers.is_empty() {
                        let ok = to_workers[next].send(data).is_ok();
                        next = (next + 1) % to_workers.len();
                        ok
                    } else if let Some(t) = &direct_tx {
                        t.send(data).is_ok()
                    } else if let Some(t) = &out_tx {
                        t.blocking_send(data).is_ok()
                    } else {
                        true
                    };
                    if !sent {
                        return Ok(None); // downstream stopped; its error tells why
                    }
                }
                if !closed.load(Ordering::SeqCst) {
                    return Err(Error::Cancelled);
                }
                // An empty input still gives one (empty) compression frame.
                if n == 0 && !to_workers.is_empty() {
                    let _ = to_workers[0].send(Vec::new());
                }
                ended.store(true, Ordering::SeqCst);
                Ok(Some(Stats {
                    input_bytes: n,
                    digest: hasher.map(Hasher::finish_hex),
                }))
            }),
        )?);
    }

    // The tail thread: collect frames in order, encrypt, send out.
    if tail_needed {
        let ended = ended.clone();
        let key = spec.encryption.clone();
        let out_tx = out_tx.clone();
        let pool = pool.clone();
        threads.push(spawn(
            "encrypt",
            Box::new(move || {
                let sender = ChunkSender::new(out_tx, chunk, pool.clone());
                let mut tail = match &key {
                    Some(k) => Tail::Encrypt(Box::new(EncryptWriter::new(sender, k)?)),
                    None => Tail::Plain(sender),
                };
                let mut next = 0usize;
                loop {
                    let item = if let Some(r) = &direct_rx {
                        r.recv().ok()
                    } else {
                        let got = from_workers[next].recv().ok();
                        next = (next + 1) % from_workers.len();
                        got
                    };
                    let Some(data) = item else {
                        if !ended.load(Ordering::SeqCst) {
                            return Ok(None); // input abandoned: leave the output unfinished
                        }
                        break;
                    };
                    let written = match &mut tail {
                        Tail::Encrypt(e) => {
                            let r = std::io::Write::write_all(e.as_mut(), &data);
                            pool.put(data);
                            r
                        }
                        Tail::Plain(s) => s.push(data),
                    };
                    if written.is_err() {
                        return Ok(None); // output dropped; the consumer knows why
                    }
                }
                let mut sender = match tail {
                    Tail::Encrypt(e) => match e.finish() {
                        Ok(s) => s,
                        Err(_) => return Ok(None),
                    },
                    Tail::Plain(s) => s,
                };
                let _ = sender.flush_all();
                Ok(None)
            }),
        )?);
    }
    drop(out_tx);
    Ok((
        PipelineInput {
            tx: Some(in_tx),
            closed,
            buf: pool.get(),
            chunk,
            pool: pool.clone(),
        },
        PipelineOutput {
            rx: out_rx,
            pool,
            output_bytes: 0,
            marks: marks_rx,
            mark: None,
            threads,
        },
    ))
}

/// The last stage's writer.
enum Tail {
    Plain(ChunkSender),
    Encrypt(Box<EncryptWriter<ChunkSender>>),
}

/// Batches small writes (the encryption header) and passes whole buffers on.
struct ChunkSender {
    tx: mpsc::Sender<Vec<u8>>,
    buf: Vec<u8>,
    chunk: usize,
    pool: Pool,
}

impl ChunkSender {
    fn new(tx: mpsc::Sender<Vec<u8>>, chunk: usize, pool: Pool) -> Self {
        ChunkSender {
            tx,
            buf: Vec::new(),
            chunk,
            pool,
        }
    }

    /// Sends `data` whole (after anything batched).
    fn push(&mut self, data: Vec<u8>) -> std::io::Result<()> {
        self.flush_all()?;
        self.tx.blocking_send(data).map_err(|_| stopped())
    }

    fn flush_all(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let b = std::mem::take(&mut self.buf);
        self.tx.blocking_send(b).map_err(|_| stopped())
    }
}

impl std::io::Write for ChunkSender {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.buf.is_empty() && data.len() >= self.chunk / 2 {
            let mut b = self.pool.get();
            b.extend_from_slice(data);
            self.push(b)?;
        } else {
            self.buf.extend_from_slice(data);
            if self.buf.len() >= self.chunk {
                self.flush_all()?;
            }
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Runs `input` through the transforms of `spec` as an async stream adapter:
/// the returned stream yields the output bytes in order, then, if a stage
/// failed, that error. The summary (digest, sizes) goes to `done` when the
/// output ends.
pub fn transform_stream<S>(
    input: S,
    spec: &TransformSpec,
    done: Option<tokio::sync::oneshot::Sender<PipelineSummary>>,
) -> Result<impl Stream<Item = Result<Bytes>> + Send + 'static>
where
    S: Stream<Item = Result<Bytes>> + Send + 'static,
{
    let (mut pin, pout) = start(spec)?;
    let (err_tx, err_rx) = tokio::sync::oneshot::channel::<Error>();
    tokio::spawn(async move {
        let mut input = std::pin::pin!(input);
        while let Some(item) = input.next().await {
            match item {
                Ok(b) => {
                    if pin.write(&b).await.is_err() {
                        return; // a stage failed; finish() reports it
                    }
                }
                Err(e) => {
                    let _ = err_tx.send(e);
                    return; // dropping the input without close ends the stages
                }
            }
        }
        let _ = pin.close().await;
    });
    struct State {
        out: Option<PipelineOutput>,
        err_rx: Option<tokio::sync::oneshot::Receiver<Error>>,
        done: Option<tokio::sync::oneshot::Sender<PipelineSummary>>,
        output_bytes: u64,
    }
    let state = State {
        out: Some(pout),
        err_rx: Some(err_rx),
        done,
        output_bytes: 0,
    };
    Ok(futures_util::stream::unfold(state, |mut st| async move {
        let out = st.out.as_mut()?;
        if let Some(buf) = out.recv().await {
            st.output_bytes += buf.len() as u64;
            return Some((Ok(Bytes::from(buf)), st));
        }
        let out = st.out.take()?;
        // The input's own error comes first: it is why the stages stopped.
        if let Some(rx) = st.err_rx.take() {
            if let Ok(e) = rx.await {
                return Some((Err(e), st));
            }
        }
        match out.finish().await {
            Ok(mut summary) => {
                summary.output_bytes = st.output_bytes;
                if let Some(d) = st.done.take() {
                    let _ = d.send(summary);
                }
                None
            }
            Err(e) => Some((Err(e), st)),
        }
    }))
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;
    use crate::transforms::compress::decompress_reader;
    use crate::transforms::encrypt::DecryptReader;

    fn key() -> KeySource {
        KeySource::Key(zeroize::Zeroizing::new([7u8; 32]))
    }

    fn sample(len: usize) -> Vec<u8> {
        let mut x: u64 = 0x9E37_79B9;
        (0..len)
            .map(|i| {
                if (i / 5000) % 3 == 0 {
                    0
                } else {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x % 16) as u8
                }
            })
            .collect()
    }

    /// Runs `data` through `spec` from a thread, returns (output, summary).
    fn run(spec: &TransformSpec, data: &[u8]) -> (Vec<u8>, PipelineSummary) {
        let (mut input, mut output) = start(spec).unwrap();
        let data = data.to_vec();
        let feeder = std::thread::spawn(move || {
            for part in data.chunks(100_003) {
                input.write_all(part).unwrap();
            }
            input.close_blocking().unwrap();
        });
        let mut out = Vec::new();
        while let Some(b) = output.blocking_recv() {
            out.extend_from_slice(&b);
        }
        feeder.join().unwrap();
        let summary = output.finish_blocking().unwrap();
        (out, summary)
    }

    fn restore(bytes: &[u8], encrypted: bool) -> Vec<u8> {
        let mut back = Vec::new();
        let plain: Box<dyn Read + Send> = if encrypted {
            Box::new(DecryptReader::new(bytes, &key()).unwrap())
        } else {
            Box::new(bytes)
        };
        decompress_reader(plain)
            .unwrap()
            .read_to_end(&mut back)
            .unwrap();
        back
    }

    #[test]
    fn every_combination_round_trips_in_order() {
        use sha2::Digest;
        for len in [0usize, 1, 65_536, 1_000_000] {
            let data = sample(len);
            let want = hypersdk_formats::manifest::to_hex(&sha2::Sha256::digest(&data));
            for compression in [None, Some(Compression::ZSTD), Some(Compression::GZIP)] {
                for encrypted in [false, true] {
                    for workers in [1, 3] {
                        let spec = TransformSpec {
                            compression,
                            encryption: encrypted.then(key),
                            chunk_size: 65_536,
                            queue_depth: 2,
                            workers,
                            ..Default::default()
                        };
                        let (out, summary) = run(&spec, &data);
                        let what = format!("len {len} {compression:?} enc {encrypted} w {workers}");
                        assert_eq!(summary.input_bytes, len as u64, "{what}");
                        assert_eq!(summary.output_bytes, out.len() as u64, "{what}");
                        assert_eq!(summary.digest.as_deref(), Some(want.as_str()), "{what}");
                        assert_eq!(restore(&out, encrypted), data, "{what}");
                    }
                }
            }
        }
    }

    #[test]
    fn dropped_input_is_an_error_and_leaves_no_finished_output() {
        let spec = TransformSpec {
            compression: Some(Compression::ZSTD),
            encryption: Some(key()),
            chunk_size: 65_536,
            ..Default::default()
        };
        let (mut input, mut output) = start(&spec).unwrap();
        input.write_all(&sample(200_000)).unwrap();
        drop(input);
        let mut out = Vec::new();
        while let Some(b) = output.blocking_recv() {
            out.extend_from_slice(&b);
        }
        assert!(matches!(output.finish_blocking(), Err(Error::Cancelled)));
        // What did come out does not decrypt as a complete file.
        let complete = DecryptReader::new(&out[..], &key())
            .map(|mut r| r.read_to_end(&mut Vec::new()).is_ok())
            .unwrap_or(false);
        assert!(!complete);
    }

    #[test]
    fn a_dropped_output_stops_the_writer() {
        let spec = TransformSpec {
            compression: Some(Compression::ZSTD),
            chunk_size: 65_536,
            ..Default::default()
        };
        let (mut input, output) = start(&spec).unwrap();
        drop(output);
        let data = sample(65_536);
        let mut failed = false;
        for _ in 0..64 {
            if input.write_all(&data).is_err() {
                failed = true;
                break;
            }
        }
        assert!(failed, "writes kept succeeding with nobody reading");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stream_adapter_round_trips_and_reports_errors() {
        let data = sample(300_000);
        let spec = TransformSpec {
            compression: Some(Compression::ZSTD),
            encryption: Some(key()),
            chunk_size: 65_536,
            ..Default::default()
        };
        let parts: Vec<Result<Bytes>> = data
            .chunks(10_000)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let out =
            transform_stream(futures_util::stream::iter(parts), &spec, Some(done_tx)).unwrap();
        let chunks: Vec<Result<Bytes>> = out.collect().await;
        let bytes: Vec<u8> = chunks
            .into_iter()
            .flat_map(|c| c.unwrap().to_vec())
            .collect();
        assert_eq!(restore(&bytes, true), data);
        let summary = done_rx.await.unwrap();
        assert_eq!(summary.input_bytes, data.len() as u64);
        assert_eq!(summary.output_bytes, bytes.len() as u64);

        // An input error comes out of the stream, after any output.
        let parts = vec![
            Ok(Bytes::from(vec![1u8; 100_000])),
            Err(Error::Internal("source went away".into())),
        ];
        let out = transform_stream(futures_util::stream::iter(parts), &spec, None).unwrap();
        let items: Vec<Result<Bytes>> = out.collect().await;
        let last = items.last().unwrap();
        assert!(matches!(last, Err(Error::Internal(m)) if m.contains("went away")));
    }

    #[test]
    fn memory_bound_is_stated() {
        let spec = TransformSpec {
            compression: Some(Compression::ZSTD),
            workers: 2,
            ..Default::default()
        };
        assert_eq!(spec.memory_bound(), (1 << 20) * 18);
        assert_eq!(spec.extension(), ".zst");
    }
}
