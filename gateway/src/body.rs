//! Reading a metered request's whole body before anything goes upstream, within three bounds:
//! its size (`gateway.max_body_bytes`: a declared length over it gets 413 before a byte is read,
//! a chunked body as soon as it grows past it), its time (`gateway.body_read_timeout_ms`: 408),
//! and the gateway's memory (`gateway.max_inflight_body_bytes`: every body's bytes are held from
//! one budget as they arrive and until its request ends; a request that finds no room waits a
//! moment, then gets 503 with `Retry-After`, rather than grow memory without bound).
//!
//! Bytes are held as they arrive, never on a declared length alone: a client that declares a
//! large body and sends nothing holds nothing, so idle connections cannot shut others out.
//! Chunks are kept as they came and joined once at the end, so a body takes its own size while
//! it is read, and twice that for the moment of the join.
//!
//! pingora replays a body read this early only through its 64 KiB retry buffer; the vendored
//! pingora-proxy lets `request_body_filter` send a body of any size (vendor/README.md).

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header;
use pingora::proxy::Session;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};

use crate::error::Refusal;

/// How long a request waits for room in the body budget before it is refused.
const ROOM_WAIT: Duration = Duration::from_secs(1);

/// The gateway-wide budget of request body bytes in flight.
#[derive(Debug, Clone)]
pub struct BodyBudget {
    bytes: Arc<Semaphore>,
}

/// Bytes of the budget one request holds; given back when it is dropped (with the request).
#[derive(Debug, Default)]
pub struct HeldBytes {
    permit: Option<OwnedSemaphorePermit>,
}

impl HeldBytes {
    /// How many bytes are held.
    pub fn len(&self) -> usize {
        self.permit
            .as_ref()
            .map_or(0, OwnedSemaphorePermit::num_permits)
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl BodyBudget {
    /// A budget of `total_bytes` (at most 2^61, tokio's limit).
    pub fn new(total_bytes: usize) -> BodyBudget {
        BodyBudget {
            bytes: Arc::new(Semaphore::new(total_bytes.min(Semaphore::MAX_PERMITS))),
        }
    }

    /// Bytes not held by any request.
    pub fn available(&self) -> usize {
        self.bytes.available_permits()
    }

    /// Adds `more` bytes to `held` if there is room now; false (nothing held) if not.
    pub fn try_hold(&self, held: &mut HeldBytes, more: usize) -> bool {
        let Ok(more) = u32::try_from(more) else {
            return false;
        };
        match Arc::clone(&self.bytes).try_acquire_many_owned(more) {
            Ok(permit) => {
                match &mut held.permit {
                    Some(existing) => existing.merge(permit),
                    None => held.permit = Some(permit),
                }
                true
            }
            Err(_) => false,
        }
    }

    /// Adds `more` bytes to `held`, waiting at most [`ROOM_WAIT`] for room.
    async fn hold(&self, held: &mut HeldBytes, more: usize) -> Result<(), Refusal> {
        if more == 0 {
            return Ok(());
        }
        let busy = || Refusal::bodies_in_flight(ROOM_WAIT.as_secs().max(1));
        let more = u32::try_from(more).map_err(|_| busy())?;
        // Room at once is the usual case: no timer for it.
        let permit = match Arc::clone(&self.bytes).try_acquire_many_owned(more) {
            Ok(permit) => permit,
            Err(TryAcquireError::NoPermits) => {
                tokio::time::timeout(ROOM_WAIT, Arc::clone(&self.bytes).acquire_many_owned(more))
                    .await
                    .map_err(|_| busy())?
                    .map_err(|_| busy())?
            }
            Err(TryAcquireError::Closed) => return Err(busy()),
        };
        match &mut held.permit {
            Some(existing) => existing.merge(permit),
            None => held.permit = Some(permit),
        }
        Ok(())
    }
}

/// The limits a body is read within.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    pub max_bytes: usize,
    pub read_timeout: Duration,
}

/// A request body read whole.
pub struct ReadBody {
    pub bytes: Bytes,
    /// True when the request declared exactly this length, and neither chunked encoding nor
    /// `Expect`: its headers can go upstream as they are.
    pub framed_as_is: bool,
}

/// Reads the whole request body, within `limits`, holding its bytes from `budget` in `held`.
pub async fn read(
    session: &mut Session,
    limits: BodyLimits,
    budget: &BodyBudget,
    held: &mut HeldBytes,
) -> Result<ReadBody, Refusal> {
    let declared = session
        .req_header()
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok());
    if declared.is_some_and(|len| len > limits.max_bytes) {
        return Err(Refusal::too_large(limits.max_bytes));
    }
    let expects_continue = session
        .req_header()
        .headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects_continue {
        session
            .write_continue_response()
            .await
            .map_err(|_| unreadable())?;
    }
    // One deadline for the whole body (one timer, not one a read).
    let bytes = tokio::time::timeout(
        limits.read_timeout,
        read_chunks(session, limits.max_bytes, budget, held),
    )
    .await
    .map_err(|_| Refusal::body_too_slow(limits.read_timeout))??;
    let headers = &session.req_header().headers;
    let framed_as_is = declared == Some(bytes.len())
        && headers.get_all(header::CONTENT_LENGTH).iter().count() == 1
        && !headers.contains_key(header::TRANSFER_ENCODING)
        && !headers.contains_key(header::EXPECT);
    Ok(ReadBody {
        bytes,
        framed_as_is,
    })
}

/// Reads the body's chunks to its end, within `max_bytes`, holding them from `budget`, and
/// joins them. A body that comes in one chunk (the usual case for a small one) is kept as it
/// came, without an allocation or a copy.
async fn read_chunks(
    session: &mut Session,
    max_bytes: usize,
    budget: &BodyBudget,
    held: &mut HeldBytes,
) -> Result<Bytes, Refusal> {
    let mut first: Option<Bytes> = None;
    let mut rest: Vec<Bytes> = Vec::new();
    let mut read = 0;
    while let Some(chunk) = session
        .read_request_body()
        .await
        .map_err(|_| unreadable())?
    {
        read += chunk.len();
        if read > max_bytes {
            return Err(Refusal::too_large(max_bytes));
        }
        if read > held.len() {
            budget.hold(held, read - held.len()).await?;
        }
        if first.is_none() {
            first = Some(chunk);
        } else {
            rest.push(chunk);
        }
    }
    Ok(match first {
        Some(only) if rest.is_empty() => only,
        first => {
            let mut joined = BytesMut::with_capacity(read);
            for chunk in first.iter().chain(&rest) {
                joined.extend_from_slice(chunk);
            }
            joined.freeze()
        }
    })
}

fn unreadable() -> Refusal {
    Refusal::bad_request("bad_body", "the request body could not be read".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_budget_waits_then_refuses_and_gives_back_what_a_request_held() {
        let budget = BodyBudget::new(1000);
        let mut first = HeldBytes::default();
        budget.hold(&mut first, 600).await.unwrap();
        budget.hold(&mut first, 300).await.unwrap();
        assert_eq!((first.len(), budget.available()), (900, 100));

        let mut second = HeldBytes::default();
        let refused = budget.hold(&mut second, 200).await.unwrap_err();
        assert_eq!(
            (refused.status, refused.retry_after_seconds),
            (503, Some(1))
        );
        assert!(second.is_empty());

        // Room made while it waits is taken.
        let waiting = {
            let budget = budget.clone();
            tokio::spawn(async move {
                let mut third = HeldBytes::default();
                budget.hold(&mut third, 500).await.map(|()| third.len())
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(first);
        assert_eq!(waiting.await.unwrap().unwrap(), 500);
        assert_eq!(budget.available(), 1000);
    }
}
