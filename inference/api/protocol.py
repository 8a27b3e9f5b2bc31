"""The OpenAI API's side of serving: settings, request parsing and validation, errors, incremental text.

No aiohttp and no engine state here: `parse_completion` / `parse_chat` turn a JSON body into a
`GenerationSpec` (or raise `ApiError`, which carries the HTTP status and the OpenAI error body), and
`TextStream` turns a request's growing token ids into text deltas, holding back what could still become
a stop string or an incomplete character.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping

from inference.engine.sequence import SamplingParams

MAX_STOP_STRINGS = 4
MAX_COMPLETION_LOGPROBS = 5      # the completions API's bound on `logprobs`
MAX_CHAT_TOP_LOGPROBS = 20       # the chat API's bound on `top_logprobs`
DEFAULT_COMPLETION_TOKENS = 16   # the completions API's default `max_tokens`
EXPLAIN_MAX_TOKENS = 160         # /v1/explain without `max_tokens`: at most this many (fewer when the context is full)


class ApiError(Exception):
    """An error answered in the OpenAI shape: {"error": {"message", "type", "param", "code"}}."""

    TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
             405: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error",
             500: "server_error", 503: "server_error"}

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.TYPES.get(self.status, "server_error"),
                          "param": self.param, "code": self.code}}


@dataclass(frozen=True, slots=True)
class ApiSettings:
    """HTTP settings (environment: FINLLM_HTTP_HOST, FINLLM_HTTP_PORT, FINLLM_API_KEYS comma-separated,
    FINLLM_HTTP_MAX_BODY_BYTES, FINLLM_HTTP_MAX_PROMPT_TOKENS, FINLLM_HTTP_MAX_TOKENS, FINLLM_HTTP_MAX_ACTIVE).
    `max_prompt_tokens` None: as many as the engine holds beside the answer; `max_active`: generations in
    flight at once, beyond which requests are refused (429) rather than queued without bound."""

    host: str = "127.0.0.1"
    port: int = 8000
    api_keys: frozenset[str] = frozenset()
    max_body_bytes: int = 1 << 20
    max_prompt_tokens: int | None = None
    max_tokens: int = 2048
    max_active: int = 256

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> "ApiSettings":
        env, default = os.environ if env is None else env, cls()
        number = lambda key, fallback: int(env[key]) if env.get(key) else fallback   # noqa: E731
        values = dict(host=env.get("FINLLM_HTTP_HOST") or default.host,
                      port=number("FINLLM_HTTP_PORT", default.port),
                      api_keys=frozenset(k.strip() for k in env.get("FINLLM_API_KEYS", "").split(",") if k.strip()),
                      max_body_bytes=number("FINLLM_HTTP_MAX_BODY_BYTES", default.max_body_bytes),
                      max_prompt_tokens=number("FINLLM_HTTP_MAX_PROMPT_TOKENS", default.max_prompt_tokens),
                      max_tokens=number("FINLLM_HTTP_MAX_TOKENS", default.max_tokens),
                      max_active=number("FINLLM_HTTP_MAX_ACTIVE", default.max_active))
        return cls(**(values | {k: v for k, v in overrides.items() if v is not None}))


@dataclass(frozen=True, slots=True)
class GenerationSpec:
    """One parsed request of either endpoint. `prompt`: text, token ids, or None for a chat (`messages`)."""

    model: str
    chat: bool
    prompt: str | list[int] | None
    messages: tuple[dict, ...]
    max_tokens: int | None            # None: as many as fit (chat's default)
    sampling: SamplingParams
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool
    ignore_eos: bool
    max_tokens_cap: int | None = None  # with `max_tokens` None: at most this many (rather than as many as fit)
    grounding_source: str | None = None  # explain: what the model was given; the answer lists numbers not in it


def _field(body: dict, name: str, kinds: tuple[type, ...], default: Any = None) -> Any:
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        expected = " or ".join(k.__name__ for k in kinds)
        raise ApiError(400, f"'{name}' must be {expected}, got {type(value).__name__}", param=name)
    return value


def _bounded(body: dict, name: str, low: float, high: float, default: Any, kinds=(int, float)) -> Any:
    value = _field(body, name, kinds, default)
    if value is not None and not low <= value <= high:
        raise ApiError(400, f"'{name}' must be between {low} and {high}, got {value}", param=name)
    return value


def _common(body: Any, chat: bool, logprobs: int | None) -> dict:
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    model = _field(body, "model", (str,))
    if not model:
        raise ApiError(400, "'model' is required: a base model or an adapter (GET /v1/models)", param="model")
    if _field(body, "n", (int,), 1) != 1 or _field(body, "best_of", (int,), 1) != 1:
        raise ApiError(400, "only one choice per request is served (n = 1)", param="n")
    stop = _field(body, "stop", (str, list), [])
    stop = [stop] if isinstance(stop, str) else stop
    if len(stop) > MAX_STOP_STRINGS or not all(isinstance(s, str) and s for s in stop):
        raise ApiError(400, f"'stop' must be a string or up to {MAX_STOP_STRINGS} non-empty strings", param="stop")
    tokens_name = "max_completion_tokens" if chat and body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _field(body, tokens_name, (int,), None if chat else DEFAULT_COMPLETION_TOKENS)
    if max_tokens is not None and max_tokens < 1:
        raise ApiError(400, f"'{tokens_name}' must be at least 1, got {max_tokens}", param=tokens_name)
    seed = _field(body, "seed", (int,), None)
    top_p = float(_bounded(body, "top_p", 0, 1, 1.0))
    if top_p == 0:
        raise ApiError(400, "'top_p' must be greater than 0", param="top_p")
    sampling = SamplingParams(temperature=float(_bounded(body, "temperature", 0, 2, 1.0)), top_p=top_p,
                              seed=None if seed is None else seed % (2 ** 63), logprobs=logprobs)
    stream_options = _field(body, "stream_options", (dict,), {})
    return dict(model=model, chat=chat, max_tokens=max_tokens, sampling=sampling, stop=tuple(stop),
                stream=_field(body, "stream", (bool,), False),
                include_usage=bool(stream_options.get("include_usage", False)),
                ignore_eos=_field(body, "ignore_eos", (bool,), False))


def parse_completion(body: Any) -> GenerationSpec:
    """A POST /v1/completions body: `prompt` one string or one list of token ids."""
    logprobs = _bounded(body, "logprobs", 0, MAX_COMPLETION_LOGPROBS, None, (int,)) if isinstance(body, dict) else None
    common = _common(body, chat=False, logprobs=logprobs)
    if _field(body, "echo", (bool,), False):
        raise ApiError(400, "'echo' is not supported", param="echo")
    if body.get("suffix"):
        raise ApiError(400, "'suffix' is not supported", param="suffix")
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    token_ids = isinstance(prompt, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)
    if not (isinstance(prompt, str) or token_ids) or not prompt:
        raise ApiError(400, "'prompt' must be one non-empty string or one list of token ids", param="prompt")
    return GenerationSpec(prompt=prompt, messages=(), **common)


def parse_explain(body: Any, model: str, prompt: str) -> GenerationSpec:
    """A /v1/explain/{symbol} request: the body (optional) may set `max_tokens`, `temperature` (default 0),
    `top_p`, `seed`, `stop` and `stream` (default true); the model (the forecast's adapter) and the prompt
    (`inference.api.explain`) come from the forecast."""
    body = {} if body is None else body
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    common = _common({"stream": True, "temperature": 0.0} | body | {"model": model}, chat=False, logprobs=None)
    if body.get("max_tokens") is None:
        common["max_tokens"] = None
    return GenerationSpec(prompt=prompt, messages=(), max_tokens_cap=EXPLAIN_MAX_TOKENS, grounding_source=prompt,
                          **common)


CHAT_ROLES = ("system", "developer", "user", "assistant")


def parse_chat(body: Any) -> GenerationSpec:
    """A POST /v1/chat/completions body: `messages` with text content (a string or text parts)."""
    logprobs = None
    if isinstance(body, dict) and _field(body, "logprobs", (bool,), False):
        logprobs = _bounded(body, "top_logprobs", 0, MAX_CHAT_TOP_LOGPROBS, 0, (int,))
    common = _common(body, chat=True, logprobs=logprobs)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list", param="messages")
    return GenerationSpec(prompt=None, messages=tuple(_message(m, i) for i, m in enumerate(messages)), **common)


def _message(message: Any, index: int) -> dict:
    param = f"messages[{index}]"
    if not isinstance(message, dict) or message.get("role") not in CHAT_ROLES:
        raise ApiError(400, f"{param} must be an object with a role among {', '.join(CHAT_ROLES)}", param=param)
    content = message.get("content")
    if isinstance(content, list):
        if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
            raise ApiError(400, f"{param}.content: only text parts are served", param=param)
        content = "".join(p["text"] for p in content)
    if not isinstance(content, str):
        raise ApiError(400, f"{param}.content must be a string or a list of text parts", param=param)
    role = "system" if message["role"] == "developer" else message["role"]
    return {"role": role, "content": content}


class TextStream:
    """Text of a growing list of token ids, released as deltas: the last `hold` characters (a stop string
    could still begin there) and an incomplete character wait; the text ends before the first stop string."""

    def __init__(self, tokenizer, stop: tuple[str, ...]) -> None:
        self.tokenizer = tokenizer
        self.stop = stop
        self.hold = max((len(s) for s in stop), default=1) - 1
        self.token_ids: list[int] = []
        self.text = ""
        self.released = 0
        self.stopped = False          # a stop string was met: the request is done

    def add(self, token_ids: tuple[int, ...]) -> str:
        """The text that can be released after `token_ids` (empty when the stream has stopped)."""
        if self.stopped:
            return ""
        self.token_ids.extend(token_ids)
        text = self.tokenizer.decode(self.token_ids, skip_special_tokens=True)
        cut = min((i for i in (text.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped, self.text = True, text[:cut]
            return self._release(len(self.text))
        self.text = text
        ready = len(text.rstrip("\ufffd")) - self.hold
        return self._release(ready)

    @property
    def released_text(self) -> str:
        """All the text released so far."""
        return self.text[:self.released]

    def flush(self) -> str:
        """The rest of the text, at the end of the request."""
        return self._release(len(self.text))

    def _release(self, upto: int) -> str:
        if upto <= self.released:
            return ""
        delta, self.released = self.text[self.released:upto], upto
        return delta
