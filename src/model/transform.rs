//! Transformations: a subscription's jq program (`"transform"`), compiled with the jaq
//! crates and run on the event document before it is written in the subscription's format.
//!
//! The program must give exactly one JSON value per event; that value becomes the
//! document the format writes (for an event that arrived as a CloudEvent, the program
//! sees the whole structured CloudEvent and gives the one to send). Running it here is
//! synchronous and unbounded in time and stack: jaq has no fuel or step counter, so the
//! server runs programs in worker processes under a deadline ([`crate::sinks::transform`]).

use std::sync::{Arc, OnceLock};

use jaq_core::load::{Arena, File, Loader};
use jaq_core::{Compiler, Ctx, Vars, data, unwrap_valr};
use jaq_json::Val;

/// Longest program accepted.
pub const MAX_SOURCE_BYTES: usize = 8 * 1024;

type Program = jaq_core::Filter<data::JustLut<Val>>;

/// A jq program with its source. Cheap to clone. Compiled at creation
/// ([`Transform::compile`]); one read back from the store compiles at its first run.
#[derive(Clone)]
pub struct Transform(Arc<Inner>);

struct Inner {
    source: String,
    program: OnceLock<Result<Program, TransformError>>,
}

/// Why a program does not compile, or failed on an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum TransformError {
    #[error("the transform does not compile: {0}")]
    Compile(String),
    #[error("the event document is not JSON: {0}")]
    Input(String),
    #[error("the transform failed: {0}")]
    Failed(String),
    #[error("the transform gave no output (it must give exactly one JSON value)")]
    NoOutput,
    #[error("the transform gave more than one output (it must give exactly one JSON value)")]
    ManyOutputs,
    #[error("the transform's output is not JSON: {0}")]
    NotJson(String),
    #[error("the transform's output has more than {max} bytes")]
    TooLarge { max: usize },
    #[error("the transform ran longer than {millis} ms")]
    TimedOut { millis: u64 },
    #[error("the transform's process ended while it ran (a recursion too deep, or out of memory)")]
    Crashed,
}

impl Transform {
    /// Compiles `source`, or gives the compiler's message.
    pub fn compile(source: &str) -> Result<Transform, TransformError> {
        if source.len() > MAX_SOURCE_BYTES {
            return Err(TransformError::Compile(format!(
                "a transform may have at most {MAX_SOURCE_BYTES} bytes, this one has {}",
                source.len()
            )));
        }
        let program = compile(source)?;
        Ok(Transform(Arc::new(Inner {
            source: source.to_owned(),
            program: OnceLock::from(Ok(program)),
        })))
    }

    /// A program as stored: compiled when first run.
    pub fn stored(source: String) -> Transform {
        Transform(Arc::new(Inner {
            source,
            program: OnceLock::new(),
        }))
    }

    pub fn source(&self) -> &str {
        &self.0.source
    }

    /// Runs the program on `document` (JSON text); the output as compact JSON text of at
    /// most `max_output` bytes.
    pub fn run(&self, document: &[u8], max_output: usize) -> Result<String, TransformError> {
        let program = self
            .0
            .program
            .get_or_init(|| compile(&self.0.source))
            .as_ref()
            .map_err(Clone::clone)?;
        let input = jaq_json::read::parse_single(document)
            .map_err(|error| TransformError::Input(error.to_string()))?;
        let ctx = Ctx::<data::JustLut<Val>>::new(&program.lut, Vars::new([]));
        let mut outputs = program.id.run((ctx, input)).map(unwrap_valr);
        let output = match outputs.next() {
            None => return Err(TransformError::NoOutput),
            Some(Err(error)) => return Err(TransformError::Failed(error.to_string())),
            Some(Ok(output)) => output,
        };
        if outputs.next().is_some() {
            return Err(TransformError::ManyOutputs);
        }
        let text = output.to_string();
        if text.len() > max_output {
            return Err(TransformError::TooLarge { max: max_output });
        }
        // jaq values include what JSON has not (NaN, byte strings): the receiver gets JSON.
        serde_json::from_str::<serde::de::IgnoredAny>(&text)
            .map_err(|error| TransformError::NotJson(error.to_string()))?;
        Ok(text)
    }
}

impl PartialEq for Transform {
    fn eq(&self, other: &Transform) -> bool {
        self.0.source == other.0.source
    }
}

impl std::fmt::Debug for Transform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Transform").field(&self.0.source).finish()
    }
}

fn compile(code: &str) -> Result<Program, TransformError> {
    let defs = jaq_core::defs()
        .chain(jaq_std::defs())
        .chain(jaq_json::defs());
    let funs = jaq_core::funs()
        .chain(jaq_std::funs())
        .chain(jaq_json::funs());
    let loader = Loader::new(defs);
    let arena = Arena::default();
    let modules = loader
        .load(&arena, File { code, path: () })
        .map_err(|errors| {
            let messages = errors.into_iter().flat_map(|(_, error)| match error {
                jaq_core::load::Error::Io(errors) => errors
                    .into_iter()
                    .map(|(path, message)| format!("cannot load {path}: {message}"))
                    .collect::<Vec<_>>(),
                jaq_core::load::Error::Lex(errors) => errors
                    .into_iter()
                    .map(|(expect, found)| {
                        let expected = match expect {
                            jaq_core::load::lex::Expect::Delim(open) => {
                                format!("a closing delimiter for {open}")
                            }
                            expect => expect.as_str().to_owned(),
                        };
                        format!("expected {expected} {}", at(code, found))
                    })
                    .collect(),
                jaq_core::load::Error::Parse(errors) => errors
                    .into_iter()
                    .map(|(expect, found)| {
                        format!("expected {} {}", expect.as_str(), at(code, found))
                    })
                    .collect(),
            });
            TransformError::Compile(messages.collect::<Vec<_>>().join("; "))
        })?;
    Compiler::default()
        .with_funs(funs)
        .compile(modules)
        .map_err(|errors| {
            let messages = errors.into_iter().flat_map(|(_, errors)| {
                errors.into_iter().map(|(name, undefined)| {
                    format!("undefined {} {name} {}", undefined.as_str(), at(code, name))
                })
            });
            TransformError::Compile(messages.collect::<Vec<_>>().join("; "))
        })
}

/// Where `found` (a slice of `code`) is, for a message: `at offset 4 ("foo")`.
fn at(code: &str, found: &str) -> String {
    let offset = (found.as_ptr() as usize).wrapping_sub(code.as_ptr() as usize);
    let snippet: String = found.chars().take(20).collect();
    match offset <= code.len() {
        true if snippet.is_empty() => format!("at the end (offset {offset})"),
        true => format!("at offset {offset} ({snippet:?})"),
        false => format!("({snippet:?})"),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn run(program: &str, document: Value) -> Result<Value, TransformError> {
        let transform = Transform::compile(program).unwrap();
        let text = transform.run(document.to_string().as_bytes(), 1 << 20)?;
        Ok(serde_json::from_str(&text).unwrap())
    }

    #[test]
    fn picks_renames_drops_and_adds_members() {
        let event = json!({"assetId": 7, "eventName": "asset-updated", "userToken": "secret"});
        assert_eq!(
            run("{asset: .assetId, event: .eventName}", event.clone()),
            Ok(json!({"asset": 7, "event": "asset-updated"}))
        );
        assert_eq!(
            run("del(.userToken) | .source = \"reelay\"", event),
            Ok(json!({"assetId": 7, "eventName": "asset-updated", "source": "reelay"}))
        );
    }

    #[test]
    fn compile_errors_carry_the_compilers_message() {
        for (program, message) in [
            ("{asset: .assetId", "expected"),
            (".a | nosuchfunction", "undefined filter nosuchfunction"),
            ("$x", "undefined variable"),
            ("", "expected term"),
        ] {
            match Transform::compile(program) {
                Err(TransformError::Compile(text)) => {
                    assert!(text.contains(message), "{program:?}: {text}")
                }
                other => panic!("{program:?}: {other:?}"),
            }
        }
        assert!(Transform::compile(&".".repeat(MAX_SOURCE_BYTES + 1)).is_err());
    }

    #[test]
    fn failures_at_run_time_are_errors() {
        assert!(matches!(
            run(".a + 1", json!({"a": "text"})),
            Err(TransformError::Failed(_))
        ));
        assert!(matches!(
            run("error(\"no\")", json!({})),
            Err(TransformError::Failed(message)) if message.contains("no")
        ));
        assert_eq!(run("empty", json!({})), Err(TransformError::NoOutput));
        assert_eq!(
            run(".[]", json!({"a": 1, "b": 2})),
            Err(TransformError::ManyOutputs)
        );
        assert!(matches!(
            run("nan", json!({})),
            Err(TransformError::NotJson(_))
        ));
    }

    #[test]
    fn output_is_bounded() {
        let transform = Transform::compile("[range(1000)]").unwrap();
        assert_eq!(
            transform.run(b"{}", 100),
            Err(TransformError::TooLarge { max: 100 })
        );
        assert!(transform.run(b"{}", 10_000).is_ok());
    }

    #[test]
    fn a_stored_program_compiles_when_first_run() {
        let transform = Transform::stored(".a".to_owned());
        assert_eq!(transform.run(br#"{"a": [1]}"#, 100).as_deref(), Ok("[1]"));
        let broken = Transform::stored("{".to_owned());
        assert!(matches!(
            broken.run(b"{}", 100),
            Err(TransformError::Compile(_))
        ));
        assert_eq!(transform, Transform::stored(".a".to_owned()));
    }
}
