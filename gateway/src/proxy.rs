//! `impl ProxyHttp for Proxy`: each phase of one request, calling the modules that do the work.
//!
//! `request_filter` admits or refuses a request before anything reaches the upstream (route,
//! key, status, scope, the whole body priced and reserved); `upstream_request_filter` swaps the
//! sub-key for the master key; `response_filter` and `response_body_filter` meter the response
//! as it streams, untouched; `logging` settles. See docs/gateway-phases.md.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use domain::Money;
use domain::services::openrouter::{
    AUTO_ROUTERS, MeterOutcome, NoUsage, PriceError, Quote, UsageMeter, pricing,
};
use domain::services::{
    Api, ChargeBasis, ErrorShape, Fit, LocalRoute, ResponseMeter, Route, RouteRefusal,
    ServiceAdapter,
};
use http::header;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource};
use time::OffsetDateTime;

use crate::auth::{KeyEntry, bearer};
use crate::body::{self, BodyLimits, HeldBytes, ReadBody};
use crate::error::{Refusal, error_body_in};
use crate::flusher::Settled;
use crate::generations::{GENERATION_ID_HEADER, id_in_query};
use crate::lease::{self, LeaseShort};
use crate::model_list::{MAX_LIST_BYTES, cut_to_scope};
use crate::reconcile::Pending;
use crate::state::{Charge, Gateway, LookupError, MasterKey};

/// The proxy: one per gateway, shared by all requests.
pub struct Proxy {
    pub gateway: Arc<Gateway>,
}

/// What one request carries from phase to phase.
pub struct RequestCtx {
    gateway: Arc<Gateway>,
    started: Instant,
    key: Option<Arc<KeyEntry>>,
    master: Option<Arc<MasterKey>>,
    /// The body to send upstream, read ahead and perhaps rewritten.
    body: Option<Bytes>,
    /// The body's bytes in the gateway's budget of bodies in flight, held to the end.
    held: HeldBytes,
    /// Whether the request's framing headers must be replaced by the body's length: it was
    /// rewritten, sent chunked or with `Expect`, or its declared length was not its length.
    reframe_body: bool,
    /// Boxed: pingora moves this state, inside its futures, several times per request, and a
    /// metered request's part is most of it.
    metered: Option<Box<Metered>>,
    upstream_started: Option<Instant>,
    /// True once the whole request was handed to an upstream connection: from then on the
    /// upstream may bill it, whether or not an answer comes back.
    sent_upstream: bool,
    outcome: &'static str,
    /// The shape the route's clients expect errors in.
    error_shape: ErrorShape,
    /// A model list to cut to a key's scope: the scope, and the list's bytes so far.
    model_list: Option<Box<ModelListCut>>,
    /// The generation id a `GET /api/v1/generation` was checked for: the only one sent on.
    generation_id: Option<String>,
}

struct ModelListCut {
    scope: Vec<String>,
    body: Vec<u8>,
    too_long: bool,
}

impl Drop for RequestCtx {
    /// pingora drops requests still running when its shutdown grace period ends, without
    /// calling `logging`: settle them here, as any request whose outcome is unknown (the
    /// reservation if it reached the upstream, nothing if not), so no reservation is lost.
    fn drop(&mut self) {
        let (Some(key), Some(metered)) = (self.key.take(), self.metered.take()) else {
            return;
        };
        let charge = if self.sent_upstream {
            metered.reservation
        } else {
            Money::ZERO
        };
        key.budget.settle(metered.reservation, charge);
        tracing::warn!(key.id = %key.id, %charge, "request cut off by shutdown; charged its reservation");
        if charge > Money::ZERO {
            let usage = Settled {
                prompt_tokens: 0,
                completion_tokens: 0,
                cost_nanousd: charge.nanos(),
            };
            self.gateway
                .outbox
                .record(&key, usage, OffsetDateTime::now_utc(), &metered.model);
        }
    }
}

struct Metered {
    api: Api,
    /// The model asked for, for the log line of a charge above the reservation.
    model: String,
    quote: Quote,
    reservation: Money,
    meter: Option<UsageMeter>,
    /// The generation the upstream named in its answer, recorded as the key's.
    generation_id: Option<http::HeaderValue>,
}

enum Admit {
    Forward,
    Answered,
    /// A load balancer's probe, answered (`health.rs`).
    Probe,
}

#[async_trait]
impl ProxyHttp for Proxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            gateway: Arc::clone(&self.gateway),
            started: Instant::now(),
            key: None,
            master: None,
            body: None,
            held: HeldBytes::default(),
            reframe_body: false,
            metered: None,
            upstream_started: None,
            sent_upstream: false,
            outcome: "forwarded",
            error_shape: ErrorShape::OpenAi,
            model_list: None,
            generation_id: None,
        }
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<bool> {
        match self.admit(session, ctx).await {
            Ok(Admit::Forward) => Ok(false),
            Ok(Admit::Answered) => {
                ctx.outcome = "answered";
                Ok(true)
            }
            Ok(Admit::Probe) => {
                ctx.outcome = "probe";
                Ok(true)
            }
            Err(refusal) => {
                self.gateway
                    .metrics
                    .refusals_total
                    .with_label_values(&[refusal.reason])
                    .inc();
                ctx.outcome = "refused";
                respond_refusal(session, &refusal, ctx.error_shape).await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<Box<HttpPeer>> {
        let now = Instant::now();
        if ctx.upstream_started.is_none() {
            self.gateway
                .metrics
                .added_latency_seconds
                .observe((now - ctx.started).as_secs_f64());
        }
        ctx.upstream_started = Some(now);
        let upstream = &self.gateway.upstream;
        // An IP upstream was parsed once at start; a host name is looked up per request, so
        // DNS changes are followed.
        let addr = match upstream.ip_addr {
            Some(addr) => addr,
            None => tokio::net::lookup_host((upstream.host.as_str(), upstream.port))
                .await
                .ok()
                .and_then(|mut addrs| addrs.next())
                .ok_or_else(|| {
                    Error::explain(
                        pingora::ErrorType::ConnectNoRoute,
                        format!("cannot resolve upstream host {}", upstream.host),
                    )
                })?,
        };
        // The host name goes in the TLS handshake (SNI); a plain upstream needs none.
        let sni = if upstream.tls {
            upstream.host.clone()
        } else {
            String::new()
        };
        let mut peer = HttpPeer::new(addr, upstream.tls, sni);
        peer.options.connection_timeout = Some(Duration::from_secs(10));
        peer.options.total_connection_timeout = Some(Duration::from_secs(20));
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        upstream_request.insert_header(header::HOST, self.gateway.upstream.host_header.clone())?;
        if let Some(master) = &ctx.master {
            // Marked sensitive: a debug print of the request shows no key.
            let credential = master.credential().cloned().ok_or_else(|| {
                Error::explain(
                    pingora::ErrorType::InvalidHTTPHeader,
                    "the master key is not a valid header value",
                )
            })?;
            upstream_request.insert_header(self.gateway.credential_header(), credential)?;
        }
        // A sub-key sent as `x-api-key` (Anthropic's clients) goes no further.
        upstream_request.remove_header("x-api-key");
        if let Some(id) = &ctx.generation_id {
            // Exactly the id checked, whatever else the query held (a second `id`).
            let id: String = form_urlencoded::byte_serialize(id.as_bytes()).collect();
            let uri = format!("/api/v1/generation?id={id}");
            upstream_request.set_uri(uri.parse().map_err(|_| {
                Error::explain(pingora::ErrorType::InvalidHTTPHeader, "bad generation id")
            })?);
        }
        if ctx.model_list.is_some() {
            // The whole list, fresh, in one answer: it is cut at its end.
            for name in [
                "range",
                "if-range",
                "if-none-match",
                "if-modified-since",
                "expect",
            ] {
                upstream_request.remove_header(name);
            }
        }
        // Metering reads the bytes as they pass: ask for them uncompressed.
        upstream_request.remove_header(&header::ACCEPT_ENCODING);
        // The body read ahead goes with a length; the client's own framing stays when it is
        // already that (the usual case).
        if let Some(body) = &ctx.body
            && ctx.reframe_body
        {
            upstream_request.insert_header(header::CONTENT_LENGTH, body.len())?;
            upstream_request.remove_header(&header::TRANSFER_ENCODING);
            upstream_request.remove_header(&header::EXPECT);
        }
        Ok(())
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        // The body was read ahead; pingora replays it once per upstream attempt.
        if let Some(ready) = &ctx.body {
            *body = Some(if end_of_stream {
                ready.clone()
            } else {
                Bytes::new()
            });
        }
        if end_of_stream {
            ctx.sent_upstream = true;
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        if let Some(metered) = &mut ctx.metered {
            let content_type = upstream_response
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok());
            metered.meter = Some(self.gateway.adapter.meter(
                metered.api,
                upstream_response.status.as_u16(),
                content_type,
            ));
            metered.generation_id = upstream_response.headers.get(GENERATION_ID_HEADER).cloned();
        }
        if ctx.model_list.is_some() && !upstream_response.status.is_informational() {
            if upstream_response.status == http::StatusCode::OK {
                // The list is rewritten at its end: its length is not known yet.
                upstream_response.remove_header(&header::CONTENT_LENGTH);
                upstream_response.insert_header(header::TRANSFER_ENCODING, "chunked")?;
            } else {
                ctx.model_list = None;
            }
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<Option<Duration>> {
        if let Some(cut) = ctx.model_list.as_deref_mut() {
            if let Some(chunk) = body.take()
                && !cut.too_long
            {
                // The list's bytes are held in the gateway's budget of bodies in flight; a list
                // past its limit, or with no room, becomes an empty one.
                cut.too_long = cut.body.len() + chunk.len() > MAX_LIST_BYTES
                    || !self.gateway.bodies.try_hold(&mut ctx.held, chunk.len());
                if cut.too_long {
                    cut.body = Vec::new();
                } else {
                    cut.body.extend_from_slice(&chunk);
                }
            }
            if end_of_stream {
                *body = Some(Bytes::from(cut_to_scope(&cut.body, &cut.scope)));
            }
            return Ok(None);
        }
        if let (
            Some(Metered {
                meter: Some(meter), ..
            }),
            Some(chunk),
        ) = (ctx.metered.as_deref_mut(), body.as_ref())
        {
            meter.feed(chunk);
        }
        Ok(None)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let status = match e.etype() {
            pingora::ErrorType::HTTPStatus(code) => *code,
            _ if e.esource() == &ErrorSource::Downstream => 400,
            _ => 502,
        };
        if session.response_written().is_none() {
            let message = match e.esource() {
                ErrorSource::Upstream => format!(
                    "the upstream could not be reached or failed: {}",
                    e.etype().as_str()
                ),
                ErrorSource::Downstream => "the request could not be read".to_string(),
                _ => "the gateway could not complete the request".to_string(),
            };
            if e.esource() == &ErrorSource::Upstream {
                ctx.outcome = "upstream_error";
                self.gateway
                    .metrics
                    .upstream_errors_total
                    .with_label_values(&[e.etype().as_str()])
                    .inc();
            }
            let _ = respond(
                session,
                status,
                error_body_in(ctx.error_shape, status, &message, "provider_unavailable"),
            )
            .await;
        }
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let metrics = self.gateway.metrics;
        if let Some(started) = ctx.upstream_started {
            metrics
                .upstream_duration_seconds
                .observe(started.elapsed().as_secs_f64());
        }
        metrics.count_request(ctx.outcome);
        let (Some(key), Some(metered)) = (ctx.key.take(), ctx.metered.take()) else {
            return;
        };
        let outcome = match metered.meter {
            Some(meter) => meter.finish(),
            // The request never reached an upstream connection: nothing can have been billed.
            None if !ctx.sent_upstream => {
                key.budget.settle(metered.reservation, Money::ZERO);
                self.gateway.leases.list(&key);
                metrics.count_settlement(ChargeBasis::NotBilled);
                return;
            }
            // Sent, but no answer header (the client hung up first, or the upstream failed
            // while generating): the upstream may bill it, so the reservation is charged.
            None => MeterOutcome::Nothing {
                reason: NoUsage::NoResponse,
            },
        };
        let settlement = self
            .gateway
            .adapter
            .settle(&metered.quote, metered.reservation, &outcome);
        let client_gone = e.is_some_and(|e| e.esource() == &ErrorSource::Downstream);
        if settlement.basis == ChargeBasis::Reservation
            && let Some(pending) = self.reconcilable(
                &key,
                ctx.master.as_deref(),
                &metered.model,
                &metered.quote,
                metered.reservation,
                metered.generation_id.as_ref(),
            )
        {
            // The reservation stays held until the upstream says what it billed.
            tracing::info!(
                key.id = %key.id,
                generation = %pending.upstream_id,
                reserved = %metered.reservation,
                client_hung_up = client_gone,
                "no reported cost ({}): asking the upstream what it billed",
                settlement.note.as_deref().unwrap_or("none")
            );
            self.gateway
                .generations
                .record(&pending.upstream_id, key.id);
            self.gateway.reconciler.start(&self.gateway, pending);
            return;
        }
        if let Some(note) = &settlement.note {
            tracing::info!(
                key.id = %key.id,
                charge = %settlement.charge,
                basis = settlement.basis.as_str(),
                client_hung_up = client_gone,
                status = session.response_written().map(|h| h.status.as_u16()),
                "settled without a reported cost: {note}"
            );
        }
        let (prompt_tokens, completion_tokens) = match &outcome {
            MeterOutcome::Reported { usage, .. } | MeterOutcome::TokensOnly { usage } => {
                (usage.prompt_tokens, usage.completion_tokens)
            }
            MeterOutcome::Nothing { .. } => (0, 0),
        };
        self.gateway.charge(
            &key,
            Charge {
                reservation: metered.reservation,
                usage: Settled {
                    prompt_tokens: i64::try_from(prompt_tokens).unwrap_or(i64::MAX),
                    completion_tokens: i64::try_from(completion_tokens).unwrap_or(i64::MAX),
                    cost_nanousd: settlement.charge.nanos(),
                },
                basis: settlement.basis,
                at: OffsetDateTime::now_utc(),
                model: &metered.model,
            },
        );
        if let Some(id) = metered.generation_id.as_ref().and_then(|v| v.to_str().ok()) {
            self.gateway.generations.record(id, key.id);
        }
    }
}

impl Proxy {
    /// A request charged its reservation that the upstream can be asked about: it named the
    /// request, the adapter knows where to ask, and asking is on.
    fn reconcilable(
        &self,
        key: &Arc<KeyEntry>,
        master: Option<&MasterKey>,
        model: &str,
        quote: &Quote,
        reservation: Money,
        generation_id: Option<&http::HeaderValue>,
    ) -> Option<Pending> {
        if self.gateway.config.reconcile_attempts == 0 {
            return None;
        }
        let upstream_id = generation_id?.to_str().ok()?;
        Some(Pending {
            key: Arc::clone(key),
            quote: quote.clone(),
            reservation,
            model: model.to_string(),
            lookup_path: self.gateway.adapter.cost_lookup_path(upstream_id)?,
            upstream_id: upstream_id.to_string(),
            credential: master?.credential()?.clone(),
            ended_at: OffsetDateTime::now_utc(),
        })
    }

    async fn admit(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<Admit, Refusal> {
        let gateway = &self.gateway;
        let head = session.req_header();
        if let Some(probe) = crate::health::probe(head.method.as_str(), head.uri.path()) {
            let (status, body) = crate::health::answer(probe, gateway);
            respond(session, status, body)
                .await
                .map_err(|_| Refusal::bad_request("write", "response failed".into()))?;
            return Ok(Admit::Probe);
        }
        let request = session.req_header();
        let header_bytes = request.uri.path_and_query().map_or(0, |p| p.as_str().len())
            + request
                .headers
                .iter()
                .map(|(name, value)| name.as_str().len() + value.len() + 4)
                .sum::<usize>();
        if header_bytes > crate::config::MAX_HEADER_BYTES {
            return Err(Refusal::headers_too_large(crate::config::MAX_HEADER_BYTES));
        }
        let path = request
            .uri
            .path_and_query()
            .map_or(request.uri.path(), |p| p.as_str());
        let route = gateway.adapter.route(request.method.as_str(), path);
        if let Route::Metered(api) = route {
            ctx.error_shape = api.error_shape();
        }
        match route {
            Route::Refused(RouteRefusal::UnknownPath) => {
                return Err(Refusal::not_found(format!(
                    "{} is not served through keycap: use /api/v1/chat/completions, \
                     /api/v1/completions, /api/v1/responses, /api/v1/messages or \
                     /api/v1/embeddings",
                    request.uri.path()
                )));
            }
            Route::Refused(refusal @ RouteRefusal::WrongMethod { .. }) => {
                return Err(Refusal::wrong_method(refusal.to_string()));
            }
            _ => {}
        }
        // `Authorization: Bearer`, or `x-api-key` as Anthropic's SDKs send it.
        let token = bearer(
            request
                .headers
                .get(header::AUTHORIZATION)
                .map(|v| v.as_bytes()),
        )
        .or_else(|| {
            let value = request.headers.get("x-api-key")?.to_str().ok()?.trim();
            (!value.is_empty()).then_some(value)
        })
        .ok_or_else(Refusal::missing_key)?;
        domain::token::check_shape(token)
            .map_err(|err| Refusal::malformed_key(&err.to_string()))?;
        let key = gateway
            .key_for(domain::token::hash_token(token))
            .await
            .map_err(|err| match err {
                LookupError::Busy => Refusal::unavailable("lookups_busy", err.to_string()),
                err => Refusal::unavailable("database", err.to_string()),
            })?
            .ok_or_else(Refusal::unknown_key)?;
        let info = key.info();
        match info.close_reason.as_deref() {
            Some("revoked") => return Err(Refusal::revoked(&info.prefix)),
            Some(_) => return Err(Refusal::expired(&info.prefix)),
            None => {}
        }
        if info.expires_at.is_some()
            && domain::budget::is_expired(info.expires_at, OffsetDateTime::now_utc())
        {
            return Err(Refusal::expired(&info.prefix));
        }
        if let Some(reason) = &info.paused_reason {
            return Err(Refusal::paused(reason));
        }
        let master = gateway
            .master_key(info.master_key_id)
            .await
            .map_err(|err| Refusal::unavailable("vault", err.to_string()))?;
        if master.revoked || master.org_id != key.org_id {
            return Err(Refusal::master_key_revoked());
        }
        if let Route::Local(local) = route {
            let body = match local {
                LocalRoute::KeyInfo => key_info_body(&key),
                LocalRoute::Credits => credits_body(&key),
            };
            respond(session, 200, body)
                .await
                .map_err(|_| Refusal::bad_request("write", "response failed".into()))?;
            return Ok(Admit::Answered);
        }
        if route == Route::OwnGeneration {
            let query = session.req_header().uri.query();
            let id = id_in_query(query).ok_or_else(|| {
                Refusal::bad_request(
                    "bad_query",
                    "name the generation: GET /api/v1/generation?id=gen-...".into(),
                )
            })?;
            if !gateway.generations.made_by(&id, key.id) {
                return Err(Refusal::generation_not_found());
            }
            ctx.generation_id = Some(id);
        }
        // Every request that goes upstream uses the key's rate, free ones too: they use the
        // master key's rate at the upstream.
        let taken = match info.rate_limit_rpm {
            Some(rpm) => Some(crate::rate_limit::acquire(gateway, &key, rpm).await?),
            None => None,
        };
        let Route::Metered(api) = route else {
            // Free: forwarded as it is, but a scoped key's model list is cut to its scope.
            if route == Route::ModelList && !info.model_scope.is_empty() {
                ctx.model_list = Some(Box::new(ModelListCut {
                    scope: info.model_scope.clone(),
                    body: Vec::new(),
                    too_long: false,
                }));
            }
            ctx.master = Some(master);
            return Ok(Admit::Forward);
        };
        ctx.key = Some(Arc::clone(&key));

        // A request refused from here on (body, scope, prices, budget) gives its rate-limit
        // slot back: only requests that go upstream use the rate.
        let admitted = async {
            let limits = BodyLimits {
                max_bytes: gateway.config.max_body_bytes,
                read_timeout: gateway.config.body_read_timeout,
            };
            let ReadBody { bytes: body, .. } =
                body::read(session, limits, &gateway.bodies, &mut ctx.held).await?;
            let parsed = gateway
                .adapter
                .parse_request(api, &body)
                .map_err(|err| Refusal::bad_request("bad_body", err.to_string()))?;
            if !info.model_scope.is_empty() {
                let in_scope = |model: &String| info.model_scope.iter().any(|m| m == model);
                let mut routes = std::iter::once(&parsed.model).chain(&parsed.fallback_models);
                if let Some(model) = routes.clone().find(|model| !in_scope(model)) {
                    return Err(Refusal::out_of_scope(model));
                }
                // The auto router picks among its allowed models: a scoped key names them,
                // each in its scope.
                if let Some(router) = routes
                    .find(|model| AUTO_ROUTERS.contains(&pricing::without_routing_suffix(model)))
                    && (parsed.auto_allowed.is_empty() || !parsed.auto_allowed.iter().all(in_scope))
                {
                    return Err(Refusal::out_of_scope_router(router));
                }
            }
            let prices = gateway.prices.get();
            if prices.is_empty() && gateway.config.openrouter.unpriced_ceiling.is_none() {
                return Err(Refusal::unavailable(
                    "no_prices",
                    "the gateway has not loaded the upstream's prices yet: retry in a moment"
                        .into(),
                ));
            }
            let quote = gateway
                .adapter
                .quote(&parsed, &prices)
                .map_err(|err| match err {
                    PriceError::UnknownModel { .. } | PriceError::NoAutoModel { .. } => {
                        Refusal::bad_request("unknown_model", err.to_string())
                    }
                    PriceError::Unbounded(_) => {
                        Refusal::bad_request("unbounded_request", err.to_string())
                    }
                    other => Refusal::bad_request("unpriced_model", other.to_string()),
                })?;
            let adapter = &gateway.adapter;
            let fit = lease::reserve(gateway, &key, |remaining| adapter.fit(&quote, remaining))
                .await
                .map_err(|err| match err {
                    LeaseShort::Closed { revoked: true } => Refusal::revoked(&info.prefix),
                    LeaseShort::Closed { revoked: false } => Refusal::expired(&info.prefix),
                    err => Refusal::unavailable("lease_short", err.to_string()),
                })?;
            let reservation = match fit {
                Fit::AsRequested { reserve } | Fit::Lowered { reserve, .. } => reserve,
                Fit::Refuse { need_at_least } => {
                    return Err(Refusal::budget(key.budget.remaining(), need_at_least));
                }
            };
            // Every admitted body goes upstream with its bounds written in (the completion
            // limit reserved for, `provider.max_price`, ...), so the upstream cannot bill past
            // the reservation.
            let body = match adapter.bound_request(api, &quote, &fit, &body) {
                Ok(bounded) => Bytes::from(bounded),
                Err(err) => {
                    key.budget.settle(reservation, Money::ZERO);
                    gateway.leases.list(&key);
                    return Err(Refusal::bad_request("bad_body", err.to_string()));
                }
            };
            let reframe_body = true;
            ctx.body = Some(body);
            ctx.reframe_body = reframe_body;
            ctx.metered = Some(Box::new(Metered {
                api,
                model: parsed.model,
                quote,
                reservation,
                meter: None,
                generation_id: None,
            }));
            ctx.master = Some(master);
            Ok(Admit::Forward)
        }
        .await;
        if admitted.is_err()
            && let Some(taken) = taken
        {
            key.rate.release(taken);
        }
        admitted
    }
}

/// Writes a whole JSON response.
async fn respond(session: &mut Session, status: u16, body: Bytes) -> pingora::Result<()> {
    respond_with(session, status, body, None).await
}

/// Answers with a refusal's status and body in `shape` (and `Retry-After` for a rate limit).
async fn respond_refusal(
    session: &mut Session,
    refusal: &Refusal,
    shape: ErrorShape,
) -> pingora::Result<()> {
    respond_with(
        session,
        refusal.status,
        refusal.body_in(shape),
        refusal.retry_after_seconds,
    )
    .await
}

async fn respond_with(
    session: &mut Session,
    status: u16,
    body: Bytes,
    retry_after_seconds: Option<u64>,
) -> pingora::Result<()> {
    let mut header = ResponseHeader::build(status, Some(3))?;
    header.insert_header("content-type", "application/json")?;
    header.insert_header("content-length", body.len())?;
    if let Some(seconds) = retry_after_seconds {
        header.insert_header("retry-after", seconds)?;
    }
    if !body_read_whole(session).await {
        // The rest of the request body is still on the connection: it cannot carry another.
        session.set_keepalive(None);
    }
    session
        .write_response_header(Box::new(header), false)
        .await?;
    session.write_response_body(Some(body), true).await?;
    Ok(())
}

/// The most of an unread request body read and dropped before an answer, so that the
/// connection can carry the client's next request (a refused request, a local answer): a flood
/// of refused requests then costs no new connection each. A larger or chunked body, or one
/// that does not arrive within [`DRAIN_TIMEOUT`], closes the connection instead.
const DRAIN_LIMIT: u64 = 16 * 1024;
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

/// Whether the request's body has been read to its end, reading a small rest if need be. A
/// chunked body never counts (pingora calls one whose framing was malformed done, and what
/// follows it must not be read as a next request), nor one whose client waits for a
/// `100 Continue` that was not sent.
async fn body_read_whole(session: &mut Session) -> bool {
    let headers = &session.req_header().headers;
    if headers.contains_key(header::TRANSFER_ENCODING) {
        return false;
    }
    let expects_continue = headers.contains_key(header::EXPECT);
    let small = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok())
        .is_some_and(|length| length <= DRAIN_LIMIT);
    if session.is_body_done() {
        return true;
    }
    small
        && !expects_continue
        && matches!(
            tokio::time::timeout(DRAIN_TIMEOUT, session.drain_request_body()).await,
            Ok(Ok(()))
        )
}

/// `GET /api/v1/key` for a sub-key, in OpenRouter's shape. Money is written as exact decimal
/// dollars from nano-dollars, without a float.
fn key_info_body(key: &KeyEntry) -> Bytes {
    let info = key.info();
    let (cap, spent, remaining) = (key.budget.cap(), key.budget.spent(), key.budget.left());
    let expires = info
        .expires_at
        .and_then(|at| {
            at.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .map_or("null".to_string(), |text| {
            serde_json::Value::from(text).to_string()
        });
    let label = serde_json::Value::from(format!("{} ({})", info.prefix, info.name)).to_string();
    let rate_limit = match info.rate_limit_rpm {
        Some(rpm) => format!("{{\"requests\":{rpm},\"interval\":\"1m\"}}"),
        None => "{\"requests\":-1,\"interval\":\"1m\",\"note\":\"no rate limit on this key\"}"
            .to_string(),
    };
    let body = format!(
        concat!(
            "{{\"data\":{{\"label\":{label},\"limit\":{cap},\"limit_remaining\":{remaining},",
            "\"limit_reset\":null,\"include_byok_in_limit\":false,\"usage\":{spent},",
            "\"usage_daily\":null,\"usage_weekly\":null,\"usage_monthly\":{spent},",
            "\"byok_usage\":0,\"byok_usage_daily\":0,\"byok_usage_weekly\":0,\"byok_usage_monthly\":0,",
            "\"is_free_tier\":false,\"is_management_key\":false,\"is_provisioning_key\":false,",
            "\"expires_at\":{expires},\"creator_user_id\":null,",
            "\"rate_limit\":{rate_limit}}}}}"
        ),
        rate_limit = rate_limit,
        label = label,
        cap = usd_number(cap),
        remaining = usd_number(remaining),
        spent = usd_number(spent),
        expires = expires,
    );
    Bytes::from(body)
}

/// `GET /api/v1/credits` for a sub-key, in OpenRouter's shape: the key's cap as its credits
/// and its spend as their usage, never the master account's.
fn credits_body(key: &KeyEntry) -> Bytes {
    Bytes::from(format!(
        "{{\"data\":{{\"total_credits\":{},\"total_usage\":{}}}}}",
        usd_number(key.budget.cap()),
        usd_number(key.budget.spent())
    ))
}

/// A JSON number of dollars written exactly from nano-dollars: `20`, `0.0015`.
fn usd_number(amount: Money) -> String {
    let text = amount.decimal_usd();
    let trimmed = text.trim_end_matches('0').trim_end_matches('.');
    if trimmed.is_empty() || trimmed == "-" {
        "0".to_string()
    } else {
        trimmed.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_dollars_exactly() {
        for (nanos, text) in [
            (20_000_000_000, "20"),
            (1_500_000, "0.0015"),
            (0, "0"),
            (1, "0.000000001"),
            (20_500_000_000, "20.5"),
        ] {
            assert_eq!(usd_number(Money::from_nanos(nanos)), text);
        }
    }
}
