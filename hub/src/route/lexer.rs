//! Lexer: route text to tokens, the way IoT Edge's ANTLR lexer (`GrammarLexer.g4`) cuts it.
//!
//! ANTLR takes the longest token any rule can match and breaks ties by rule order. We copy
//! that, character classes included, because it decides what a route means: `temp+1` is one
//! identifier (an application property named "temp+1"), `'a'b` is an identifier too, `e5` is
//! a (malformed) number, and a `/*` that has a `*/` anywhere after it starts a comment even in
//! the middle of a path. A route that IoT Edge reads one way must not be read another way here.
//!
//! One extension: inside a `$…` property, `['…']` or `["…"]` may hold any characters, so that
//! `$body.a['x y']` can name a JSON key with a space. IoT Edge rejects such text, so no route
//! that works there changes meaning.

/// What a token is. Keyword kinds are case-insensitive in the text; `true`, `false`, `null`
/// and `undefined` are lowercase only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenKind {
    LBrace,
    RBrace,
    Select,
    From,
    Where,
    Into,
    /// A complete `'…'` or `"…"` literal.
    Str,
    /// A quote whose literal never ends (or hits an invalid escape).
    UnterminatedStr,
    Integer,
    Hex,
    Real,
    True,
    False,
    Null,
    Undefined,
    LParen,
    RParen,
    Comma,
    Plus,
    Minus,
    Star,
    Slash,
    Percent,
    And,
    Or,
    Not,
    Eq,
    /// `!=` or `<>`.
    Ne,
    Le,
    Ge,
    Gt,
    Lt,
    Concat,
    Coalesce,
    /// `$` followed by property-path characters: a system property or `$body.` query.
    SysProp,
    Ident,
    /// An identifier-like run containing `[` or `]`: valid nowhere in a route.
    QueryPath,
    /// A character no rule accepts.
    Unknown,
    Eof,
}

/// One token: its kind, its text and its byte offset in the route text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Token<'a> {
    pub kind: TokenKind,
    pub text: &'a str,
    pub offset: usize,
}

impl Token<'_> {
    /// Byte offset just past the token.
    pub fn end(&self) -> usize {
        self.offset + self.text.len()
    }
}

/// Cuts `text` into tokens, dropping whitespace and comments, and ends the list with `Eof`.
/// Never fails: characters no rule accepts become `Unknown` tokens for the parser to report.
pub(crate) fn tokenize(text: &str) -> Vec<Token<'_>> {
    let mut tokens = Vec::new();
    // Where the last `*/` ends: a `/*` at or past it cannot open a comment. Knowing this keeps
    // lexing linear; otherwise every unclosed `/*` would search the rest of the text.
    let comments_end = text.rfind("*/").map_or(0, |at| at + 2);
    let mut offset = 0;
    while offset < text.len() {
        let rest = &text[offset..];
        let whitespace = rest.len() - rest.trim_start_matches(is_whitespace).len();
        if whitespace > 0 {
            offset += whitespace;
            continue;
        }
        let (kind, len) = longest_match(rest, offset + 4 <= comments_end);
        if kind != TokenKind::Eof {
            tokens.push(Token { kind, text: &rest[..len], offset });
        }
        offset += len;
    }
    tokens.push(Token { kind: TokenKind::Eof, text: "", offset: text.len() });
    tokens
}

/// ANTLR's `WS` rule: only these four characters are skipped.
fn is_whitespace(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

/// `QUERY_PATH_CHARS`: everything except a few punctuation characters and whitespace.
fn is_query_path_char(c: char) -> bool {
    !matches!(c, '(' | ')' | '<' | '>' | '@' | ',' | ';' | ':' | '\\' | '"' | '/' | '?' | '=' | '{' | '}')
        && !is_whitespace(c)
}

/// `ID_CHARS`: query-path characters except brackets.
fn is_id_char(c: char) -> bool {
    is_query_path_char(c) && c != '[' && c != ']'
}

/// The token at the start of `rest` (non-empty, not starting with whitespace) and its byte
/// length. A comment is reported as `Eof` so the caller skips it; `comment_possible` says
/// whether a `*/` follows far enough to close one.
fn longest_match(rest: &str, comment_possible: bool) -> (TokenKind, usize) {
    use TokenKind as K;
    let mut best = (K::Unknown, 0);
    // Candidates in grammar rule order; a later one wins only when strictly longer.
    let mut offer = |kind: TokenKind, len: usize| {
        if len > best.1 {
            best = (kind, len);
        }
    };
    offer(K::LBrace, prefix_len(rest, "{"));
    offer(K::RBrace, prefix_len(rest, "}"));
    for (kind, word) in [(K::Select, "select"), (K::From, "from"), (K::Where, "where"), (K::Into, "into")] {
        offer(kind, keyword_len(rest, word));
    }
    let (string_kind, string_len) = string_len(rest);
    offer(string_kind, string_len);
    offer(K::Integer, integer_len(rest));
    offer(K::Hex, hex_len(rest));
    offer(K::Real, real_len(rest));
    for (kind, word) in [(K::True, "true"), (K::False, "false"), (K::Null, "null"), (K::Undefined, "undefined")] {
        offer(kind, prefix_len(rest, word));
    }
    for (kind, op) in [
        (K::LParen, "("),
        (K::RParen, ")"),
        (K::Comma, ","),
        (K::Plus, "+"),
        (K::Minus, "-"),
        (K::Star, "*"),
        (K::Slash, "/"),
        (K::Percent, "%"),
    ] {
        offer(kind, prefix_len(rest, op));
    }
    for (kind, word) in [(K::And, "and"), (K::Or, "or"), (K::Not, "not")] {
        offer(kind, keyword_len(rest, word));
    }
    for (kind, op) in [
        (K::Eq, "="),
        (K::Ne, "!="),
        (K::Ne, "<>"),
        (K::Le, "<="),
        (K::Ge, ">="),
        (K::Gt, ">"),
        (K::Lt, "<"),
        (K::Concat, "||"),
        (K::Coalesce, "??"),
    ] {
        offer(kind, prefix_len(rest, op));
    }
    offer(K::SysProp, sys_prop_len(rest));
    offer(K::Ident, run_len(rest, is_id_char));
    offer(K::QueryPath, run_len(rest, is_query_path_char));
    // A comment is skipped, so report it as Eof.
    if comment_possible {
        offer(K::Eof, comment_len(rest));
    }
    if best.1 == 0 {
        // UNKNOWN_CHAR: one character, whatever it is.
        best = (K::Unknown, rest.chars().next().map_or(1, char::len_utf8));
    }
    best
}

fn prefix_len(rest: &str, literal: &str) -> usize {
    if rest.starts_with(literal) {
        literal.len()
    } else {
        0
    }
}

/// Case-insensitive keyword (`S E L E C T` fragments in the grammar).
fn keyword_len(rest: &str, word: &str) -> usize {
    match rest.get(..word.len()) {
        Some(head) if head.eq_ignore_ascii_case(word) => word.len(),
        _ => 0,
    }
}

/// Byte length of the longest prefix whose characters all satisfy `accept`.
fn run_len(rest: &str, accept: fn(char) -> bool) -> usize {
    rest.find(|c: char| !accept(c)).unwrap_or(rest.len())
}

fn digits_len(rest: &str) -> usize {
    run_len(rest, |c| c.is_ascii_digit())
}

/// `'-'? [0-9]+`
fn integer_len(rest: &str) -> usize {
    let sign = prefix_len(rest, "-");
    let digits = digits_len(&rest[sign..]);
    if digits == 0 {
        0
    } else {
        sign + digits
    }
}

/// `'0' [Xx] HEX_DIGIT+`
fn hex_len(rest: &str) -> usize {
    let bytes = rest.as_bytes();
    if bytes.len() < 3 || bytes[0] != b'0' || !matches!(bytes[1], b'x' | b'X') {
        return 0;
    }
    let digits = run_len(&rest[2..], |c| c.is_ascii_hexdigit());
    if digits == 0 {
        0
    } else {
        2 + digits
    }
}

/// `'-'? [0-9]* '.' [0-9]+ EXP? | '-'? [0-9]* EXP`, longest of the two.
fn real_len(rest: &str) -> usize {
    let sign = prefix_len(rest, "-");
    let whole = sign + digits_len(&rest[sign..]);
    let mut best = exponent_len(&rest[whole..]).map_or(0, |e| whole + e);
    if rest[whole..].starts_with('.') {
        let fraction = digits_len(&rest[whole + 1..]);
        if fraction > 0 {
            let end = whole + 1 + fraction;
            best = best.max(end + exponent_len(&rest[end..]).unwrap_or(0));
        }
    }
    best
}

/// `[Ee] [+-]? [0-9]+`
fn exponent_len(rest: &str) -> Option<usize> {
    if !rest.starts_with(['e', 'E']) {
        return None;
    }
    let sign = usize::from(rest[1..].starts_with(['+', '-']));
    let digits = digits_len(&rest[1 + sign..]);
    (digits > 0).then_some(1 + sign + digits)
}

/// A string literal: `(kind, len)` with kind `Str` when it closes, `UnterminatedStr` when it
/// runs into the end of the text or an escape the grammar does not allow.
fn string_len(rest: &str) -> (TokenKind, usize) {
    let Some(quote) = rest.chars().next().filter(|c| *c == '\'' || *c == '"') else {
        return (TokenKind::Str, 0);
    };
    let mut chars = rest.char_indices().skip(1);
    while let Some((i, c)) = chars.next() {
        if c == quote {
            return (TokenKind::Str, i + 1);
        }
        if c == '\\' {
            match escape_len(&rest[i + 1..]) {
                Some(len) => {
                    // Skip the escape's characters (all ASCII).
                    for _ in 0..len {
                        chars.next();
                    }
                }
                None => return (TokenKind::UnterminatedStr, i),
            }
        }
    }
    (TokenKind::UnterminatedStr, rest.len())
}

/// After a backslash: `["'\\]` or `u` and four hex digits. Returns the escape's length.
fn escape_len(after: &str) -> Option<usize> {
    let bytes = after.as_bytes();
    match bytes.first()? {
        b'"' | b'\'' | b'\\' => Some(1),
        b'u' if bytes.len() >= 5 && bytes[1..5].iter().all(u8::is_ascii_hexdigit) => Some(5),
        _ => None,
    }
}

/// `'$' QUERY_PATH`, plus the `['…']` extension described in the module comment.
fn sys_prop_len(rest: &str) -> usize {
    if !rest.starts_with('$') {
        return 0;
    }
    let mut end = 1;
    while let Some(c) = rest[end..].chars().next() {
        if c == '[' {
            if let Some(quoted) = bracket_quote_len(&rest[end..]) {
                end += quoted;
                continue;
            }
        }
        if !is_query_path_char(c) {
            break;
        }
        end += c.len_utf8();
    }
    if end > 1 {
        end
    } else {
        0
    }
}

/// `['…']` or `["…"]` at the start of `rest`: its byte length, if it closes.
fn bracket_quote_len(rest: &str) -> Option<usize> {
    let quote = rest[1..].chars().next().filter(|c| *c == '\'' || *c == '"')?;
    let body = &rest[2..];
    let close = body.find(quote)?;
    body[close + 1..].starts_with(']').then_some(2 + close + 2)
}

/// `'/*' .*? '*/'`: only a comment when it is closed.
fn comment_len(rest: &str) -> usize {
    if !rest.starts_with("/*") {
        return 0;
    }
    rest[2..].find("*/").map_or(0, |close| 2 + close + 2)
}

/// The value of a `Str` token: quotes stripped, `\"`, `\'`, `\\` and `\uXXXX` unescaped.
/// A `\uXXXX` pair forming a UTF-16 surrogate pair becomes one character; a lone surrogate
/// becomes U+FFFD, since Rust strings cannot hold it.
pub(crate) fn unescape(token_text: &str) -> String {
    let inner = token_text.get(1..token_text.len().saturating_sub(1)).unwrap_or("");
    let mut units: Vec<u16> = Vec::with_capacity(inner.len());
    let mut rest = inner;
    while let Some(c) = rest.chars().next() {
        if c == '\\' {
            let after = &rest[1..];
            match escape_len(after) {
                Some(5) => {
                    // Checked by escape_len: four hex digits.
                    let code = u16::from_str_radix(&after[1..5], 16).unwrap_or(0xFFFD);
                    units.push(code);
                    rest = &after[5..];
                    continue;
                }
                Some(_) => {
                    let escaped = after.chars().next().unwrap_or('\\');
                    units.extend(escaped.encode_utf16(&mut [0; 2]).iter());
                    rest = &after[1..];
                    continue;
                }
                None => {}
            }
        }
        units.extend(c.encode_utf16(&mut [0; 2]).iter());
        rest = &rest[c.len_utf8()..];
    }
    String::from_utf16_lossy(&units)
}
