//! Runs a subscription's transform ([`crate::model::Transform`]) on an event before its
//! payload is written, within bounds: at most [`MAX_OUTPUT`] bytes of output, and
//! [`TIME_LIMIT`] per event.
//!
//! jaq has no fuel or step counter and cannot be interrupted, and a program can recurse
//! until the stack overflows (which aborts a process) or build values until memory runs
//! out. So programs run in worker processes of their own (`reelay transform-worker`,
//! started from this executable, a few at a time, reused from one event to the next): the
//! deadline is enforced by killing the worker, and a program that crashes its worker
//! fails only its own delivery. The worker keeps the programs it compiled.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::Semaphore;

use crate::model::{StoredEvent, Transform, TransformError};

/// How long one run may take.
pub const TIME_LIMIT: Duration = Duration::from_millis(500);
/// The largest output, in bytes of JSON text.
pub const MAX_OUTPUT: usize = 1024 * 1024;
/// Programs running at once (one worker process each).
const MAX_WORKERS: usize = 4;
/// How long a new worker process may take to start (exec, load) before its first
/// request: outside [`TIME_LIMIT`], which is the program's own time, so a loaded
/// machine's slow process start does not fail a delivery.
const STARTUP_LIMIT: Duration = Duration::from_secs(10);
/// The byte a worker writes once it is ready for requests.
const READY: u8 = 0xA5;
/// The stack of the thread a worker runs programs on: jaq recurses as deep as the
/// program and the document nest (reserved, touched only as used).
const STACK_BYTES: usize = 32 * 1024 * 1024;
/// Programs a worker keeps compiled.
const CACHED_PROGRAMS: usize = 256;

/// The pool of worker processes; cheap to share.
pub struct Transformer {
    exe: Option<PathBuf>,
    idle: Mutex<Vec<Worker>>,
    permits: Semaphore,
}

struct Worker {
    _child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Default for Transformer {
    fn default() -> Transformer {
        Transformer::new()
    }
}

impl Transformer {
    /// Workers are this executable (`reelay transform-worker`).
    pub fn new() -> Transformer {
        Transformer {
            exe: std::env::current_exe().ok(),
            idle: Mutex::new(Vec::new()),
            permits: Semaphore::new(MAX_WORKERS),
        }
    }

    /// `event` with its document replaced by the program's output.
    pub async fn apply(
        &self,
        transform: &Transform,
        event: &Arc<StoredEvent>,
    ) -> Result<Arc<StoredEvent>, TransformError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| TransformError::Failed("shutting down".to_owned()))?;
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let mut worker = match idle {
            Some(worker) => worker,
            None => {
                let mut worker = self.spawn().map_err(|error| {
                    TransformError::Failed(format!("cannot start a transform worker: {error}"))
                })?;
                match tokio::time::timeout(STARTUP_LIMIT, worker.stdout.read_u8()).await {
                    Ok(Ok(READY)) => worker,
                    _ => {
                        return Err(TransformError::Failed(format!(
                            "a transform worker did not start within {STARTUP_LIMIT:?}"
                        )));
                    }
                }
            }
        };
        let request = encode(transform.source().as_bytes(), event.body.bytes());
        let run = async {
            worker.stdin.write_all(&request).await?;
            worker.stdin.flush().await?;
            let status = worker.stdout.read_u8().await?;
            let length = worker.stdout.read_u32().await? as usize;
            let mut answer = vec![0; length];
            worker.stdout.read_exact(&mut answer).await?;
            std::io::Result::Ok((status, answer))
        };
        // On a timeout or a crash the worker is dropped, which kills it.
        let (status, answer) = match tokio::time::timeout(TIME_LIMIT, run).await {
            Err(_) => {
                return Err(TransformError::TimedOut {
                    millis: TIME_LIMIT.as_millis() as u64,
                });
            }
            Ok(Err(_)) => return Err(TransformError::Crashed),
            Ok(Ok(answer)) => answer,
        };
        self.idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(worker);
        let text = String::from_utf8(answer)
            .map_err(|_| TransformError::Failed("the worker's answer is not UTF-8".into()))?;
        if status != 0 {
            return Err(serde_json::from_str(&text).unwrap_or(TransformError::Failed(text)));
        }
        Ok(Arc::new(StoredEvent {
            body: text.into(),
            ..StoredEvent::clone(event)
        }))
    }

    fn spawn(&self) -> std::io::Result<Worker> {
        let exe = self
            .exe
            .as_ref()
            .ok_or_else(|| std::io::Error::other("the executable's path is unknown"))?;
        let mut child = Command::new(exe)
            .arg("transform-worker")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| std::io::Error::other("no stdin"))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| std::io::Error::other("no stdout"))?;
        Ok(Worker {
            _child: child,
            stdin,
            stdout: BufReader::new(stdout),
        })
    }
}

/// A request: the program and the document, each with its length.
fn encode(program: &[u8], document: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + program.len() + document.len());
    for part in [program, document] {
        out.extend_from_slice(&(part.len() as u32).to_be_bytes());
        out.extend_from_slice(part);
    }
    out
}

/// `reelay transform-worker`: says it is ready ([`READY`]), then answers requests on
/// standard input until it closes. Each
/// answer is a status byte (0: the output follows; 1: a [`TransformError`] as JSON), a
/// length and the bytes. Programs run on a thread with a large stack; a program that
/// overflows even that aborts this process, and the server sees the delivery fail.
pub fn worker_main() -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(&[READY])?;
    stdout.flush()?;
    drop(stdout);
    let runner = std::thread::Builder::new()
        .name("transform".to_owned())
        .stack_size(STACK_BYTES)
        .spawn(|| serve(std::io::stdin().lock(), std::io::stdout().lock()))?;
    runner
        .join()
        .map_err(|_| std::io::Error::other("the transform thread panicked"))?
}

fn serve(mut input: impl Read, mut output: impl Write) -> std::io::Result<()> {
    let mut programs: HashMap<String, Transform> = HashMap::new();
    loop {
        let Some(program) = read_part(&mut input)? else {
            return Ok(());
        };
        let document = read_part(&mut input)?.unwrap_or_default();
        let program = String::from_utf8_lossy(&program).into_owned();
        if programs.len() >= CACHED_PROGRAMS && !programs.contains_key(&program) {
            programs.clear();
        }
        let transform = programs
            .entry(program.clone())
            .or_insert_with(|| Transform::stored(program));
        let (status, answer) = match transform.run(&document, MAX_OUTPUT) {
            Ok(text) => (0u8, text),
            Err(error) => (1, serde_json::to_string(&error).unwrap_or_default()),
        };
        output.write_all(&[status])?;
        output.write_all(&(answer.len() as u32).to_be_bytes())?;
        output.write_all(answer.as_bytes())?;
        output.flush()?;
    }
}

/// One length-prefixed part; `None` at the end of the input.
fn read_part(input: &mut impl Read) -> std::io::Result<Option<Vec<u8>>> {
    let mut length = [0; 4];
    match input.read_exact(&mut length) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(error) => return Err(error),
    }
    let mut part = vec![0; u32::from_be_bytes(length) as usize];
    input.read_exact(&mut part)?;
    Ok(Some(part))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answers(mut bytes: &[u8]) -> Vec<(u8, String)> {
        let mut answers = Vec::new();
        while let Some((&status, rest)) = bytes.split_first() {
            let length = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
            answers.push((
                status,
                String::from_utf8(rest[4..4 + length].to_vec()).unwrap(),
            ));
            bytes = &rest[4 + length..];
        }
        answers
    }

    #[test]
    fn a_worker_answers_each_request_in_turn() {
        let mut input = encode(b"{asset: .assetId}", br#"{"assetId": 7, "x": 1}"#);
        input.extend(encode(b"error(\"private\")", b"{}"));
        input.extend(encode(b"{asset", b"{}"));
        input.extend(encode(b"{asset: .assetId}", br#"{"assetId": 8}"#));
        let mut output = Vec::new();
        serve(&input[..], &mut output).unwrap();
        let answers = answers(&output);
        assert_eq!(answers.len(), 4);
        assert_eq!(answers[0], (0, r#"{"asset":7}"#.to_owned()));
        assert_eq!(answers[3], (0, r#"{"asset":8}"#.to_owned()));
        let failed: TransformError = serde_json::from_str(&answers[1].1).unwrap();
        assert!(matches!(failed, TransformError::Failed(message) if message.contains("private")));
        let broken: TransformError = serde_json::from_str(&answers[2].1).unwrap();
        assert!(matches!(broken, TransformError::Compile(_)));
    }
}
