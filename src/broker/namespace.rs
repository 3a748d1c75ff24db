//! Namespaces as the broker spells them: a topic or group `name` of namespace `ns` is the
//! broker-side name `ns%name`, its DLQ `%DLQ%ns%group` (and a retry topic `%RETRY%ns%group`),
//! exactly Apache RocketMQ's `NamespaceUtil` wrapping, so the rest of the broker works on
//! plain names and sees no namespace at all. Here: the rules of a namespace name, wrapping a
//! client's name into its namespace, splitting a broker-side name back into namespace and
//! client-side name, and the shape a `%` in any broker-side name must have (so that no
//! spelling reaches another namespace's resources). Proto-free: `grpc/` maps requests'
//! resources with it and `admin/` its paths.

use super::error::{BrokerError, BrokerResult};

/// Separates a namespace from a name (`NamespaceUtil.NAMESPACE_SEPARATOR`).
pub const SEPARATOR: char = '%';
/// Prefix of retry topics (`MixAll.RETRY_GROUP_TOPIC_PREFIX`).
pub const RETRY_PREFIX: &str = "%RETRY%";
/// Prefix of dead-letter topics (`MixAll.DLQ_GROUP_TOPIC_PREFIX`).
pub const DLQ_PREFIX: &str = "%DLQ%";
/// Longest namespace accepted.
pub const MAX_NAMESPACE_LEN: usize = 64;

/// What a name names: the errors differ (`ILLEGAL_TOPIC` or `ILLEGAL_CONSUMER_GROUP`), and
/// only topics have the retry/DLQ prefixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameKind {
    Topic,
    Group,
}

impl NameKind {
    fn noun(self) -> &'static str {
        match self {
            NameKind::Topic => "topic",
            NameKind::Group => "consumer group",
        }
    }

    fn illegal(self, message: String) -> BrokerError {
        match self {
            NameKind::Topic => BrokerError::IllegalTopic(message),
            NameKind::Group => BrokerError::IllegalConsumerGroup(message),
        }
    }
}

/// Checks a namespace name: 1 to [`MAX_NAMESPACE_LEN`] characters of `[a-zA-Z0-9_-]` (a
/// topic's characters without the `%` separator and `|`). `BAD_REQUEST` otherwise.
pub fn validate_namespace(namespace: &str) -> BrokerResult<()> {
    if namespace.is_empty() {
        return Err(BrokerError::BadRequest("namespace is empty".into()));
    }
    if namespace.len() > MAX_NAMESPACE_LEN {
        return Err(BrokerError::BadRequest(format!(
            "namespace `{namespace}` is {} characters, the limit is {MAX_NAMESPACE_LEN}",
            namespace.len()
        )));
    }
    if !namespace.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-')) {
        return Err(BrokerError::BadRequest(format!(
            "namespace `{}` contains characters outside [a-zA-Z0-9_-]",
            namespace.escape_debug()
        )));
    }
    Ok(())
}

/// A topic's retry/DLQ prefix and the rest (groups have no prefix).
fn strip_prefix(name: &str, kind: NameKind) -> (&str, &str) {
    if kind == NameKind::Topic {
        for prefix in [RETRY_PREFIX, DLQ_PREFIX] {
            if let Some(rest) = name.strip_prefix(prefix) {
                return (&name[..prefix.len()], rest);
            }
        }
    }
    ("", name)
}

/// The broker-side name of the topic or group `name` a client of `namespace` ("": none)
/// names (Apache's `NamespaceUtil.wrapNamespace`): `ns%name`, `%DLQ%ns%group` for the DLQ
/// topic `%DLQ%group`, `%RETRY%ns%group` likewise. System topics and groups (`TBW102`,
/// `CID_RMQ_SYS_*`, `rmq_sys_*`) are not wrapped: the broker refuses them as for any client.
///
/// Unlike Apache, a `%` in the name itself is refused (`ILLEGAL_TOPIC`/`ILLEGAL_CONSUMER_GROUP`):
/// no client reaches another namespace's resources by spelling `ns%name`, and a client with
/// a namespace cannot name one of another namespace either. A bad namespace is `BAD_REQUEST`.
pub fn wrap(namespace: &str, name: &str, kind: NameKind) -> BrokerResult<String> {
    if !namespace.is_empty() {
        validate_namespace(namespace)?;
    }
    let (prefix, rest) = strip_prefix(name, kind);
    if rest.contains(SEPARATOR) {
        return Err(kind.illegal(format!(
            "{} `{name}` contains `%`, which separates a namespace from a name: set the namespace in \
             the client's configuration (resource_namespace or the x-mq-namespace header) instead",
            kind.noun()
        )));
    }
    if namespace.is_empty() || rest.is_empty() || is_system(name, kind) {
        return Ok(name.to_string());
    }
    Ok(format!("{prefix}{namespace}{SEPARATOR}{rest}"))
}

fn is_system(name: &str, kind: NameKind) -> bool {
    match kind {
        NameKind::Topic => super::validate::is_system_topic(name),
        NameKind::Group => super::validate::is_system_group(name),
    }
}

/// A broker-side name taken apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parts<'a> {
    /// [`RETRY_PREFIX`], [`DLQ_PREFIX`] or "".
    pub prefix: &'a str,
    /// "" for a name outside any namespace.
    pub namespace: &'a str,
    /// The name without prefix and namespace.
    pub name: &'a str,
}

impl Parts<'_> {
    /// The name as a client of the namespace spells it: the prefix and the name (`%DLQ%group`).
    pub fn client_name(&self) -> String {
        format!("{}{}", self.prefix, self.name)
    }
}

/// Splits a broker-side topic or group name (Apache's `getNamespaceFromResource` and
/// `withoutNamespace`): `ns%t` → (`ns`, `t`), `%DLQ%ns%g` → (`ns`, `%DLQ%g`), `t` → ("", `t`).
pub fn split(name: &str) -> Parts<'_> {
    let (prefix, rest) = strip_prefix(name, NameKind::Topic);
    match rest.split_once(SEPARATOR) {
        Some((namespace, plain)) if !namespace.is_empty() => Parts { prefix, namespace, name: plain },
        _ => Parts { prefix, namespace: "", name: rest },
    }
}

/// Checks the `%`s of a broker-side name (topics: an optional `%RETRY%`/`%DLQ%` prefix, then
/// `name` or `namespace%name` with a valid namespace and a `%`-free name; groups the same
/// without prefix), so that every name is one some client of some namespace can spell.
pub fn check_shape(name: &str, kind: NameKind) -> BrokerResult<()> {
    let (_, rest) = strip_prefix(name, kind);
    let Some((namespace, plain)) = rest.split_once(SEPARATOR) else {
        return Ok(());
    };
    let shape = || {
        format!(
            "{} `{name}`: a `%` may only separate a namespace from a name (`namespace%name`{})",
            kind.noun(),
            if kind == NameKind::Topic { ", after an optional %RETRY% or %DLQ% prefix" } else { "" }
        )
    };
    if namespace.is_empty() || plain.is_empty() || plain.contains(SEPARATOR) {
        return Err(kind.illegal(shape()));
    }
    validate_namespace(namespace).map_err(|e| kind.illegal(format!("{}: {e}", shape())))
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: NameKind = NameKind::Topic;
    const G: NameKind = NameKind::Group;

    fn illegal_topic(r: BrokerResult<impl std::fmt::Debug>) -> bool {
        matches!(r, Err(BrokerError::IllegalTopic(_)))
    }

    #[test]
    fn wraps_like_apache() {
        assert_eq!(wrap("", "t", T).unwrap(), "t");
        assert_eq!(wrap("ns", "t", T).unwrap(), "ns%t");
        assert_eq!(wrap("ns", "g", G).unwrap(), "ns%g");
        assert_eq!(wrap("ns", "%DLQ%g", T).unwrap(), "%DLQ%ns%g");
        assert_eq!(wrap("ns", "%RETRY%g", T).unwrap(), "%RETRY%ns%g");
        assert_eq!(wrap("", "%DLQ%g", T).unwrap(), "%DLQ%g");
        // empty names stay empty (the broker then says the name is empty)
        assert_eq!(wrap("ns", "", T).unwrap(), "");
        // system resources are not wrapped (and then refused by the broker's validation)
        assert_eq!(wrap("ns", "TBW102", T).unwrap(), "TBW102");
        assert_eq!(wrap("ns", "rmq_sys_x", T).unwrap(), "rmq_sys_x");
        assert_eq!(wrap("ns", "CID_RMQ_SYS_x", G).unwrap(), "CID_RMQ_SYS_x");
        assert_eq!(wrap("MQ_INST-1_a", "t", T).unwrap(), "MQ_INST-1_a%t");
    }

    #[test]
    fn a_percent_in_the_name_is_refused() {
        // with or without a namespace: nobody reaches another namespace by spelling it
        assert!(illegal_topic(wrap("", "ns%t", T)));
        assert!(illegal_topic(wrap("ns", "ns%t", T)));
        assert!(illegal_topic(wrap("a", "b%t", T)));
        assert!(illegal_topic(wrap("", "%DLQ%ns%g", T)));
        assert!(illegal_topic(wrap("", "%t", T)));
        assert!(matches!(wrap("ns", "a%g", G), Err(BrokerError::IllegalConsumerGroup(_))));
        // groups have no DLQ prefix
        assert!(matches!(wrap("", "%DLQ%g", G), Err(BrokerError::IllegalConsumerGroup(_))));
    }

    #[test]
    fn bad_namespaces_are_refused() {
        for bad in ["a%b", "a b", "a|b", "ns\n", "é", &"n".repeat(MAX_NAMESPACE_LEN + 1)] {
            let e = wrap(bad, "t", T).unwrap_err();
            assert!(matches!(e, BrokerError::BadRequest(_)), "{bad:?}: {e:?}");
            assert!(e.to_string().contains("namespace"), "{e}");
        }
        assert!(validate_namespace(&"n".repeat(MAX_NAMESPACE_LEN)).is_ok());
        assert!(validate_namespace("").is_err());
        // even a system topic does not hide a bad namespace
        assert!(wrap("a b", "TBW102", T).is_err());
    }

    #[test]
    fn splits_back() {
        let p = split("ns%t");
        assert_eq!((p.prefix, p.namespace, p.name, p.client_name().as_str()), ("", "ns", "t", "t"));
        let p = split("%DLQ%ns%g");
        assert_eq!((p.prefix, p.namespace, p.client_name().as_str()), ("%DLQ%", "ns", "%DLQ%g"));
        let p = split("%RETRY%ns%g");
        assert_eq!((p.namespace, p.client_name().as_str()), ("ns", "%RETRY%g"));
        let p = split("%DLQ%g");
        assert_eq!((p.namespace, p.client_name().as_str()), ("", "%DLQ%g"));
        let p = split("t");
        assert_eq!((p.namespace, p.client_name().as_str()), ("", "t"));
        // Apache: a leading `%` is no namespace
        assert_eq!(split("%x").namespace, "");
        // round trip
        for (ns, name) in [("", "t"), ("a", "t"), ("a", "%DLQ%g"), ("", "%DLQ%g"), ("a-b_c", "x|y")] {
            let wrapped = wrap(ns, name, T).unwrap();
            let p = split(&wrapped);
            assert_eq!((p.namespace, p.client_name().as_str()), (ns, name), "{wrapped}");
        }
    }

    #[test]
    fn shapes() {
        for ok in ["t", "ns%t", "%DLQ%g", "%DLQ%ns%g", "%RETRY%ns%g", "a|b"] {
            assert!(check_shape(ok, T).is_ok(), "{ok}");
        }
        for bad in ["%t", "ns%", "a%b%c", "%DLQ%%g", "%DLQ%a%b%c", "a b%t", "%%"] {
            assert!(illegal_topic(check_shape(bad, T)), "{bad}");
        }
        assert!(check_shape("ns%g", G).is_ok());
        assert!(matches!(check_shape("%DLQ%g", G), Err(BrokerError::IllegalConsumerGroup(_))));
    }
}
