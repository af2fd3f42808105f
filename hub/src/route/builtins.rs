//! Built-in functions: names, argument checks and run-time behaviour (`query/builtins/*.cs`).
//!
//! Names are case-insensitive. A call whose argument count or static types fit none of the
//! function's signatures is refused when the route is parsed, as IoT Edge does. At run time
//! each function is undefined on undefined or wrongly typed input, except the `is_*` tests.
//! String positions and lengths count UTF-16 code units, as in .NET.

use std::borrow::Cow;

use super::types::{fits, StaticType};
use super::value::Value;

/// A built-in function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Builtin {
    Abs,
    Exp,
    Power,
    Square,
    Ceiling,
    Floor,
    Sign,
    Sqrt,
    AsNumber,
    IsBool,
    IsDefined,
    IsNull,
    IsNumber,
    IsString,
    Concat,
    Length,
    Lower,
    Upper,
    Substring,
    IndexOf,
    StartsWith,
    EndsWith,
    Contains,
}

/// Names as IoT Edge registers them (`ConditionVisitor.Builtins`). `twin_change_includes` is
/// missing on purpose: it only compiles for twin-change sources, which routes never are.
const NAMES: [(&str, Builtin); 23] = [
    ("abs", Builtin::Abs),
    ("exp", Builtin::Exp),
    ("power", Builtin::Power),
    ("square", Builtin::Square),
    ("ceiling", Builtin::Ceiling),
    ("floor", Builtin::Floor),
    ("sign", Builtin::Sign),
    ("sqrt", Builtin::Sqrt),
    ("as_number", Builtin::AsNumber),
    ("is_bool", Builtin::IsBool),
    ("is_defined", Builtin::IsDefined),
    ("is_null", Builtin::IsNull),
    ("is_number", Builtin::IsNumber),
    ("is_string", Builtin::IsString),
    ("concat", Builtin::Concat),
    ("length", Builtin::Length),
    ("lower", Builtin::Lower),
    ("upper", Builtin::Upper),
    ("substring", Builtin::Substring),
    ("index_of", Builtin::IndexOf),
    ("starts_with", Builtin::StartsWith),
    ("ends_with", Builtin::EndsWith),
    ("contains", Builtin::Contains),
];

impl Builtin {
    /// The function named `name`, ignoring case.
    pub fn lookup(name: &str) -> Option<Builtin> {
        NAMES.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, b)| *b)
    }

    /// The accepted argument lists, for error messages.
    fn signatures(self) -> &'static [&'static str] {
        use Builtin as B;
        match self {
            B::Abs | B::Exp | B::Square | B::Ceiling | B::Floor | B::Sign | B::Sqrt => &["number"],
            B::Power => &["number, number"],
            B::AsNumber => &["string", "number"],
            B::IsBool | B::IsDefined | B::IsNull | B::IsNumber | B::IsString => &["any value"],
            B::Concat => &["string, string, ..."],
            B::Length | B::Lower | B::Upper => &["string"],
            B::Substring => &["string, number", "string, number, number"],
            B::IndexOf | B::StartsWith | B::EndsWith | B::Contains => &["string, string"],
        }
    }

    /// Checks a call's argument types; returns the result type, or an error message.
    pub fn check(self, name: &str, args: &[StaticType]) -> Result<StaticType, String> {
        use Builtin as B;
        use StaticType as T;
        let all = |expected: &[T]| args.len() == expected.len() && expected.iter().zip(args).all(|(e, a)| fits(*e, *a));
        let result = match self {
            B::Abs | B::Exp | B::Square | B::Ceiling | B::Floor | B::Sign | B::Sqrt => {
                all(&[T::Number]).then_some(T::Number)
            }
            B::Power => all(&[T::Number, T::Number]).then_some(T::Number),
            B::AsNumber => (all(&[T::String]) || args == [T::Number]).then_some(T::Number),
            B::IsBool | B::IsDefined | B::IsNull | B::IsNumber | B::IsString => (args.len() == 1).then_some(T::Bool),
            B::Concat => (args.len() >= 2 && args.iter().all(|a| fits(T::String, *a))).then_some(T::String),
            B::Length => all(&[T::String]).then_some(T::Number),
            B::Lower | B::Upper => all(&[T::String]).then_some(T::String),
            B::Substring => {
                (all(&[T::String, T::Number]) || all(&[T::String, T::Number, T::Number])).then_some(T::String)
            }
            B::IndexOf => all(&[T::String, T::String]).then_some(T::Number),
            B::StartsWith | B::EndsWith | B::Contains => all(&[T::String, T::String]).then_some(T::Bool),
        };
        result.ok_or_else(|| {
            let given: Vec<String> = args.iter().map(ToString::to_string).collect();
            let expected: Vec<String> = self.signatures().iter().map(|s| format!("{name}({s})")).collect();
            format!(
                "invalid arguments to built-in function '{name}': {name}({}), expected {}",
                given.join(", "),
                expected.join(" or ")
            )
        })
    }

    /// Runs the function on evaluated arguments (already checked for count). `first_type` is
    /// the static type of the first argument: `is_bool` and `is_null` answer differently for a
    /// `$body` value than for a property (`IsBool.cs`, `IsNull.cs`).
    pub fn apply<'a>(self, args: &[Value<'a>], first_type: StaticType) -> Value<'a> {
        use Builtin as B;
        let first = args.first().unwrap_or(&Value::Undefined);
        let second = args.get(1).unwrap_or(&Value::Undefined);
        match self {
            B::Abs => math(first, f64::abs),
            B::Exp => math(first, f64::exp),
            B::Square => math(first, |x| x * x),
            B::Ceiling => math(first, f64::ceil),
            B::Floor => math(first, f64::floor),
            B::Sign => math(first, sign),
            B::Sqrt => math(first, f64::sqrt),
            B::Power => match (first, second) {
                (Value::Number(x), Value::Number(y)) => Value::number(x.powf(*y)),
                _ => Value::Undefined,
            },
            B::AsNumber => match first {
                Value::Number(n) => Value::Number(*n),
                Value::String(s) => parse_number(s).map_or(Value::Undefined, Value::number),
                _ => Value::Undefined,
            },
            B::IsBool => match (first_type, first) {
                (StaticType::Bool | StaticType::Dynamic, Value::Undefined) => Value::Undefined,
                (_, value) => Value::Bool(matches!(value, Value::Bool(_))),
            },
            B::IsDefined => Value::Bool(first.is_defined()),
            B::IsNull => is_null(first_type, first),
            B::IsNumber => Value::Bool(matches!(first, Value::Number(n) if n.is_finite())),
            B::IsString => Value::Bool(matches!(first, Value::String(_))),
            B::Concat => concat(args),
            B::Length => string(first, |s| Value::Number(s.encode_utf16().count() as f64)),
            B::Lower => string(first, |s| Value::String(Cow::Owned(s.to_lowercase()))),
            B::Upper => string(first, |s| Value::String(Cow::Owned(s.to_uppercase()))),
            B::Substring => substring(first, second, args.get(2)),
            B::IndexOf => strings(first, second, |s, f| {
                Value::Number(s.find(f).map_or(-1.0, |at| s[..at].encode_utf16().count() as f64))
            }),
            B::StartsWith => strings(first, second, |s, f| Value::Bool(s.starts_with(f))),
            B::EndsWith => strings(first, second, |s, f| Value::Bool(s.ends_with(f))),
            B::Contains => strings(first, second, |s, f| Value::Bool(s.contains(f))),
        }
    }
}

fn math<'a>(arg: &Value<'_>, f: fn(f64) -> f64) -> Value<'a> {
    match arg {
        Value::Number(x) => Value::number(f(*x)),
        _ => Value::Undefined,
    }
}

/// .NET `Math.Sign`: -1, 0 or 1 (Rust's `signum` gives 1 for +0).
fn sign(x: f64) -> f64 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        0.0
    }
}

fn string<'a>(arg: &Value<'_>, f: impl FnOnce(&str) -> Value<'a>) -> Value<'a> {
    match arg {
        Value::String(s) => f(s),
        _ => Value::Undefined,
    }
}

fn strings<'a>(a: &Value<'_>, b: &Value<'_>, f: impl FnOnce(&str, &str) -> Value<'a>) -> Value<'a> {
    match (a, b) {
        (Value::String(a), Value::String(b)) => f(a, b),
        _ => Value::Undefined,
    }
}

/// A property is a string that may be missing but is never null, so `is_null` of one is
/// false; `is_null(null)` is true. For a `$body` value IoT Edge compares references and
/// answers true for every defined value — a bug we do not copy: we answer whether it is null.
fn is_null<'a>(first_type: StaticType, value: &Value<'_>) -> Value<'a> {
    match (first_type, value) {
        (StaticType::Dynamic, Value::Undefined) => Value::Undefined,
        (_, Value::Null) => Value::Bool(true),
        _ => Value::Bool(false),
    }
}

fn concat<'a>(args: &[Value<'a>]) -> Value<'a> {
    let mut joined = String::new();
    for arg in args {
        match arg {
            Value::String(s) => joined.push_str(s),
            _ => return Value::Undefined,
        }
    }
    Value::String(Cow::Owned(joined))
}

/// `substring(s, start)` allows `start == length` (empty result); `substring(s, start, n)`
/// needs `start < length` and `start + n <= length`. Fractions are truncated (`Substring.cs`).
fn substring<'a>(text: &Value<'_>, start: &Value<'_>, count: Option<&Value<'_>>) -> Value<'a> {
    let (Value::String(text), Value::Number(start)) = (text, start) else {
        return Value::Undefined;
    };
    let units: Vec<u16> = text.encode_utf16().collect();
    let length = units.len() as f64;
    let range = match count {
        None if *start >= 0.0 && *start <= length => Some((*start as usize, units.len())),
        Some(Value::Number(n)) if *start >= 0.0 && *start < length && *n >= 0.0 && *n <= length - start => {
            let first = *start as usize;
            Some((first, first.saturating_add(*n as usize)))
        }
        _ => None,
    };
    match range.and_then(|(from, to)| units.get(from..to)) {
        Some(slice) => Value::String(Cow::Owned(String::from_utf16_lossy(slice))),
        None => Value::Undefined,
    }
}

/// `double.TryParse(s, NumberStyles.Any, InvariantCulture)` for the forms routes meet:
/// surrounding whitespace, a sign, thousands commas, a decimal point, an exponent,
/// `Infinity`, and a negative in parentheses. Currency symbols are not accepted.
fn parse_number(text: &str) -> Option<f64> {
    let trimmed = text.trim();
    let (negative, body) = match trimmed.strip_prefix('(').and_then(|t| t.strip_suffix(')')) {
        Some(inner) => (true, inner.trim()),
        None => (false, trimmed),
    };
    let unsigned = body.trim_start_matches(['+', '-']);
    // Rust also reads "inf" and "nan"; .NET reads neither ("Infinity" only, NaN is undefined).
    if unsigned.eq_ignore_ascii_case("inf") || unsigned.eq_ignore_ascii_case("nan") {
        return None;
    }
    let cleaned: String = body.chars().filter(|c| *c != ',').collect();
    let value: f64 = cleaned.parse().ok()?;
    Some(if negative { -value } else { value })
}
