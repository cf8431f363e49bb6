//! CESQL: parse any text; evaluate what parses against an event (evaluation terminates:
//! libFuzzer's timeout catches one that does not).
#![no_main]

use ferry_cesql::{AttributeValue, Attributes, Expression};
use libfuzzer_sys::fuzz_target;

struct Event;

impl Attributes for Event {
    fn attribute(&self, name: &str) -> Option<AttributeValue<'_>> {
        match name {
            "specversion" => Some(AttributeValue::String("1.0")),
            "id" => Some(AttributeValue::String("42")),
            "source" => Some(AttributeValue::String("https://example.com/orders")),
            "type" => Some(AttributeValue::String("com.example.order.created")),
            "subject" => Some(AttributeValue::String("order-1")),
            "sequence" => Some(AttributeValue::Integer(7)),
            "big" => Some(AttributeValue::Integer(i32::MAX)),
            "small" => Some(AttributeValue::Integer(i32::MIN)),
            "flag" => Some(AttributeValue::Boolean(true)),
            _ => None,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(expression) = Expression::parse(text) {
        let _ = expression.matches(&Event);
        // What parsed prints a source that parses to the same expression.
        let _ = Expression::parse(expression.source()).expect("its own source parses");
    }
});
