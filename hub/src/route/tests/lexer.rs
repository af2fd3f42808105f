//! Lexer: token kinds and boundaries, including IoT Edge's longest-match surprises.

use crate::route::lexer::{tokenize, unescape, TokenKind as K};

/// Kinds and texts of the tokens of `text`, without the final `Eof`.
fn tokens(text: &str) -> Vec<(K, &str)> {
    let mut all: Vec<(K, &str)> = tokenize(text).iter().map(|t| (t.kind, t.text)).collect();
    assert_eq!(all.pop(), Some((K::Eof, "")));
    all
}

#[test]
fn keywords_are_case_insensitive_but_literals_are_lowercase() {
    assert_eq!(
        tokens("select From WHERE iNtO and OR Not"),
        vec![
            (K::Select, "select"),
            (K::From, "From"),
            (K::Where, "WHERE"),
            (K::Into, "iNtO"),
            (K::And, "and"),
            (K::Or, "OR"),
            (K::Not, "Not")
        ]
    );
    assert_eq!(
        tokens("true false null undefined TRUE Null"),
        vec![
            (K::True, "true"),
            (K::False, "false"),
            (K::Null, "null"),
            (K::Undefined, "undefined"),
            (K::Ident, "TRUE"),
            (K::Ident, "Null")
        ]
    );
}

#[test]
fn operators_are_single_tokens() {
    let table = [
        ("(", K::LParen),
        (")", K::RParen),
        (",", K::Comma),
        ("+", K::Plus),
        ("-", K::Minus),
        ("*", K::Star),
        ("/", K::Slash),
        ("%", K::Percent),
        ("=", K::Eq),
        ("!=", K::Ne),
        ("<>", K::Ne),
        ("<=", K::Le),
        (">=", K::Ge),
        (">", K::Gt),
        ("<", K::Lt),
        ("||", K::Concat),
        ("??", K::Coalesce),
        ("{", K::LBrace),
        ("}", K::RBrace),
    ];
    for (text, kind) in table {
        assert_eq!(tokens(text), vec![(kind, text)], "{text:?}");
    }
}

#[test]
fn numbers_follow_the_grammar() {
    let table = [
        ("42", K::Integer),
        ("-42", K::Integer),
        ("0x1F", K::Hex),
        ("0X1f", K::Hex),
        ("3.14", K::Real),
        (".5", K::Real),
        ("-.5e-3", K::Real),
        ("1e10", K::Real),
        ("2E+3", K::Real),
        // `[0-9]* EXP` allows no digits: IoT Edge lexes `e5` as a number it cannot parse.
        ("e5", K::Real),
    ];
    for (text, kind) in table {
        assert_eq!(tokens(text), vec![(kind, text)], "{text:?}");
    }
}

#[test]
fn identifiers_swallow_operator_characters_without_spaces() {
    // ID_CHARS exclude only ()<>@,;:\"/[]?={} and whitespace: these are single identifiers.
    for text in ["temp+1", "a-b", "x*2", "1+2", "a.b.c", "-x", "a||b", "'abc'def", "$", "5.", "0x1G", "ünïcode"] {
        assert_eq!(tokens(text), vec![(K::Ident, text)], "{text:?}");
    }
    assert_eq!(tokens("a != b"), vec![(K::Ident, "a"), (K::Ne, "!="), (K::Ident, "b")]);
    assert_eq!(tokens("a!=b"), vec![(K::Ident, "a!"), (K::Eq, "="), (K::Ident, "b")]);
}

#[test]
fn brackets_outside_a_property_make_a_query_path_token() {
    assert_eq!(tokens("a[0]"), vec![(K::QueryPath, "a[0]")]);
}

#[test]
fn system_properties_take_path_characters() {
    let table = ["$connectionDeviceId", "$body.a.b[0]", "$a+1", "$$x", "$body.a['x y']", "$body.a[\"k.z\"]"];
    for text in table {
        assert_eq!(tokens(text), vec![(K::SysProp, text)], "{text:?}");
    }
    assert_eq!(tokens("$a=1"), vec![(K::SysProp, "$a"), (K::Eq, "="), (K::Integer, "1")]);
    assert_eq!(tokens("{$x}"), vec![(K::LBrace, "{"), (K::SysProp, "$x"), (K::RBrace, "}")]);
    // An unclosed quoted bracket is not the extension: the space ends the token.
    assert_eq!(tokens("$a['x y"), vec![(K::SysProp, "$a['x"), (K::Ident, "y")]);
}

#[test]
fn strings_use_either_quote_and_escapes() {
    let table = [
        ("'abc'", "abc"),
        ("\"abc\"", "abc"),
        ("'it\\'s'", "it's"),
        ("\"say \\\"hi\\\"\"", "say \"hi\""),
        ("'back\\\\slash'", "back\\slash"),
        ("'\\u0041\\u00e9'", "Aé"),
        ("'\\ud83d\\ude00'", "😀"),
        ("'\\ud83d'", "\u{fffd}"),
        ("'a \"b\" c'", "a \"b\" c"),
        ("''", ""),
    ];
    for (text, value) in table {
        assert_eq!(tokens(text), vec![(K::Str, text)], "{text:?}");
        assert_eq!(unescape(text), value, "{text:?}");
    }
}

#[test]
fn bad_strings_are_unterminated() {
    assert_eq!(tokens("'abc"), vec![(K::UnterminatedStr, "'abc")]);
    assert_eq!(tokens("\"abc"), vec![(K::UnterminatedStr, "\"abc")]);
    // Only \" \' \\ and \uXXXX are escapes.
    assert_eq!(tokens("'a\\nb'")[0], (K::UnterminatedStr, "'a"));
    assert_eq!(tokens("'\\u12'")[0], (K::UnterminatedStr, "'"));
}

#[test]
fn whitespace_and_closed_comments_are_skipped() {
    assert_eq!(tokens(" \t\r\n a /* note */ b "), vec![(K::Ident, "a"), (K::Ident, "b")]);
    // Without a closing `*/`, `/*` is a slash and a star (the common `FROM /*`).
    assert_eq!(tokens("/*"), vec![(K::Slash, "/"), (K::Star, "*")]);
    // With one anywhere later, it is a comment, as in IoT Edge.
    assert_eq!(tokens("/messages/* a */ b"), vec![(K::Slash, "/"), (K::Ident, "messages"), (K::Ident, "b")]);
}

#[test]
fn unknown_characters_become_unknown_tokens() {
    for text in ["@", ";", ":", "\\", "?"] {
        assert_eq!(tokens(text), vec![(K::Unknown, text)], "{text:?}");
    }
}

#[test]
fn token_offsets_are_byte_offsets() {
    let all = tokenize("é = 'x'");
    let offsets: Vec<usize> = all.iter().map(|t| t.offset).collect();
    assert_eq!(offsets, vec![0, 3, 5, 8]);
}
