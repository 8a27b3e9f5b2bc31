"""The OpenAI-compatible HTTP API over the engine loop: `finllm serve`, or beside Kafka in the inference
worker (FINLLM_HTTP_PORT).

Routes: GET /health, GET /v1/models (the base model and every registered adapter), POST /v1/completions,
POST /v1/chat/completions (the model's chat template), each non-streaming or streaming (server-sent
events: `data: {chunk}` lines, then `data: [DONE]`), GET or POST /v1/explain/{symbol} (the model explains
the symbol's latest forecast through the forecast's adapter, from the prompt it was scored on, kept in
Redis beside it: `inference.api.explain`; streamed as completion chunks unless the body says
`"stream": false`), and GET /metrics (Prometheus). `model` names the
base model or an adapter. Every error, ours or the server library's (unknown route, wrong method), is
answered in the OpenAI shape. With FINLLM_API_KEYS set, every route but /health and /metrics needs
`Authorization: Bearer <one of the keys>`. The usage block adds `timing` (tokenize, queue, prefill and
decode milliseconds).

Why aiohttp.web rather than FastAPI + uvicorn: aiohttp is already installed (aiokafka and Faust depend
on it), so serving adds no package to the image; it runs inside an existing asyncio loop (`AppRunner`),
which is how the inference worker serves HTTP beside its Kafka consumer without a second server
lifecycle; its `StreamResponse` writes server-sent events directly, and with handler cancellation a
client that disconnects cancels its handler, which aborts the request in the engine. Requests are small
JSON objects validated by hand in `inference.api.protocol`, so FastAPI's pydantic models would buy little.
"""
from __future__ import annotations

import contextlib
import hmac
import logging
import time
import uuid
from typing import AsyncIterator, Iterable

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

from redis.exceptions import RedisError

from inference.api.explain import Explainable, ungrounded_numbers
from inference.api.loop import Delta, EngineLoop, LoopScorer, Timing, looping
from inference.api.protocol import (ApiError, ApiSettings, GenerationSpec, TextStream, parse_chat, parse_completion,
                                    parse_explain)
from inference.engine.sequence import RequestStatus
from inference.metrics import EngineGauges
from streams.latest import LatestStore
from streams.metrics import LATENCY_BUCKETS_S

log = logging.getLogger("finllm.api")
OPEN_PATHS = ("/health", "/metrics")           # answered without an API key
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>")


class ApiMetrics:
    """HTTP figures, on their own registry (finllm serve) or the worker's (then without engine gauges)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.own_registry = registry is None
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter("finllm_http_requests", "HTTP API requests by route and status.",
                                ["route", "status"], registry=r)
        self.ttft_s = Histogram("finllm_http_ttft_seconds", "Time to first token of HTTP generations.",
                                buckets=LATENCY_BUCKETS_S, registry=r)
        self.tokens = Counter("finllm_http_generated_tokens", "Tokens generated for HTTP requests.", registry=r)
        self.aborted = Counter("finllm_http_aborted", "HTTP generations aborted before their end "
                               "(client gone, stop string met).", registry=r)
        self.engine = EngineGauges(r) if self.own_registry else None


class ApiServer:
    def __init__(self, loop: EngineLoop, settings: ApiSettings, base_names: Iterable[str],
                 metrics: ApiMetrics | None = None, latest: LatestStore | None = None) -> None:
        self.loop = loop
        self.latest = latest                       # the latest forecasts (Redis), for /v1/explain
        self.settings = settings
        self.base_names = tuple(dict.fromkeys(base_names))
        self.metrics = metrics or ApiMetrics()
        self.tokenizer = loop.scorer.tokenizer
        engine = loop.engine
        self.context = min(engine.config.max_cached_tokens, engine.model.config.max_position_embeddings)
        self.end_token_ids = _end_token_ids(self.tokenizer)
        self.created = int(time.time())
        self.active = 0                            # generations in flight
        self.runner: web.AppRunner | None = None

    # lifecycle -----------------------------------------------------------------------------------
    def application(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=self.settings.max_body_bytes)
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.prometheus)
        app.router.add_get("/v1/models", self.models)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_route("GET", "/v1/explain/{symbol}", self.explain)
        app.router.add_route("POST", "/v1/explain/{symbol}", self.explain)
        return app

    async def start(self) -> str:
        """Listen on the settings' host and port (0: a free port); returns the base URL."""
        self.runner = web.AppRunner(self.application(), handler_cancellation=True, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.settings.host, self.settings.port)
        await site.start()
        host, port = self.runner.addresses[0][:2]
        log.info("HTTP API on http://%s:%d/v1 (model %s)", host, port, self.base_names[0])
        return f"http://{host}:{port}"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    # middleware: keys, body size, errors in the OpenAI shape, request counts -----------------------
    @web.middleware
    async def _middleware(self, request: web.Request, handler) -> web.StreamResponse:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        try:
            if request.path not in OPEN_PATHS:
                self._authorize(request)
            if request.content_length is not None and request.content_length > self.settings.max_body_bytes:
                raise self._too_large()
            response = await handler(request)
        except ApiError as error:
            response = error_response(error)
        except web.HTTPRequestEntityTooLarge:
            response = error_response(self._too_large())
        except web.HTTPException as error:       # the library's own: no such route, wrong method
            response = error_response(ApiError(error.status, error.reason or "error",
                                               code="not_found" if error.status == 404 else None))
        except Exception:
            log.exception("%s %s failed", request.method, request.path)
            response = error_response(ApiError(500, "internal error; the server log has the details"))
        self.metrics.requests.labels(route, str(response.status)).inc()
        return response

    def _authorize(self, request: web.Request) -> None:
        keys = self.settings.api_keys
        if not keys:
            return
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not any(hmac.compare_digest(token.strip(), key) for key in keys):
            raise ApiError(401, "a valid API key is required: 'Authorization: Bearer <key>'", code="invalid_api_key")

    def _too_large(self) -> ApiError:
        return ApiError(400, f"the request body exceeds {self.settings.max_body_bytes} bytes", code="body_too_large")

    # routes --------------------------------------------------------------------------------------
    async def health(self, request: web.Request) -> web.Response:
        if not self.loop.alive:
            raise ApiError(503, "the engine loop is not running")
        return _json({"status": "ok", "model": self.base_names[0]})

    async def prometheus(self, request: web.Request) -> web.Response:
        if self.metrics.engine is not None and self.loop.alive:
            self.metrics.engine.observe(LoopScorer(self.loop))
        return web.Response(body=generate_latest(self.metrics.registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def models(self, request: web.Request) -> web.Response:
        base = self.base_names[0]
        cards = [{"id": base, "object": "model", "created": self.created, "owned_by": "finllm", "root": base,
                  "parent": None}]
        cards += [{"id": name, "object": "model", "created": self.created, "owned_by": "finllm", "root": base,
                   "parent": base} for name in sorted(self.loop.scorer.adapter_names)]
        return _json({"object": "list", "data": cards})

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, parse_completion(await _body(request)))

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, parse_chat(await _body(request)))

    async def explain(self, request: web.Request) -> web.StreamResponse:
        if self.latest is None:
            raise ApiError(503, "this server reads no latest forecasts: give it Redis (`finllm serve --redis URL`, "
                           "or FINLLM_REDIS_URL for the worker)", code="explain_unavailable")
        symbol = request.match_info["symbol"]
        body = await _body(request) if request.method == "POST" and request.can_read_body else None
        try:
            forecast, prompt = await self.latest.read_with_prompt(symbol)
        except (RedisError, OSError) as error:
            raise ApiError(503, f"could not read the latest forecast from Redis: {error}") from None
        target = Explainable.of(symbol, forecast, prompt)
        text = target.prompt_text(self.loop.scorer.prompt_format)
        return await self._generate(request, parse_explain(body, target.adapter or self.base_names[0], text))

    # generation ----------------------------------------------------------------------------------
    async def _generate(self, request: web.Request, spec: GenerationSpec) -> web.StreamResponse:
        adapter = self._adapter(spec.model)
        if self.active >= self.settings.max_active:
            raise ApiError(429, f"the server is busy ({self.active} requests in flight); retry later",
                           code="server_busy")
        self.active += 1
        try:
            return await self._generate_admitted(request, spec, adapter)
        finally:
            self.active -= 1

    async def _generate_admitted(self, request: web.Request, spec: GenerationSpec,
                                 adapter: str | None) -> web.StreamResponse:
        started = time.perf_counter()
        prompt_ids = self._encode(spec)
        tokenize_ms = (time.perf_counter() - started) * 1e3
        max_tokens = self._check_lengths(len(prompt_ids), spec.max_tokens, spec.max_tokens_cap)
        run = _Run(spec, len(prompt_ids), tokenize_ms, TextStream(self.tokenizer, spec.stop))
        deltas = self.loop.generate(prompt_ids, max_tokens=max_tokens, adapter=adapter, sampling=spec.sampling,
                                    stop_token_ids=() if spec.ignore_eos else self.end_token_ids)
        async with contextlib.aclosing(deltas):
            pieces = self._pieces(run, deltas)
            async with contextlib.aclosing(pieces):
                first = await self._first(pieces)
                self.metrics.ttft_s.observe(time.perf_counter() - started)
                if spec.stream:
                    return await self._stream(request, run, first, pieces)
                async for piece in pieces:
                    first = (first[0] + piece[0], first[1] + piece[1])
                return _json(run.response(*first))

    async def _first(self, pieces: AsyncIterator[tuple[str, list]]) -> tuple[str, list]:
        try:
            return await anext(pieces)
        except ValueError as error:                # refused by the engine (e.g. adapter slots, KV size)
            raise ApiError(400, str(error)) from None
        except RuntimeError as error:
            raise ApiError(503, str(error)) from None

    async def _pieces(self, run: "_Run", deltas: AsyncIterator[Delta]) -> AsyncIterator[tuple[str, list]]:
        """(text, logprob entries) as they come; the first may be empty. Ends at the request's end or at a
        stop string (leaving the engine's iteration, which aborts the request)."""
        async for delta in deltas:
            run.timing = delta.timing
            run.token_ids += delta.token_ids
            self.metrics.tokens.inc(len(delta.token_ids))
            text = run.text.add(delta.token_ids)
            entries = [self._logprob_entry(t, lp) for t, lp in zip(delta.token_ids, delta.logprobs)]
            if run.text.stopped:
                run.finish_reason = "stop"
                self.metrics.aborted.inc()
                yield text, entries
                return
            if delta.finished:
                if delta.status is not RequestStatus.FINISHED:
                    raise ApiError(503, f"the request was {delta.status.value} by the engine")
                ended = bool(run.token_ids) and run.token_ids[-1] in self.end_token_ids and not run.spec.ignore_eos
                run.finish_reason = "stop" if ended else "length"
                yield text + run.text.flush(), entries
                return
            yield text, entries

    async def _stream(self, request: web.Request, run: "_Run", first: tuple[str, list],
                      pieces: AsyncIterator[tuple[str, list]]) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        send = lambda payload: response.write(b"data: " + orjson.dumps(payload) + b"\n\n")   # noqa: E731
        try:
            if run.spec.chat:
                await send(run.chunk({"role": "assistant", "content": ""}, None, None))
            text, entries = first
            while True:
                if text or entries:
                    await send(run.chunk(text, entries, None))
                try:
                    text, entries = await anext(pieces)
                except StopAsyncIteration:
                    break
            await send(run.chunk("" if not run.spec.chat else {}, None, run.finish_reason) | run.grounding())
            if run.spec.include_usage:
                await send(run.usage_chunk())
        except ApiError as error:                  # headers are gone: the error travels as an event
            await send(error.body())
        except ConnectionError:                    # the client went away: aclosing aborts the request
            self.metrics.aborted.inc()
            return response
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    # helpers -------------------------------------------------------------------------------------
    def _adapter(self, model: str) -> str | None:
        if model in self.base_names:
            return None
        if model in self.loop.scorer.adapter_names:
            return model
        raise ApiError(404, f"the model '{model}' does not exist; GET /v1/models lists the served models",
                       param="model", code="model_not_found")

    def _encode(self, spec: GenerationSpec) -> list[int]:
        if spec.chat:
            if not getattr(self.tokenizer, "chat_template", None):
                raise ApiError(400, "this model has no chat template: use /v1/completions")
            text = self.tokenizer.apply_chat_template(list(spec.messages), tokenize=False, add_generation_prompt=True)
            return self.tokenizer.encode(text, add_special_tokens=False)
        if isinstance(spec.prompt, list):
            vocab = self.loop.engine.model.config.vocab_size
            if not all(0 <= t < vocab for t in spec.prompt):
                raise ApiError(400, f"prompt token ids must be in [0, {vocab})", param="prompt")
            return list(spec.prompt)
        token_ids = self.tokenizer.encode(spec.prompt, add_special_tokens=False)
        if not token_ids:
            raise ApiError(400, "the prompt encodes to no tokens", param="prompt")
        return token_ids

    def _check_lengths(self, num_prompt: int, max_tokens: int | None, cap: int | None = None) -> int:
        prompt_limit = min(self.settings.max_prompt_tokens or self.context - 1, self.context - 1)
        if num_prompt > prompt_limit:
            raise ApiError(400, f"the prompt has {num_prompt} tokens; this server takes at most {prompt_limit}",
                           param="prompt", code="prompt_too_long")
        if max_tokens is not None and max_tokens > self.settings.max_tokens:
            raise ApiError(400, f"max_tokens is {max_tokens}; this server generates at most "
                           f"{self.settings.max_tokens}", param="max_tokens", code="max_tokens_too_large")
        room = self.context - num_prompt + 1
        if max_tokens is None:
            return min(self.settings.max_tokens, room, cap or room)
        if max_tokens > room:
            raise ApiError(400, f"the prompt ({num_prompt} tokens) and max_tokens ({max_tokens}) exceed the "
                           f"model's context of {self.context} tokens", param="max_tokens",
                           code="context_length_exceeded")
        return max_tokens

    def _logprob_entry(self, token_id: int, logprobs) -> tuple:
        """(token text, its log-probability, [(text, log-probability)] of the top tokens)."""
        chosen, top = logprobs
        token = self.tokenizer.decode([token_id])
        alternatives = [(self.tokenizer.decode([t]), lp) for t, lp in top]
        return token, chosen, alternatives


class _Run:
    """One generation's state and its OpenAI payloads."""

    def __init__(self, spec: GenerationSpec, num_prompt: int, tokenize_ms: float, text: TextStream) -> None:
        self.spec, self.num_prompt, self.tokenize_ms, self.text = spec, num_prompt, tokenize_ms, text
        self.id = ("chatcmpl-" if spec.chat else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.token_ids: list[int] = []
        self.timing: Timing | None = None
        self.finish_reason: str | None = None
        self.text_offset = 0

    @property
    def object(self) -> str:
        return "chat.completion" if self.spec.chat else "text_completion"

    def usage(self) -> dict:
        timing = self.timing or Timing(0.0, 0.0, 0.0)
        return {"prompt_tokens": self.num_prompt, "completion_tokens": len(self.token_ids),
                "total_tokens": self.num_prompt + len(self.token_ids),
                "timing": {"tokenize_ms": round(self.tokenize_ms, 3), "queue_ms": round(timing.queue_ms, 3),
                           "prefill_ms": round(timing.prefill_ms, 3), "decode_ms": round(timing.decode_ms, 3)}}

    def logprobs(self, entries: list) -> dict | None:
        if self.spec.sampling.logprobs is None:
            return None
        if self.spec.chat:
            token = lambda text, lp: {"token": text, "logprob": lp, "bytes": list(text.encode())}   # noqa: E731
            return {"content": [token(t, lp) | {"top_logprobs": [token(a, alp) for a, alp in top]}
                                for t, lp, top in entries]}
        offsets = []
        for text, _, _ in entries:
            offsets.append(self.text_offset)
            self.text_offset += len(text)
        return {"tokens": [t for t, _, _ in entries], "token_logprobs": [lp for _, lp, _ in entries],
                "top_logprobs": [dict(top) for _, _, top in entries], "text_offset": offsets}

    def response(self, text: str, entries: list) -> dict:
        choice = {"index": 0, "logprobs": self.logprobs(entries), "finish_reason": self.finish_reason}
        choice |= {"message": {"role": "assistant", "content": text}} if self.spec.chat else {"text": text}
        return {"id": self.id, "object": self.object, "created": self.created, "model": self.spec.model,
                "choices": [choice], "usage": self.usage()} | self.grounding()

    def grounding(self) -> dict:
        """For an explanation: {"grounding": {"ungrounded_numbers": [...]}}, the numbers of its text found
        nowhere in what the model was given (inference.api.explain); else nothing."""
        if self.spec.grounding_source is None:
            return {}
        numbers = ungrounded_numbers(self.text.released_text, self.spec.grounding_source)
        return {"grounding": {"ungrounded_numbers": numbers}}

    def chunk(self, content: str | dict, entries: list | None, finish_reason: str | None) -> dict:
        choice = {"index": 0, "logprobs": self.logprobs(entries) if entries else None, "finish_reason": finish_reason}
        if self.spec.chat:
            choice["delta"] = content if isinstance(content, dict) else {"content": content}
        else:
            choice["text"] = content
        return {"id": self.id, "object": self.object + (".chunk" if self.spec.chat else ""), "created": self.created,
                "model": self.spec.model, "choices": [choice], "usage": None}

    def usage_chunk(self) -> dict:
        return {"id": self.id, "object": self.object + (".chunk" if self.spec.chat else ""), "created": self.created,
                "model": self.spec.model, "choices": [], "usage": self.usage()}


def error_response(error: ApiError) -> web.Response:
    return _json(error.body(), status=error.status)


def _json(payload: dict, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(payload), status=status, content_type="application/json")


async def _body(request: web.Request):
    raw = await request.read()
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise ApiError(400, f"the request body is not valid JSON: {error}") from None


def _end_token_ids(tokenizer) -> tuple[int, ...]:
    """The tokens that end an answer: end of text and the end-of-turn marker of chat templates."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    vocab = tokenizer.get_vocab()
    ids |= {vocab[t] for t in END_OF_TURN_TOKENS if t in vocab}
    return tuple(sorted(ids))


def served_names(model_dir: str, model_name: str) -> tuple[str, ...]:
    """The names `model` may give the base model: its registered name (or folder name), then name@fingerprint."""
    from pathlib import Path

    from inference.checkpoints import registered_name

    return (registered_name(model_dir) or Path(model_dir).resolve().name, model_name)


@contextlib.asynccontextmanager
async def serving(scorer, settings: ApiSettings, metrics: ApiMetrics | None = None, latest: LatestStore | None = None):
    """Run the API over `scorer` (an EngineScorer) until the block exits: (server, base URL, LoopScorer).
    The LoopScorer lets other callers (the worker's forecasts) share the engine. `latest` (Redis): the
    forecasts /v1/explain explains; without it that route answers 503."""
    with looping(scorer) as shared:
        server = ApiServer(shared.loop, settings, served_names(scorer.model_dir, scorer.model_name), metrics, latest)
        try:
            url = await server.start()
            yield server, url, shared
        finally:
            await server.stop()
