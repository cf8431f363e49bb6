//! Finds where a key path stands in the TOML text, for error messages.

use serde::de::DeserializeOwned;
use serde_path_to_error::{Path, Segment};
use toml::de::{DeTable, DeValue, ValueDeserializer};

use super::{
    AmqpSinkConfig, AmqpSourceConfig, FileSinkConfig, HttpSinkConfig, HttpSourceConfig,
    MqttSinkConfig, MqttSourceConfig, NatsSinkConfig, NatsSourceConfig, StdoutSinkConfig,
    WebSocketSinkConfig, WebSocketSourceConfig,
};

/// A precise error: key path, byte offset and message.
pub(super) type Located = (Vec<String>, Option<usize>, String);

/// Components are internally tagged by `type`, which makes serde buffer them and lose the
/// path and position of an error inside. When an error stops at `sources.<name>` or
/// `sinks.<name>`, this deserializes that one table again straight into its variant's
/// struct to find the exact key and line.
pub(super) fn component_error(root: &DeTable<'_>, key: &[String]) -> Option<Located> {
    let [section, name] = key else { return None };
    let (_, value) = root
        .iter()
        .find(|(k, _)| k.get_ref().as_ref() == section.as_str())?;
    let DeValue::Table(components) = value.get_ref() else {
        return None;
    };
    let (_, component) = components
        .iter()
        .find(|(k, _)| k.get_ref().as_ref() == name.as_str())?;
    let DeValue::Table(table) = component.get_ref() else {
        return None;
    };
    let kind = match table.get("type").map(|v| v.get_ref()) {
        Some(DeValue::String(s)) => s.to_string(),
        _ => return None,
    };
    let mut without_type = DeTable::new();
    for (k, v) in table.iter().filter(|(k, _)| k.get_ref().as_ref() != "type") {
        without_type.insert(k.clone(), v.clone());
    }
    let spanned = toml::Spanned::new(component.span(), DeValue::Table(without_type));
    let error = match (section.as_str(), kind.as_str()) {
        ("sources", "http") => first_error::<HttpSourceConfig>(spanned),
        ("sinks", "file") => first_error::<FileSinkConfig>(spanned),
        ("sinks", "stdout") => first_error::<StdoutSinkConfig>(spanned),
        ("sinks", "http") => first_error::<HttpSinkConfig>(spanned),
        ("sources", "amqp") => first_error::<AmqpSourceConfig>(spanned),
        ("sinks", "amqp") => first_error::<AmqpSinkConfig>(spanned),
        ("sources", "mqtt") => first_error::<MqttSourceConfig>(spanned),
        ("sinks", "mqtt") => first_error::<MqttSinkConfig>(spanned),
        ("sources", "nats") => first_error::<NatsSourceConfig>(spanned),
        ("sinks", "nats") => first_error::<NatsSinkConfig>(spanned),
        ("sources", "websocket") => first_error::<WebSocketSourceConfig>(spanned),
        ("sinks", "websocket") => first_error::<WebSocketSinkConfig>(spanned),
        _ => None,
    }?;
    let mut inner = key_of(error.path(), error.inner().message());
    refine(table, &mut inner, error.inner().message());
    let offset = offset(table, &inner).or_else(|| error.inner().span().map(|s| s.start));
    let mut full = key.to_vec();
    full.extend(inner);
    Some((full, offset, error.inner().message().to_owned()))
}

fn first_error<T: DeserializeOwned>(
    value: toml::Spanned<DeValue<'_>>,
) -> Option<serde_path_to_error::Error<toml::de::Error>> {
    serde_path_to_error::deserialize::<_, T>(ValueDeserializer::from(value)).err()
}

/// The dotted key an error concerns: the deserializer's path, plus the unknown field's name
/// when serde reports one.
pub(super) fn key_of(path: &Path, message: &str) -> Vec<String> {
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
pub(super) fn refine(root: &DeTable<'_>, key: &mut Vec<String>, message: &str) {
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
pub(super) fn offset(root: &DeTable<'_>, key: &[String]) -> Option<usize> {
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
