use rdkafka::message::{Header, Headers, OwnedHeaders};

/// Kafka header names on every Sagaflow message.
pub mod header_names {
    pub const SAGA_ID: &str = "sagaflow-saga-id";
    pub const MESSAGE_ID: &str = "sagaflow-message-id";
    pub const MESSAGE_TYPE: &str = "sagaflow-type";
    /// W3C trace context.
    pub const TRACEPARENT: &str = "traceparent";
    pub const TRACESTATE: &str = "tracestate";
}

/// The Sagaflow headers of one message. Absent or non-UTF-8 headers read
/// as `None`; the first occurrence of a repeated header wins. A
/// `tracestate` that is not a valid W3C list (or longer than 512 bytes)
/// reads as `None`: it is dropped, never an error
/// ([`sagaflow_trace::valid_tracestate`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SagaHeaders {
    pub saga_id: Option<String>,
    pub message_id: Option<String>,
    pub message_type: Option<String>,
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}

impl SagaHeaders {
    pub fn to_owned_headers(&self) -> OwnedHeaders {
        let mut headers = OwnedHeaders::new_with_capacity(5);
        for (key, value) in self.pairs() {
            if let Some(value) = value {
                headers = headers.insert(Header {
                    key,
                    value: Some(value.as_bytes()),
                });
            }
        }
        headers
    }

    pub fn from_headers<H: Headers>(headers: &H) -> Self {
        let mut out = Self::default();
        for header in headers.iter() {
            let Some(value) = header.value.and_then(|v| std::str::from_utf8(v).ok()) else {
                continue;
            };
            let slot = match header.key {
                header_names::SAGA_ID => &mut out.saga_id,
                header_names::MESSAGE_ID => &mut out.message_id,
                header_names::MESSAGE_TYPE => &mut out.message_type,
                header_names::TRACEPARENT => &mut out.traceparent,
                header_names::TRACESTATE => &mut out.tracestate,
                _ => continue,
            };
            if slot.is_none() {
                *slot = Some(value.to_owned());
            }
        }
        out.tracestate = out
            .tracestate
            .as_deref()
            .and_then(sagaflow_trace::valid_tracestate)
            .map(str::to_owned);
        out
    }

    fn pairs(&self) -> [(&'static str, Option<&String>); 5] {
        [
            (header_names::SAGA_ID, self.saga_id.as_ref()),
            (header_names::MESSAGE_ID, self.message_id.as_ref()),
            (header_names::MESSAGE_TYPE, self.message_type.as_ref()),
            (header_names::TRACEPARENT, self.traceparent.as_ref()),
            (header_names::TRACESTATE, self.tracestate.as_ref()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_kafka_headers() {
        let h = SagaHeaders {
            saga_id: Some("order-checkout:o-1".into()),
            message_id: Some("m-1".into()),
            message_type: Some("Command".into()),
            traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
            tracestate: None,
        };
        let owned = h.to_owned_headers();
        assert_eq!(owned.count(), 4);
        assert_eq!(SagaHeaders::from_headers(&owned), h);
        let h = SagaHeaders {
            tracestate: Some("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE".into()),
            ..h
        };
        let owned = h.to_owned_headers();
        assert_eq!(owned.count(), 5);
        assert_eq!(SagaHeaders::from_headers(&owned), h);
    }

    #[test]
    fn an_invalid_tracestate_is_dropped_and_the_rest_kept() {
        let too_long = format!("k={}", "v".repeat(600));
        for bad in ["no-equals-sign", "Key=v", too_long.as_str()] {
            let owned = OwnedHeaders::new()
                .insert(Header {
                    key: header_names::TRACEPARENT,
                    value: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
                })
                .insert(Header {
                    key: header_names::TRACESTATE,
                    value: Some(bad),
                });
            let read = SagaHeaders::from_headers(&owned);
            assert_eq!(read.tracestate, None, "{bad:?}");
            assert!(read.traceparent.is_some());
        }
    }

    #[test]
    fn ignores_foreign_and_binary_headers() {
        let owned = OwnedHeaders::new()
            .insert(Header {
                key: "x-other",
                value: Some("v"),
            })
            .insert(Header {
                key: header_names::SAGA_ID,
                value: Some(&[0xff, 0xfe][..]),
            })
            .insert(Header {
                key: header_names::MESSAGE_ID,
                value: None::<&str>,
            });
        assert_eq!(SagaHeaders::from_headers(&owned), SagaHeaders::default());
    }
}
