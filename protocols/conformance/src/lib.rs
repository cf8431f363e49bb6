//! The CloudEvents conformance vectors (`data/`, from cloudevents/conformance, Apache-2.0) and
//! their loader, shared by every binding's tests.

pub mod arbitrary;

use std::collections::BTreeMap;
use std::path::Path;

use ferry_core::{AttributeRef, CloudEvent};
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

/// Asserts that a decoded event carries exactly what the document describes: every attribute
/// (0.3 `schemaurl` as `dataschema`, `specversion` upgraded to 1.0), the data (by JSON value for
/// structured documents, byte for byte otherwise), and no transport extension as an attribute.
pub fn check(doc: &Doc, e: &CloudEvent) {
    for (k, v) in doc.attributes() {
        match k.as_str() {
            "specversion" => assert_eq!(e.specversion(), "1.0"),
            "schemaurl" => assert_eq!(e.dataschema(), Some(v.as_str())),
            _ => assert_eq!(e.attribute(&k), Some(AttributeRef::Str(&v)), "{k}"),
        }
    }
    let want = doc.data.clone().unwrap_or_default();
    let got = e.data().map(|d| d.as_bytes().to_vec()).unwrap_or_default();
    if doc.is_structured() {
        let a: serde_json::Value = serde_json::from_str(&want).unwrap();
        let b: serde_json::Value = serde_json::from_slice(&got).unwrap();
        assert_eq!(a, b);
    } else {
        assert_eq!(String::from_utf8(got).unwrap(), want);
    }
    for name in doc.transport_extensions.keys() {
        assert!(
            e.extension(name).is_none(),
            "transport extension {name} became an attribute"
        );
    }
}
