//! `$body.` query paths: parsing and lookup in a parsed JSON body.
//!
//! IoT Edge accepts the JSONPath subset of its `JsonPath.g4` — names separated by dots, each
//! optionally followed by one `[index]` — and hands the text to Newtonsoft's `SelectTokens`.
//! We accept the same, plus `['name']` / `["name"]` steps (for keys with dots or spaces) and
//! several brackets in a row (`a[0][1]`), which IoT Edge rejects at deploy time.

/// One step from a JSON value to a child.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// An object member, by exact (case-sensitive) name.
    Key(Box<str>),
    /// An array element.
    Index(usize),
}

/// A parsed `$body.` path: one or more steps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JsonPath {
    steps: Vec<Step>,
}

/// `IDENTIFIER` characters of `JsonPath.g4`.
fn is_name_char(c: char) -> bool {
    !matches!(
        c,
        '(' | ')' | '<' | '>' | '@' | ',' | ';' | ':' | '\\' | '"' | '/' | '[' | ']' | '?' | '=' | '{' | '}' | '.'
    ) && !c.is_whitespace()
}

impl JsonPath {
    /// Parses the text after `$body.`. Errors say what is wrong, for the route error.
    pub fn parse(text: &str) -> Result<JsonPath, String> {
        if text.is_empty() {
            return Err("$body query cannot be empty".to_string());
        }
        let mut steps = Vec::new();
        let mut rest = text;
        loop {
            // A segment: a name or a quoted bracket, then any number of brackets.
            let name_len = rest.find(|c: char| !is_name_char(c)).unwrap_or(rest.len());
            if name_len > 0 {
                steps.push(Step::Key(rest[..name_len].into()));
                rest = &rest[name_len..];
            } else if !rest.starts_with('[') {
                return Err(format!("expected a name in {text:?}"));
            }
            while rest.starts_with('[') {
                let (step, len) = bracket(rest).ok_or_else(|| format!("bad '[…]' in {text:?}"))?;
                steps.push(step);
                rest = &rest[len..];
            }
            match rest.strip_prefix('.') {
                Some(next) => rest = next,
                None if rest.is_empty() => return Ok(JsonPath { steps }),
                None => return Err(format!("unexpected {:?} in {text:?}", rest.chars().next().unwrap_or('.'))),
            }
        }
    }

    /// The value at this path in `root`, or `None` when a step is missing.
    pub fn lookup<'v>(&self, root: &'v serde_json::Value) -> Option<&'v serde_json::Value> {
        self.steps.iter().try_fold(root, |value, step| match step {
            Step::Key(key) => value.as_object()?.get(&**key),
            Step::Index(index) => value.as_array()?.get(*index),
        })
    }
}

/// `[digits]`, `['name']` or `["name"]` at the start of `rest`: the step and its byte length.
fn bracket(rest: &str) -> Option<(Step, usize)> {
    let inner = rest.get(1..)?;
    if let Some(quote) = inner.chars().next().filter(|c| *c == '\'' || *c == '"') {
        let body = &inner[1..];
        let close = body.find(quote)?;
        body[close + 1..].starts_with(']').then(|| (Step::Key(body[..close].into()), 1 + 1 + close + 1 + 1))
    } else {
        let digits = inner.find(|c: char| !c.is_ascii_digit()).unwrap_or(inner.len());
        if digits == 0 || !inner[digits..].starts_with(']') {
            return None;
        }
        let index = inner[..digits].parse::<usize>().ok()?;
        Some((Step::Index(index), 1 + digits + 1))
    }
}
