//! Route sinks (`INTO $upstream`, `INTO BrokeredEndpoint("/modules/m/inputs/i")`).
//!
//! As IoT Edge's `EndpointFactory`: `$upstream` in any case is the cloud; the one function is
//! `BrokeredEndpoint` (any case), whose address — taken as written between the quotes, after
//! trimming whitespace and one leading and one trailing `/` — must split into exactly four
//! `/`-separated parts, the second naming the module and the fourth its input.

use super::Endpoint;

const UPSTREAM: &str = "$upstream";
const BROKERED_ENDPOINT: &str = "BrokeredEndpoint";

/// `INTO $name`.
pub(crate) fn system_endpoint(name: &str) -> Result<Endpoint, String> {
    if name.eq_ignore_ascii_case(UPSTREAM) {
        Ok(Endpoint::Upstream)
    } else {
        Err(format!("unsupported system endpoint '{name}', expected {UPSTREAM}"))
    }
}

/// `INTO function("address")`; `address` is the raw text between the quotes.
pub(crate) fn function_endpoint(function: &str, address: &str) -> Result<Endpoint, String> {
    if !function.eq_ignore_ascii_case(BROKERED_ENDPOINT) {
        return Err(format!("unsupported endpoint function '{function}', expected {BROKERED_ENDPOINT}"));
    }
    let trimmed = address.trim();
    let trimmed = trimmed.strip_prefix('/').unwrap_or(trimmed);
    let trimmed = trimmed.strip_suffix('/').unwrap_or(trimmed);
    let parts: Vec<&str> = trimmed.split('/').collect();
    let [first, module, third, input] = parts.as_slice() else {
        return Err(format!("endpoint address {address:?} is not of the form /modules/{{module}}/inputs/{{input}}"));
    };
    // IoT Edge accepts an empty module or input, which no module can ever receive on.
    if module.is_empty() || input.is_empty() {
        return Err(format!("endpoint address {address:?} has an empty module or input name"));
    }
    // IoT Edge never looks at the first and third parts; neither do we, but say so.
    if !first.eq_ignore_ascii_case("modules") || !third.eq_ignore_ascii_case("inputs") {
        log::warn!("endpoint address {address:?} is read as module {module:?}, input {input:?}");
    }
    Ok(Endpoint::Module { module: (*module).to_string(), input: (*input).to_string() })
}
