//! Runs the CloudEvents CESQL v1 TCK (`tests/tck/*.yaml`) against the crate.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use ferry_cesql::{AttributeValue, Attributes, ErrorKind, Expression, Value};
use serde::Deserialize;

#[derive(Deserialize)]
struct Suite {
    name: String,
    tests: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Case {
    name: String,
    expression: String,
    result: Option<Expected>,
    error: Option<String>,
    event: Option<serde_yaml::Mapping>,
    event_overrides: Option<serde_yaml::Mapping>,
}

/// Order matters: YAML booleans first, then integers, then everything else as text.
#[derive(Deserialize, Debug, Clone, PartialEq)]
#[serde(untagged)]
enum Expected {
    Bool(bool),
    Int(i64),
    Str(String),
}

/// An event's attributes with their YAML-given types.
#[derive(Debug, Default)]
struct Event(BTreeMap<String, Attribute>);

#[derive(Debug, Clone)]
enum Attribute {
    String(String),
    Integer(i32),
    Boolean(bool),
}

impl Attributes for Event {
    fn attribute(&self, name: &str) -> Option<AttributeValue<'_>> {
        self.0.get(name).map(|value| match value {
            Attribute::String(s) => AttributeValue::String(s),
            Attribute::Integer(i) => AttributeValue::Integer(*i),
            Attribute::Boolean(b) => AttributeValue::Boolean(*b),
        })
    }
}

impl Event {
    fn required_only() -> Self {
        let mut event = Self::default();
        for (name, value) in [
            ("specversion", "1.0"),
            ("id", "tck-id"),
            ("source", "http://localhost/tck"),
            ("type", "io.cloudevents.tck"),
        ] {
            event
                .0
                .insert(name.to_owned(), Attribute::String(value.to_owned()));
        }
        event
    }

    fn merge(&mut self, mapping: &serde_yaml::Mapping) -> Result<(), String> {
        for (key, value) in mapping {
            let name = key
                .as_str()
                .ok_or_else(|| format!("non-string key {key:?}"))?;
            let attribute = match value {
                serde_yaml::Value::Bool(b) => Attribute::Boolean(*b),
                serde_yaml::Value::Number(n) => {
                    let n = n.as_i64().ok_or_else(|| format!("non-integer {n}"))?;
                    Attribute::Integer(i32::try_from(n).map_err(|e| e.to_string())?)
                }
                serde_yaml::Value::String(s) => Attribute::String(s.clone()),
                other => return Err(format!("unsupported attribute value {other:?}")),
            };
            self.0.insert(name.to_owned(), attribute);
        }
        Ok(())
    }
}

fn kind_name(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Parse => "parse",
        ErrorKind::Math => "math",
        ErrorKind::Cast => "cast",
        ErrorKind::MissingAttribute => "missingAttribute",
        ErrorKind::MissingFunction => "missingFunction",
        ErrorKind::FunctionEvaluation => "functionEvaluation",
        ErrorKind::Generic => "generic",
    }
}

fn as_expected(value: &Value<'_>) -> Expected {
    match value {
        Value::Boolean(b) => Expected::Bool(*b),
        Value::Integer(i) => Expected::Int(i64::from(*i)),
        Value::String(s) => Expected::Str(s.to_string()),
    }
}

/// Runs one case; `Err` describes what came out instead.
fn run(case: &Case) -> Result<(), String> {
    let expression = match Expression::parse(&case.expression) {
        Ok(expression) => expression,
        // The value of a parse failure is not checked (the TCK README's advice).
        Err(_) if case.error.as_deref() == Some("parse") => return Ok(()),
        Err(error) => return Err(format!("parse error: {error}")),
    };
    let mut event = match &case.event {
        Some(given) => {
            let mut event = Event::default();
            event.merge(given)?;
            event
        }
        None => Event::required_only(),
    };
    if let Some(overrides) = &case.event_overrides {
        event.merge(overrides)?;
    }
    let evaluation = expression.evaluate(&event);
    let got_value = as_expected(&evaluation.value);
    let got_error = evaluation.error.as_ref().map(|e| kind_name(e.kind));
    let value_ok = case.result.as_ref().is_none_or(|want| *want == got_value);
    if value_ok && got_error == case.error.as_deref() {
        Ok(())
    } else {
        Err(format!(
            "got {got_value:?} with error {:?}",
            evaluation.error.map(|e| e.to_string())
        ))
    }
}

#[test]
fn cesql_tck() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tck");
    let mut files: Vec<_> = fs::read_dir(&dir)
        .expect("tests/tck is readable")
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no TCK files in {}", dir.display());

    let (mut passed, mut failures) = (0usize, Vec::new());
    for path in &files {
        let file = path
            .file_name()
            .map_or_else(String::new, |f| f.to_string_lossy().into_owned());
        let text = fs::read_to_string(path).expect("TCK file is readable");
        let suite: Suite = serde_yaml::from_str(&text).expect("TCK file is valid YAML");
        let mut file_passed = 0;
        for case in &suite.tests {
            match run(case) {
                Ok(()) => file_passed += 1,
                Err(got) => failures.push(format!(
                    "{file} / {} / {}: expression {:?}, expected {:?} with error {:?}, {got}",
                    suite.name, case.name, case.expression, case.result, case.error
                )),
            }
        }
        println!("{file}: {file_passed}/{} passed", suite.tests.len());
        passed += file_passed;
    }
    for failure in &failures {
        println!("FAILED {failure}");
    }
    println!("{passed} passed, {} failed", failures.len());
    assert!(
        failures.is_empty(),
        "{} TCK cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
