//! An object store that injects one fault into a chosen write and logs every write, for the
//! protocol's fault tests: a failure before or after the real write (the ambiguous case), a
//! lost reply the client retries, a pause (a stopped VM, a partitioned node), and a store that
//! ignores conditional creates.

use std::fmt;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::stream::{BoxStream, StreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    ObjectStoreExt, PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};

/// What happens to the chosen write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Fails without writing (a refused connection).
    FailBefore,
    /// Writes, then fails (a timeout or a 5xx after the write succeeded).
    FailAfter,
    /// Writes, loses the reply and sends the request again, as a client's retry does: a
    /// conditional create then meets its own object.
    RetryAfterSuccess,
    /// Waits until [`FaultyStore::release`], then writes.
    Pause,
    /// Answers after this long (a throttled or distant store).
    Slow(Duration),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteKind {
    /// A put that must not overwrite (`PutMode::Create`).
    Create,
    Put,
    Delete,
}

/// One write the store was asked for.
#[derive(Debug, Clone)]
pub struct Write {
    /// Position among this store's writes, from 0.
    pub index: usize,
    pub kind: WriteKind,
    pub path: String,
    /// The bytes of a put.
    pub bytes: Vec<u8>,
    /// Whether the call returned success.
    pub ok: bool,
    /// The fault injected into it, if any.
    pub fault: Option<Fault>,
}

type Trigger = Box<dyn Fn(&Write) -> bool + Send + Sync>;
type ListTrigger = Box<dyn Fn(&[Write]) -> bool + Send + Sync>;

struct Shared {
    inner: Arc<dyn ObjectStore>,
    /// Fires once, at the first write it matches.
    trigger: Mutex<Option<(Trigger, Fault)>>,
    writes: Mutex<Vec<Write>>,
    /// Fails one listing: the first for which it holds, given the writes so far.
    list_trigger: Mutex<Option<ListTrigger>>,
    /// (paused now, released)
    gate: Mutex<(bool, bool)>,
    gate_changed: Condvar,
    ignore_create: bool,
}

/// See the module doc. Clones share the log and the fault.
#[derive(Clone)]
pub struct FaultyStore(Arc<Shared>);

impl FaultyStore {
    /// Passes every call through, logging writes.
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        Self::build(inner, None, false)
    }

    /// Injects `fault` into the first write `trigger` matches (seen before it runs: `ok` is
    /// false and `bytes` empty at that point).
    pub fn with_fault(
        inner: Arc<dyn ObjectStore>,
        fault: Fault,
        trigger: impl Fn(&Write) -> bool + Send + Sync + 'static,
    ) -> Self {
        Self::build(inner, Some((Box::new(trigger), fault)), false)
    }

    /// A store that overwrites where a conditional create must fail (what some
    /// S3-compatible servers do).
    pub fn ignoring_creates(inner: Arc<dyn ObjectStore>) -> Self {
        Self::build(inner, None, true)
    }

    fn build(inner: Arc<dyn ObjectStore>, trigger: Option<(Trigger, Fault)>, ignore: bool) -> Self {
        FaultyStore(Arc::new(Shared {
            inner,
            trigger: Mutex::new(trigger),
            writes: Mutex::new(Vec::new()),
            list_trigger: Mutex::new(None),
            gate: Mutex::new((false, false)),
            gate_changed: Condvar::new(),
            ignore_create: ignore,
        }))
    }

    /// Fails the first listing for which `trigger` holds, given the writes so far.
    pub fn failing_list(self, trigger: impl Fn(&[Write]) -> bool + Send + Sync + 'static) -> Self {
        *self.0.list_trigger.lock().unwrap() = Some(Box::new(trigger));
        self
    }

    /// Every write so far, in the order they were asked for.
    pub fn writes(&self) -> Vec<Write> {
        self.0.writes.lock().unwrap().clone()
    }

    /// Waits until a write is held by [`Fault::Pause`]; false after `timeout`.
    pub fn wait_paused(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut gate = self.0.gate.lock().unwrap();
        while !gate.0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            gate = self.0.gate_changed.wait_timeout(gate, left).unwrap().0;
        }
        true
    }

    /// Lets a paused write go on.
    pub fn release(&self) {
        let mut gate = self.0.gate.lock().unwrap();
        gate.1 = true;
        self.0.gate_changed.notify_all();
    }
}

impl Shared {
    /// Logs a write about to run; the fault to inject into it, if it is the chosen one.
    fn begin(&self, kind: WriteKind, path: &Path) -> (usize, Option<Fault>) {
        let (index, fault) = {
            let mut writes = self.writes.lock().unwrap();
            let mut write = Write {
                index: writes.len(),
                kind,
                path: path.to_string(),
                bytes: Vec::new(),
                ok: false,
                fault: None,
            };
            let mut trigger = self.trigger.lock().unwrap();
            if trigger.as_ref().is_some_and(|(matches, _)| matches(&write)) {
                write.fault = trigger.take().map(|(_, fault)| fault);
            }
            let chosen = (write.index, write.fault);
            writes.push(write);
            chosen
        };
        if let Some(Fault::Slow(delay)) = fault {
            std::thread::sleep(delay);
        }
        if fault == Some(Fault::Pause) {
            // Held here, on the caller's thread: the whole instance stops, as a paused VM.
            let mut gate = self.gate.lock().unwrap();
            gate.0 = true;
            self.gate_changed.notify_all();
            while !gate.1 {
                gate = self.gate_changed.wait(gate).unwrap();
            }
        }
        (index, fault)
    }

    fn finish(&self, index: usize, ok: bool, bytes: Vec<u8>) {
        let mut writes = self.writes.lock().unwrap();
        writes[index].ok = ok;
        writes[index].bytes = bytes;
    }
}

fn injected() -> object_store::Error {
    object_store::Error::Generic {
        store: "faulty",
        source: "injected fault".into(),
    }
}

impl fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultyStore({})", self.0.inner)
    }
}

impl fmt::Debug for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultyStore({:?})", self.0.inner)
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let shared = &self.0;
        let kind = match opts.mode {
            PutMode::Create => WriteKind::Create,
            _ => WriteKind::Put,
        };
        let (index, fault) = shared.begin(kind, location);
        let bytes: Vec<u8> = payload.iter().flat_map(|b| b.iter().copied()).collect();
        if fault == Some(Fault::FailBefore) {
            shared.finish(index, false, bytes);
            return Err(injected());
        }
        let opts = if shared.ignore_create {
            PutOptions::default()
        } else {
            opts
        };
        let mut result = shared
            .inner
            .put_opts(location, payload.clone(), opts.clone())
            .await;
        if result.is_ok() {
            match fault {
                Some(Fault::FailAfter) => result = Err(injected()),
                Some(Fault::RetryAfterSuccess) => {
                    result = shared.inner.put_opts(location, payload, opts).await
                }
                _ => {}
            }
        }
        shared.finish(index, result.is_ok(), bytes);
        result
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.0.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.0.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        let shared = self.0.clone();
        locations
            .then(move |location| {
                let shared = shared.clone();
                async move {
                    let location = location?;
                    let (index, fault) = shared.begin(WriteKind::Delete, &location);
                    let result = match fault {
                        Some(Fault::FailBefore) => Err(injected()),
                        _ => shared.inner.delete(&location).await,
                    };
                    let result = match (result, fault) {
                        (Ok(()), Some(Fault::FailAfter)) => Err(injected()),
                        (result, _) => result,
                    };
                    shared.finish(index, result.is_ok(), Vec::new());
                    result.map(|()| location)
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        let writes = self.0.writes.lock().unwrap();
        let mut trigger = self.0.list_trigger.lock().unwrap();
        if trigger.as_ref().is_some_and(|fails| fails(&writes)) {
            trigger.take();
            return futures::stream::once(async { Err(injected()) }).boxed();
        }
        self.0.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.0.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.0.inner.copy_opts(from, to, options).await
    }
}
