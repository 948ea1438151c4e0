use crate::StoreError;

/// The longest heap name, in bytes (all allowed characters are ASCII).
pub const MAX_HEAP_NAME_LEN: usize = 128;

/// Checks a heap name: 1 to 128 characters from `[A-Za-z0-9._-]`, not starting with `.`.
///
/// The host checks every name before a store sees it; stores that map names onto paths or
/// keys should check again (defence in depth), since such a name can never escape a
/// directory or a key prefix.
///
/// ```
/// use mcp_v8_plugin_api::validate_heap_name;
/// assert!(validate_heap_name("project-1.v2").is_ok());
/// assert!(validate_heap_name("../etc/passwd").is_err());
/// ```
pub fn validate_heap_name(name: &str) -> Result<(), StoreError> {
    if name.is_empty() {
        return Err(StoreError::invalid_name("invalid heap name: it is empty"));
    }
    if name.len() > MAX_HEAP_NAME_LEN {
        return Err(StoreError::invalid_name(format!(
            "invalid heap name: {} characters, at most {MAX_HEAP_NAME_LEN} are allowed",
            name.chars().count()
        )));
    }
    if name.starts_with('.') {
        return Err(StoreError::invalid_name(format!(
            "invalid heap name '{name}': it must not start with '.'"
        )));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(StoreError::invalid_name(format!(
            "invalid heap name '{}': character {bad:?} is not allowed (use A-Z a-z 0-9 . _ -)",
            name.escape_default()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn accepts_the_allowed_alphabet() {
        for name in [
            "a",
            "A-z_0.9",
            "heap.",
            "x".repeat(128).as_str(),
            "-lead",
            "_x",
        ] {
            assert_eq!(validate_heap_name(name), Ok(()), "{name}");
        }
    }

    #[test]
    fn rejects_everything_else() {
        let long = "x".repeat(129);
        for name in [
            "", ".", "..", ".hidden", "../x", "a/b", "a\\b", "a b", "é", "a\0b", "a:b", &long,
        ] {
            let err = validate_heap_name(name).expect_err(name);
            assert_eq!(err.kind(), ErrorKind::InvalidName, "{name}");
            assert!(err.message().starts_with("invalid heap name"), "{err}");
        }
    }
}
