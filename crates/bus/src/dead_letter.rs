//! Dead-letter records: the original key, value and headers of a record
//! that could not be processed, plus where it came from and why.

use rdkafka::Message;
use rdkafka::message::{Header, Headers, OwnedHeaders};

pub const REASON: &str = "sagaflow-dlq-reason";
/// A stable error code (`SF-…`).
pub const CODE: &str = "sagaflow-dlq-code";
pub const SOURCE_TOPIC: &str = "sagaflow-dlq-source-topic";
pub const SOURCE_PARTITION: &str = "sagaflow-dlq-source-partition";
pub const SOURCE_OFFSET: &str = "sagaflow-dlq-source-offset";

/// The headers of the dead letter for `m`: its own headers, then the
/// reason, the code and the source topic, partition and offset.
pub fn headers<M: Message>(m: &M, code: &str, reason: &str) -> OwnedHeaders {
    let mut headers = OwnedHeaders::new();
    if let Some(h) = m.headers() {
        for h in h.iter() {
            headers = headers.insert(Header {
                key: h.key,
                value: h.value,
            });
        }
    }
    let partition = m.partition().to_string();
    let offset = m.offset().to_string();
    for (key, value) in [
        (REASON, reason),
        (CODE, code),
        (SOURCE_TOPIC, m.topic()),
        (SOURCE_PARTITION, partition.as_str()),
        (SOURCE_OFFSET, offset.as_str()),
    ] {
        headers = headers.insert(Header {
            key,
            value: Some(value),
        });
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::Timestamp;
    use rdkafka::message::OwnedMessage;

    #[test]
    fn keeps_the_original_headers_and_adds_the_source_and_reason() {
        let original = OwnedHeaders::new().insert(Header {
            key: "traceparent",
            value: Some("00-abc-def-01"),
        });
        let m = OwnedMessage::new(
            Some(b"junk".to_vec()),
            Some(b"k".to_vec()),
            "orders.events".into(),
            Timestamp::NotAvailable,
            2,
            41,
            Some(original),
        );
        let h = headers(&m, "SF-CODEC-002", "wrong magic byte");
        let get = |k: &str| {
            h.iter()
                .find(|x| x.key == k)
                .and_then(|x| x.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        assert_eq!(get("traceparent").as_deref(), Some("00-abc-def-01"));
        assert_eq!(get(REASON).as_deref(), Some("wrong magic byte"));
        assert_eq!(get(CODE).as_deref(), Some("SF-CODEC-002"));
        assert_eq!(get(SOURCE_TOPIC).as_deref(), Some("orders.events"));
        assert_eq!(get(SOURCE_PARTITION).as_deref(), Some("2"));
        assert_eq!(get(SOURCE_OFFSET).as_deref(), Some("41"));
    }
}
