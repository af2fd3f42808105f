//! Name rules for modules, routes, registries and environment variables.
//!
//! The patterns are SchemaStore's `azure-iot-edge-deployment-2.0.json` (the schema IoT Edge's
//! tooling validates against). Each check returns the reason a name is refused; the caller
//! attaches the path.

/// Longest module name: IoT Hub module identities are at most 128 characters, and a module
/// without an identity cannot connect.
pub(crate) const MODULE_NAME_CHARS_MAX: usize = 128;

/// The system modules' names; user modules may not take them.
pub(crate) const EDGE_AGENT: &str = "edgeAgent";
pub(crate) const EDGE_HUB: &str = "edgeHub";

/// Module names: `^[a-zA-Z0-9_-]+$`, at most [`MODULE_NAME_CHARS_MAX`] characters.
pub(crate) fn check_module_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("module name is empty".to_string());
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    if !name.chars().all(allowed) {
        return Err("module names may contain only ASCII letters, digits, '_' and '-' (^[a-zA-Z0-9_-]+$)".to_string());
    }
    // All ASCII by now, so bytes are characters.
    if name.len() > MODULE_NAME_CHARS_MAX {
        return Err(format!(
            "module name is {} characters; IoT Hub allows at most {MODULE_NAME_CHARS_MAX}",
            name.len()
        ));
    }
    Ok(())
}

/// A user module's name: a module name that is not a system module's.
pub(crate) fn check_user_module_name(name: &str) -> Result<(), String> {
    check_module_name(name)?;
    if name == EDGE_AGENT || name == EDGE_HUB {
        return Err(format!("\"{name}\" is a system module; configure it under systemModules"));
    }
    Ok(())
}

/// Route and registry-credential names: `^[^\.\$# ]+$`. `what` is "route" or "registry".
pub(crate) fn check_key_name(name: &str, what: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!("{what} name is empty"));
    }
    if name.contains(['.', '$', '#', ' ']) {
        return Err(format!("{what} names may not contain '.', '$', '#' or spaces (^[^\\.\\$# ]+$)"));
    }
    Ok(())
}

/// Environment variable names: `^[^\+#$\s\.]+$`, and also no `=` or NUL, which no process
/// environment can hold (Docker would split `A=B` into a variable `A`).
pub(crate) fn check_env_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("environment variable name is empty".to_string());
    }
    let refused = |c: char| matches!(c, '+' | '#' | '$' | '.' | '=' | '\0') || c.is_whitespace();
    if name.chars().any(refused) {
        return Err("environment variable names may not contain '+', '#', '$', '.', '=', NUL or whitespace".to_string());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names_follow_the_schemastore_pattern() {
        for good in ["tempSensor", "a", "my_module-2", "X"] {
            assert_eq!(check_module_name(good), Ok(()), "{good}");
        }
        for bad in ["", "temp sensor", "a.b", "$edgeAgent", "modülé", "a/b"] {
            assert!(check_module_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_module_name(&"m".repeat(MODULE_NAME_CHARS_MAX)).is_ok());
        assert!(check_module_name(&"m".repeat(MODULE_NAME_CHARS_MAX + 1)).is_err());
    }

    #[test]
    fn user_modules_cannot_take_system_names() {
        assert!(check_user_module_name("edgeHub").is_err());
        assert!(check_user_module_name("edgeAgent").is_err());
        assert!(check_user_module_name("edgeHubBridge").is_ok());
    }

    #[test]
    fn route_and_registry_names_refuse_dot_dollar_hash_space() {
        assert_eq!(check_key_name("upstream", "route"), Ok(()));
        assert_eq!(check_key_name("my-acr_1", "registry"), Ok(()));
        for bad in ["", "a.b", "$x", "a#b", "a b"] {
            assert!(check_key_name(bad, "route").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn env_names_refuse_the_schema_characters_and_equals() {
        for good in ["NestedEdgeEnabled", "RUST_LOG", "a-b", "Ünïcode"] {
            assert_eq!(check_env_name(good), Ok(()), "{good}");
        }
        for bad in ["", "A+B", "A#B", "$A", "A B", "A\tB", "A.B", "A=B", "A\0B"] {
            assert!(check_env_name(bad).is_err(), "{bad:?}");
        }
    }
}
