//! How `--json` output shows values that are not set: `null`, never the `0` or `""` that the
//! admin API's protobuf messages carry for "unset" (proto3 scalars have no absence).

use serde_json::Value;

/// `text`, or `null` when it is empty.
pub(crate) fn text(text: &str) -> Value {
    if text.is_empty() {
        Value::Null
    } else {
        Value::from(text)
    }
}

/// `n`, or `null` when it is 0 (a port, an id or a Unix time that is not set).
pub(crate) fn number(n: impl Into<i64>) -> Value {
    match n.into() {
        0 => Value::Null,
        n => Value::from(n),
    }
}

/// `text` when it is an IP address, else `null`: a host name is no address.
pub(crate) fn ip(text: &str) -> Value {
    match text.parse::<std::net::IpAddr>() {
        Ok(ip) => Value::from(ip.to_string()),
        Err(_) => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_values_are_null() {
        assert_eq!(text(""), Value::Null);
        assert_eq!(text("a"), Value::from("a"));
        assert_eq!(number(0u32), Value::Null);
        assert_eq!(number(7u32), Value::from(7));
        assert_eq!(
            number(1_765_000_000_000i64),
            Value::from(1_765_000_000_000i64)
        );
        assert_eq!(ip("node1.example"), Value::Null);
        assert_eq!(ip(""), Value::Null);
        assert_eq!(ip("10.0.0.1"), Value::from("10.0.0.1"));
        assert_eq!(ip("fd00::1"), Value::from("fd00::1"));
    }
}
