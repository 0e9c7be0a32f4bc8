"""A fake Messages API on 127.0.0.1 that speaks the real wire format, for the real SDK.

It plays a script of replies (a message, an API error, a delay, or a function of the request),
records every request with its headers, and simulates prompt caching from the request's own
`cache_control` breakpoints, so tests can check that turns 2..n would read the cache.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_ids = itertools.count(1)


@dataclass
class ApiError:
    status: int
    type: str = "api_error"
    message: str = "scripted error"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Delay:
    seconds: float
    then: Any


@dataclass
class Request:
    body: dict[str, Any]
    headers: dict[str, str]
    received: float = field(default_factory=time.monotonic)

    @property
    def last_user(self) -> list[dict[str, Any]]:
        return list(self.body["messages"][-1]["content"])

    def tool_results(self) -> list[dict[str, Any]]:
        return [b for b in self.last_user if b.get("type") == "tool_result"]


def tool_use(name: str, **params: Any) -> dict[str, Any]:
    return {"type": "tool_use", "id": f"toolu_{next(_ids):04d}", "name": name, "input": params}


def edit(path: str, old: str, new: str) -> dict[str, Any]:
    return tool_use(
        "str_replace_based_edit_tool", command="str_replace", path=path, old_str=old, new_str=new
    )


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}


def message(*blocks: dict[str, Any], stop_reason: str | None = None) -> dict[str, Any]:
    if stop_reason is None:
        stop_reason = "tool_use" if any(b["type"] == "tool_use" for b in blocks) else "end_turn"
    return {"content": list(blocks), "stop_reason": stop_reason}


def done(note: str = "Fixed.") -> dict[str, Any]:
    return message(text(note))


def approve(reason: str = "A real fix of the cause, minimal and in scope.") -> dict[str, Any]:
    """The reviewer's reply that keeps a fix (the reviewer runs by default)."""
    return message(tool_use("submit_review", verdict="approve", reason=reason))


def reject(reason: str) -> dict[str, Any]:
    """The reviewer's reply that rejects a fix; `reason` is fed back word for word."""
    return message(tool_use("submit_review", verdict="reject", reason=reason))


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client killed mid-request (the Ctrl-C and kill -9 tests) breaks the pipe; the
        # default prints a traceback to whatever stderr another test is capturing then.
        pass


class FakeAnthropic:
    """Start with `start()`; `url` is the base URL for ANTHROPIC_BASE_URL."""

    def __init__(self) -> None:
        self.script: list[Any] = []
        self.requests: list[Request] = []
        self.arrived = threading.Event()
        self.stopping = threading.Event()
        self._cache: set[str] = set()
        self._lock = threading.Lock()
        self._server = _QuietServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeAnthropic:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()  # wakes scripted delays, so no handler outlives its test
        self._server.shutdown()
        self._server.server_close()

    def reply(self, *items: Any) -> None:
        self.script.extend(items)

    # --- serving ----------------------------------------------------------------------------

    def _next(self, request: Request) -> Any:
        with self._lock:
            self.requests.append(request)
            self.arrived.set()
            item = self.script.pop(0) if self.script else done("Nothing more to do.")
        while callable(item):
            item = item(request)
        return item

    def _usage(self, body: dict[str, Any]) -> dict[str, int]:
        # Order the API caches in: tools, system, messages. A breakpoint caches the prefix up
        # to and including its block; a later request reads the longest cached prefix.
        items: list[Any] = list(body.get("tools", []))
        system = body.get("system", [])
        items += system if isinstance(system, list) else [{"type": "text", "text": system}]
        for msg in body["messages"]:
            content = msg["content"]
            items += content if isinstance(content, list) else [{"type": "text", "text": content}]
        sizes, hashes, marks = [], [], []
        digest = hashlib.sha256()
        total = 0
        for i, item in enumerate(items):
            plain = (
                {k: v for k, v in item.items() if k != "cache_control"}
                if isinstance(item, dict)
                else item
            )
            encoded = json.dumps(plain, sort_keys=True).encode()
            digest.update(encoded)
            total += len(encoded)
            sizes.append(total)
            hashes.append(digest.copy().hexdigest())
            if isinstance(item, dict) and "cache_control" in item:
                marks.append(i)
        read = 0
        with self._lock:
            for i in range(len(items) - 1, -1, -1):
                if hashes[i] in self._cache:
                    read = sizes[i]
                    break
            written = 0
            for i in marks:
                if hashes[i] not in self._cache:
                    self._cache.add(hashes[i])
                    written = max(written, sizes[i] - read)
        tokens = lambda n: n // 4  # noqa: E731
        return {
            "input_tokens": tokens(total - read - written) + 1,
            "output_tokens": 20,
            "cache_read_input_tokens": tokens(read),
            "cache_creation_input_tokens": tokens(written),
        }

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, payload: dict[str, Any], headers: dict[str, str]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.send_header("request-id", f"req_{next(_ids)}")
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("content-length", 0))
                body = json.loads(self.rfile.read(length) or b"{}")
                if self.path.split("?")[0] != "/v1/messages":
                    self._send(
                        404,
                        {
                            "type": "error",
                            "error": {"type": "not_found_error", "message": self.path},
                        },
                        {},
                    )
                    return
                request = Request(body, {k.lower(): v for k, v in self.headers.items()})
                item = fake._next(request)
                while isinstance(item, Delay):
                    if fake.stopping.wait(item.seconds):
                        return
                    item = item.then
                if isinstance(item, ApiError):
                    self._send(
                        item.status,
                        {"type": "error", "error": {"type": item.type, "message": item.message}},
                        {"retry-after-ms": "10", **item.headers},
                    )
                    return
                self._send(
                    200,
                    {
                        "id": f"msg_{next(_ids):06d}",
                        "type": "message",
                        "role": "assistant",
                        "model": body.get("model", "claude"),
                        "content": item["content"],
                        "stop_reason": item["stop_reason"],
                        "stop_sequence": None,
                        "usage": fake._usage(body),
                    },
                    {},
                )

        return Handler


Reply = Callable[[Request], Any]
