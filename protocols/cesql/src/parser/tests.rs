//! Parser tests: tree shapes, precedence and error positions.

use super::*;
use crate::ast::Literal;

/// Renders a tree compactly so expected shapes read like the source.
fn show(node: &Node) -> String {
    match node {
        Node::Literal(Literal::Boolean(b)) => b.to_string(),
        Node::Literal(Literal::Integer(i)) => i.to_string(),
        Node::Literal(Literal::String(s)) => format!("'{s}'"),
        Node::Attribute(name) => name.to_string(),
        Node::Exists(name) => format!("(EXISTS {name})"),
        Node::Not(operand) => format!("(NOT {})", show(operand)),
        Node::Negate(operand) => format!("(-{})", show(operand)),
        Node::Binary { op, left, right } => {
            format!("({} {op:?} {})", show(left), show(right))
        }
        Node::Logical { op, left, right } => {
            format!("({} {op:?} {})", show(left), show(right))
        }
        Node::Like {
            operand, negated, ..
        } => format!(
            "({} {}LIKE)",
            show(operand),
            if *negated { "NOT " } else { "" }
        ),
        Node::In {
            operand,
            set,
            negated,
        } => format!(
            "({} {}IN [{}])",
            show(operand),
            if *negated { "NOT " } else { "" },
            set.iter().map(show).collect::<Vec<_>>().join(", ")
        ),
        Node::Call { function, args } => format!(
            "{function:?}({})",
            args.iter().map(show).collect::<Vec<_>>().join(", ")
        ),
        Node::MissingFunction { name, arity } => format!("missing {name}/{arity}"),
    }
}

#[test]
fn tree_shapes() {
    let cases = [
        ("4-1", "(4 Subtract 1)"),
        ("4 - -1", "(4 Subtract -1)"),
        ("-2147483648", "-2147483648"),
        ("--10", "(--10)"),
        ("-'10'", "(-'10')"),
        ("4 * 2 + 4 / 2", "((4 Multiply 2) Add (4 Divide 2))"),
        ("1 - 2 - 3", "((1 Subtract 2) Subtract 3)"),
        ("a = 1 AND b = 2", "((a Equal 1) And (b Equal 2))"),
        ("a OR b AND c", "((a Or b) And c)"),
        ("a AND b OR c", "((a And b) Or c)"),
        ("a XOR b XOR c", "((a Xor b) Xor c)"),
        ("NOT a = b", "((NOT a) Equal b)"),
        ("NOT EXISTS time", "(NOT (EXISTS time))"),
        ("EXISTS SOURCE", "(EXISTS source)"),
        ("x NOT LIKE 'a%'", "(x NOT LIKE)"),
        ("x LIKE 'a' = TRUE", "((x LIKE) Equal true)"),
        ("1 + 2 IN (3)", "(1 Add (2 IN [3]))"),
        ("x NOT IN (1, 'a', y)", "(x NOT IN [1, 'a', y])"),
        ("int(hop) < INT(ttl)", "(Int(hop) Less Int(ttl))"),
        ("CONCAT()", "Concat()"),
        ("CONCAT_WS()", "missing concat_ws/0"),
        ("FOO(1, 2)", "missing foo/2"),
        ("(TRUE)", "true"),
        ("a <> b", "(a NotEqual b)"),
    ];
    for (source, expected) in cases {
        match parse(source) {
            Ok(node) => assert_eq!(show(&node), expected, "{source:?}"),
            Err(error) => panic!("{source:?}: {error}"),
        }
    }
}

#[test]
fn error_positions() {
    let cases = [
        ("ABC(", 4, 1, 5),
        ("x LIKE 123", 7, 1, 8),
        ("x LIKE y", 7, 1, 8),
        ("(1 + 2", 6, 1, 7),
        ("1 +", 3, 1, 4),
        ("1 2", 2, 1, 3),
        ("", 0, 1, 1),
        ("x IN ()", 6, 1, 7),
        ("x IN 1", 5, 1, 6),
        ("EXISTS 1", 7, 1, 8),
        ("2147483648", 0, 1, 1),
        ("-2147483649", 0, 1, 1),
        ("a = 1 AND\n  b = )", 16, 2, 7),
        ("f(1,)", 4, 1, 5),
    ];
    for (source, position, line, column) in cases {
        match parse(source) {
            Ok(node) => panic!("{source:?} parsed as {}", show(&node)),
            Err(error) => assert_eq!(
                (error.position, error.line, error.column),
                (position, line, column),
                "{source:?}: {error}"
            ),
        }
    }
}

#[test]
fn error_messages() {
    let cases = [
        ("ABC(", "at line 1, column 5: expected an expression, found end of input"),
        (
            "x LIKE 123",
            "at line 1, column 8: expected a string literal as the LIKE pattern, found integer literal",
        ),
        ("(1", "at line 1, column 3: expected ')', found end of input"),
        ("1 2", "at line 1, column 3: unexpected integer literal"),
    ];
    for (source, expected) in cases {
        let message = parse(source)
            .map(|node| show(&node))
            .map_err(|e| e.to_string());
        assert_eq!(message, Err(expected.to_owned()), "{source:?}");
    }
}

#[test]
fn nesting_is_bounded() {
    let deep_parens = format!("{}1{}", "(".repeat(10_000), ")".repeat(10_000));
    let long_chain = vec!["1"; 10_000].join(" + ");
    let many_nots = format!("{}TRUE", "NOT ".repeat(10_000));
    for source in [deep_parens, long_chain, many_nots] {
        let error = parse(&source).expect_err("too deep");
        assert!(error.message.contains("nested too deeply"), "{error}");
    }
    let fine = vec!["1"; 100].join(" + ");
    assert!(parse(&fine).is_ok());
}
