//! Evaluator tests beyond the TCK: overflow, casts, fail-fast propagation, borrowing.

use std::borrow::Cow;

use crate::{AttributeValue, Attributes, ErrorKind, Expression, Value};

struct Event;

impl Attributes for Event {
    fn attribute(&self, name: &str) -> Option<AttributeValue<'_>> {
        Some(match name {
            "id" => AttributeValue::String("A234-1234-1234"),
            "source" => AttributeValue::String("https://example.com/orders"),
            "specversion" => AttributeValue::String("1.0"),
            "type" => AttributeValue::String("com.example.order.created"),
            "hop" => AttributeValue::String("5"),
            "ttl" => AttributeValue::String("10"),
            "count" => AttributeValue::Integer(3),
            "flag" => AttributeValue::Boolean(true),
            _ => return None,
        })
    }
}

fn s(text: &str) -> Value<'_> {
    Value::String(Cow::Borrowed(text))
}

#[test]
fn evaluation_table() {
    use ErrorKind::*;
    let cases: Vec<(&str, Value<'_>, Option<ErrorKind>)> = vec![
        ("hop < ttl", Value::Boolean(true), None),
        ("count = '3'", Value::Boolean(true), None),
        ("'3' = count", Value::Boolean(true), None),
        ("flag = 'TRUE'", Value::Boolean(false), None),
        ("count + 1", Value::Integer(4), None),
        ("2147483647 + 1", Value::Integer(0), Some(Math)),
        ("-2147483648 - 1", Value::Integer(0), Some(Math)),
        ("65536 * 65536", Value::Integer(0), Some(Math)),
        ("-2147483648 / -1", Value::Integer(0), Some(Math)),
        ("-2147483648 % -1", Value::Integer(0), None),
        ("-7 % 3", Value::Integer(-1), None),
        ("-7 / 2", Value::Integer(-3), None),
        ("-(-2147483648)", Value::Integer(0), Some(Math)),
        ("'abc' + 1", Value::Integer(0), Some(Cast)),
        ("'abc' < 1", Value::Boolean(false), Some(Cast)),
        ("1 = 'abc'", Value::Boolean(false), None),
        ("'abc' = 1", Value::Boolean(false), Some(Cast)),
        ("NOT 0", Value::Boolean(true), Some(Cast)),
        ("NOT 'yes'", Value::Boolean(true), Some(Cast)),
        ("NOT flag", Value::Boolean(false), None),
        ("1 AND TRUE", Value::Boolean(true), None),
        (
            "missing OR TRUE",
            Value::Boolean(false),
            Some(MissingAttribute),
        ),
        ("TRUE OR missing", Value::Boolean(true), None),
        ("TRUE OR FALSE AND FALSE", Value::Boolean(false), None),
        ("TRUE OR (FALSE AND FALSE)", Value::Boolean(true), None),
        ("count IN (1, 'x')", Value::Boolean(false), Some(Cast)),
        ("count IN (3, missing)", Value::Boolean(true), None),
        (
            "count NOT IN (1, missing)",
            Value::Boolean(false),
            Some(MissingAttribute),
        ),
        ("count LIKE '3'", Value::Boolean(true), None),
        (
            "EXISTS flag AND NOT EXISTS nope",
            Value::Boolean(true),
            None,
        ),
        (
            "LENGTH(missing) = 0",
            Value::Boolean(false),
            Some(MissingAttribute),
        ),
        (
            "UPPER(LOWER('ÀB'))",
            Value::String(Cow::Owned("ÀB".to_owned())),
            None,
        ),
        ("TRIM(type)", s("com.example.order.created"), None),
        ("LEFT('héllo', 2)", s("hé"), None),
        ("RIGHT('héllo', 4)", s("éllo"), None),
        ("CONCAT_WS('-', 1, TRUE)", s("1-true"), None),
        ("LENGTH('héllo')", Value::Integer(5), None),
        (
            "NOPE(1) OR TRUE",
            Value::Boolean(false),
            Some(MissingFunction),
        ),
        ("INT('x') + 1", Value::Integer(0), Some(Cast)),
    ];
    for (source, value, error) in cases {
        let expression = match Expression::parse(source) {
            Ok(expression) => expression,
            Err(e) => panic!("{source:?}: {e}"),
        };
        let evaluation = expression.evaluate(&Event);
        assert_eq!(evaluation.value, value, "{source:?}");
        assert_eq!(evaluation.error.map(|e| e.kind), error, "{source:?}");
    }
}

#[test]
fn matches_is_a_filter() {
    let cases = [
        ("type LIKE 'com.example.%'", Ok(true)),
        ("type LIKE 'org.%'", Ok(false)),
        ("count", Ok(false)),
        ("'true'", Ok(false)),
        ("missing = 1", Err(ErrorKind::MissingAttribute)),
        ("1 / 0 = 0", Err(ErrorKind::Math)),
    ];
    for (source, expected) in cases {
        let expression = Expression::parse(source).map_err(|e| e.to_string());
        let got = expression.map(|e| e.matches(&Event).map_err(|e| e.kind));
        assert_eq!(got, Ok(expected), "{source:?}");
    }
}

#[test]
fn attribute_and_literal_strings_are_borrowed() {
    for source in ["source", "'literal'", "TRIM(id)", "SUBSTRING(type, 5)"] {
        let expression = Expression::parse(source).map_err(|e| e.to_string());
        let expression = expression.unwrap_or_else(|e| panic!("{source:?}: {e}"));
        let value = expression.evaluate(&Event).value;
        assert!(
            matches!(value, Value::String(Cow::Borrowed(_))),
            "{source:?} gave {value:?}"
        );
    }
}

#[test]
fn source_is_kept() {
    let text = "EXISTS  subject";
    let expression = Expression::parse(text).map_err(|e| e.to_string());
    assert_eq!(expression.as_ref().map(|e| e.source()), Ok(text));
}
