//! Finds where a key path stands in the TOML text, for error messages.

use serde_path_to_error::{Path, Segment};
use toml::de::{DeTable, DeValue};

/// The dotted key an error concerns: the deserializer's path, plus the unknown field's name
/// when serde reports one.
pub fn key_of(path: &Path, message: &str) -> Vec<String> {
    let mut key: Vec<String> = path
        .iter()
        .filter_map(|s| match s {
            Segment::Seq { index } => Some(index.to_string()),
            Segment::Map { key } => Some(key.clone()),
            Segment::Enum { variant } => Some(variant.clone()),
            Segment::Unknown => None,
        })
        .collect();
    if let Some(field) = message
        .strip_prefix("unknown field `")
        .and_then(|m| m.split('`').next())
    {
        if key.last().map(String::as_str) != Some(field) {
            key.push(field.to_owned());
        }
    }
    key
}

/// For "unknown variant `x`" errors whose path stops at a table (internally tagged enums
/// lose the last step), finds the key in that table whose value is `x`.
pub fn refine(root: &DeTable<'_>, key: &mut Vec<String>, message: &str) {
    let Some(variant) = message
        .strip_prefix("unknown variant `")
        .and_then(|m| m.split('`').next())
    else {
        return;
    };
    let mut table = root;
    for segment in key.iter() {
        let Some((_, v)) = table
            .iter()
            .find(|(k, _)| k.get_ref().as_ref() == segment.as_str())
        else {
            return;
        };
        match v.get_ref() {
            DeValue::Table(t) => table = t,
            _ => return,
        }
    }
    let found = table
        .iter()
        .find(|(_, v)| matches!(v.get_ref(), DeValue::String(s) if s.as_ref() == variant));
    if let Some((k, _)) = found {
        key.push(k.get_ref().to_string());
    }
}

/// Byte offset of the deepest part of `key` present in the document.
pub fn offset(root: &DeTable<'_>, key: &[String]) -> Option<usize> {
    let mut found = None;
    let mut table = Some(root);
    let mut array: Option<&[toml::Spanned<DeValue<'_>>]> = None;
    for segment in key {
        let value = if let Some(t) = table {
            let Some((k, v)) = t
                .iter()
                .find(|(k, _)| k.get_ref().as_ref() == segment.as_str())
            else {
                break;
            };
            found = Some(k.span().start);
            v
        } else if let Some(a) = array {
            let Some(v) = segment.parse::<usize>().ok().and_then(|i| a.get(i)) else {
                break;
            };
            found = Some(v.span().start);
            v
        } else {
            break;
        };
        table = None;
        array = None;
        match value.get_ref() {
            DeValue::Table(t) => table = Some(t),
            DeValue::Array(a) => array = Some(a.as_ref()),
            _ => {}
        }
    }
    found
}
