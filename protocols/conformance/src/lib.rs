//! The CloudEvents conformance vectors (`data/`, from cloudevents/conformance, Apache-2.0) and
//! their loader, shared by every binding's tests.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

/// The files holding the vectors: two v1.0 sets and two legacy v0.3 sets.
pub const FILES: [&str; 4] = [
    "v1.yaml",
    "v1.0/v1_minimum.yaml",
    "v03.yaml",
    "v0.3/v03_minimum.yaml",
];

/// One conformance document: one event.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Doc {
    /// `binary` or `structured` (absent: binary).
    pub mode: Option<String>,
    /// Context attributes, with the extensions nested under `Extensions`.
    pub context_attributes: BTreeMap<String, serde_yaml::Value>,
    /// Protocol headers that are not CloudEvents attributes.
    #[serde(default)]
    pub transport_extensions: BTreeMap<String, String>,
    pub data: Option<String>,
}

impl Doc {
    /// The attributes (extensions included) as canonical strings, in document order.
    pub fn attributes(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (k, v) in &self.context_attributes {
            if k == "Extensions" {
                for (ek, ev) in v.as_mapping().into_iter().flatten() {
                    out.push((scalar(ek), scalar(ev)));
                }
            } else {
                out.push((k.clone(), scalar(v)));
            }
        }
        out
    }

    pub fn is_structured(&self) -> bool {
        self.mode.as_deref() == Some("structured")
    }
}

/// A YAML scalar as the conformance tool reads it: trimmed text.
pub fn scalar(v: &serde_yaml::Value) -> String {
    match v {
        serde_yaml::Value::String(s) => s.trim().to_owned(),
        serde_yaml::Value::Number(n) => n.to_string(),
        serde_yaml::Value::Bool(b) => b.to_string(),
        other => panic!("unexpected {other:?}"),
    }
}

/// The documents of one vector file (a multi-document YAML stream).
pub fn load(file: &str) -> Vec<Doc> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("data")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| Doc::deserialize(d).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .collect()
}

/// Every document of every file, with its file name.
pub fn all() -> Vec<(&'static str, Doc)> {
    FILES
        .iter()
        .flat_map(|f| load(f).into_iter().map(move |d| (*f, d)))
        .collect()
}
