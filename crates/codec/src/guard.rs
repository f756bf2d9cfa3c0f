//! The last defence: a panic inside a decode call becomes a coded error.

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::task::Poll;

use crate::error::DecodeError;

/// Runs `future`; if polling it panics, ends with
/// [`DecodeError::DecoderPanicked`] instead of unwinding into the caller's
/// task. The future is not polled again after a panic.
pub(crate) async fn no_panic<T>(
    future: impl Future<Output = Result<T, DecodeError>>,
) -> Result<T, DecodeError> {
    let mut future = std::pin::pin!(future);
    std::future::poll_fn(move |cx| {
        match catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx))) {
            Ok(poll) => poll,
            Err(payload) => Poll::Ready(Err(DecodeError::DecoderPanicked {
                message: panic_message(payload.as_ref()),
            })),
        }
    })
    .await
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    let text = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a non-text panic payload");
    text.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_becomes_sf_codec_013_and_the_task_goes_on() {
        let result: Result<(), DecodeError> = no_panic(async {
            tokio::task::yield_now().await;
            let v: Vec<u8> = Vec::new();
            #[allow(clippy::indexing_slicing)]
            let _ = v[usize::MAX / 2];
            Ok(())
        })
        .await;
        let err = result.unwrap_err();
        assert_eq!(err.code(), "SF-CODEC-013");
        assert!(!err.is_retriable());
        assert!(err.to_string().contains("index out of bounds"), "{err}");
        assert_eq!(no_panic(async { Ok(7) }).await, Ok(7));
    }
}
