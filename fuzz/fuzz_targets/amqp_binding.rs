//! The AMQP 0-9-1 binding: a content type, headers and a body from the input. Whatever decodes
//! re-encodes in both modes (each header prefix); each decodes again to a stable encoding.
#![no_main]

use arbitrary::Arbitrary;
use ferry_amqp::HeaderPrefix;
use ferry_core::Mode;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::BasicProperties;
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input {
    content_type: Option<String>,
    headers: Vec<(String, Value)>,
    body: Vec<u8>,
}

#[derive(Debug, Arbitrary)]
enum Value {
    Long(Vec<u8>),
    Short(String),
    Int(i32),
    Bool(bool),
}

fuzz_target!(|input: Input| {
    let mut table = FieldTable::default();
    for (name, value) in input.headers {
        if name.len() > 255 {
            continue;
        }
        let value = match value {
            Value::Long(b) => AMQPValue::LongString(LongString::from(b)),
            Value::Short(s) if s.len() <= 255 => AMQPValue::ShortString(ShortString::from(s)),
            Value::Short(_) => continue,
            Value::Int(i) => AMQPValue::LongInt(i),
            Value::Bool(b) => AMQPValue::Boolean(b),
        };
        table.insert(ShortString::from(name), value);
    }
    let mut properties = BasicProperties::default().with_headers(table);
    if let Some(ct) = input.content_type.filter(|c| c.len() <= 255) {
        properties = properties.with_content_type(ShortString::from(ct));
    }
    let _ = ferry_amqp::is_cloudevent(&properties);
    let Ok(event) = ferry_amqp::decode(&properties, &input.body) else {
        return;
    };
    for mode in [Mode::Binary, Mode::Structured] {
        for prefix in [HeaderPrefix::CloudEvents, HeaderPrefix::Ce] {
            let (p, b) = ferry_amqp::encode(&event, mode, prefix);
            let back = ferry_amqp::decode(&p, &b)
                .unwrap_or_else(|e| panic!("{mode:?}: Ferry cannot read back what it wrote: {e}"));
            let again = ferry_amqp::encode(&back, mode, prefix);
            assert_eq!(again.1, b, "{mode:?}: the body is stable");
            assert_eq!(
                again.0.headers(),
                p.headers(),
                "{mode:?}: the headers are stable"
            );
        }
    }
});
