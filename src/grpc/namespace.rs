//! Namespaces on the wire: turns a request's `Resource` (and the `x-mq-namespace` header)
//! into the broker-side name `ns%name` (rules in [`crate::broker::namespace`]), and a
//! broker-side name back into the `Resource` (or client-side name) a client of that namespace
//! expects, for everything the gateway sends: routes, assignments, delivered messages, their
//! DLQ origin topic, and server-initiated telemetry commands.
//!
//! The effective namespace of a resource is its `resource_namespace`, else the header, else
//! none. Java, Go and Python send both (equal); Node sends most resources without namespace
//! and relies on the header; the Rust SDK sends no header. Both set and different is refused
//! with `BAD_REQUEST` rather than guessed.

use super::Context;
use crate::broker::namespace::{self, NameKind};
use crate::broker::{BrokerError, BrokerResult};
use crate::proto;

/// The namespace a resource is in: its own, else the header's.
fn effective<'a>(r: &'a proto::Resource, header: &'a str) -> BrokerResult<&'a str> {
    let own = r.resource_namespace.as_str();
    match (own, header) {
        ("", h) => Ok(h),
        (o, "") => Ok(o),
        (o, h) if o == h => Ok(o),
        (o, h) => Err(BrokerError::BadRequest(format!(
            "resource `{}` has resource_namespace `{}` but the x-mq-namespace header says `{}`; \
             they must be equal (or one of them empty)",
            r.name.escape_debug(),
            o.escape_debug(),
            h.escape_debug()
        ))),
    }
}

/// The broker-side name of a resource (`""` if absent: the broker then says what is missing).
pub fn internal_name(r: Option<&proto::Resource>, header: &str, kind: NameKind) -> BrokerResult<String> {
    let Some(r) = r else { return Ok(String::new()) };
    namespace::wrap(effective(r, header)?, &r.name, kind)
}

/// The resource a client sees for a broker-side name (Apache's `GrpcConverter.buildResource`):
/// `ns%t` → `{ns, t}`, `%DLQ%ns%g` → `{ns, %DLQ%g}`, `t` → `{"", t}`.
pub fn resource(internal: &str) -> proto::Resource {
    let parts = namespace::split(internal);
    proto::Resource { resource_namespace: parts.namespace.to_string(), name: parts.client_name() }
}

/// The name a client of the name's namespace uses for a broker-side name (a string field
/// such as a DLQ message's origin topic): `ns%t` → `t`.
pub fn client_name(internal: &str) -> String {
    namespace::split(internal).client_name()
}

impl Context {
    /// The broker-side name of a topic this request names.
    pub(super) fn topic(&self, r: Option<&proto::Resource>) -> BrokerResult<String> {
        internal_name(r, &self.namespace, NameKind::Topic)
    }

    /// The broker-side name of a consumer group this request names.
    pub(super) fn group(&self, r: Option<&proto::Resource>) -> BrokerResult<String> {
        internal_name(r, &self.namespace, NameKind::Group)
    }

    /// [`Context::topic`] and [`Context::group`].
    pub(super) fn topic_and_group(
        &self,
        topic: Option<&proto::Resource>,
        group: Option<&proto::Resource>,
    ) -> BrokerResult<(String, String)> {
        Ok((self.topic(topic)?, self.group(group)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(ns: &str, name: &str) -> proto::Resource {
        proto::Resource { resource_namespace: ns.into(), name: name.into() }
    }

    fn topic(ns: &str, name: &str, header: &str) -> BrokerResult<String> {
        internal_name(Some(&res(ns, name)), header, NameKind::Topic)
    }

    #[test]
    fn resource_or_header() {
        assert_eq!(topic("", "t", "").unwrap(), "t");
        assert_eq!(topic("a", "t", "").unwrap(), "a%t");
        // Node: the namespace in the header only
        assert_eq!(topic("", "t", "a").unwrap(), "a%t");
        assert_eq!(topic("a", "t", "a").unwrap(), "a%t");
        let e = topic("a", "t", "b").unwrap_err();
        assert!(matches!(e, BrokerError::BadRequest(_)), "{e:?}");
        assert!(e.to_string().contains("`a`") && e.to_string().contains("`b`"), "{e}");
        assert_eq!(internal_name(None, "a", NameKind::Group).unwrap(), "");
        assert_eq!(internal_name(Some(&res("a", "g")), "", NameKind::Group).unwrap(), "a%g");
        assert_eq!(topic("a", "%DLQ%g", "").unwrap(), "%DLQ%a%g");
    }

    #[test]
    fn refusals() {
        assert!(matches!(topic("", "a%t", ""), Err(BrokerError::IllegalTopic(_))));
        assert!(matches!(topic("", "t", "a%b"), Err(BrokerError::BadRequest(_))));
        assert!(matches!(topic("x y", "t", ""), Err(BrokerError::BadRequest(_))));
        let g = internal_name(Some(&res("a", "b%g")), "", NameKind::Group);
        assert!(matches!(g, Err(BrokerError::IllegalConsumerGroup(_))));
    }

    #[test]
    fn back_to_resources() {
        assert_eq!(resource("a%t"), res("a", "t"));
        assert_eq!(resource("t"), res("", "t"));
        assert_eq!(resource("%DLQ%a%g"), res("a", "%DLQ%g"));
        assert_eq!(resource("%DLQ%g"), res("", "%DLQ%g"));
        assert_eq!(client_name("a%t"), "t");
        assert_eq!(client_name("%DLQ%a%g"), "%DLQ%g");
        // and the way in again
        for (ns, name) in [("a", "t"), ("", "t"), ("a", "%DLQ%g")] {
            let internal = topic(ns, name, "").unwrap();
            assert_eq!(resource(&internal), res(ns, name));
        }
    }
}
