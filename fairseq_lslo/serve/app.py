"""The aiohttp application: ``POST /translate``, ``GET /languages``, ``GET /health``; errors as JSON."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Awaitable, Callable, Optional

from aiohttp import web

from .batcher import DynamicBatcher
from .validation import RequestError, parse_translate_request

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class ServeConfig:
    max_batch_tokens: int = 4000
    max_wait_ms: float = 10.0
    max_input_tokens: int = 512
    beam: int = 5


SERVICE = web.AppKey("service", "Service")


class Service:
    """One translator, its batcher and the request limits."""

    def __init__(self, translator, config: ServeConfig):
        self.translator = translator
        self.config = config
        self.languages = list(translator.languages)
        self.directions = list(translator.directions)
        self.stopping = False
        self._stop: Optional[Callable[[], None]] = None  # given by serve(): stops it as SIGTERM does
        self.batcher = DynamicBatcher(self._translate, config.max_batch_tokens, config.max_wait_ms / 1000.0)

    def listen_for_stop(self, stop: Callable[[], None]) -> None:
        self._stop = stop

    def request_stop(self) -> None:
        """Stop the server as SIGTERM does (from any thread)."""
        if self._stop is not None:
            self._stop()

    def _translate(self, texts, srcs, tgts):
        """Runs in the batcher's worker thread: one call, one forward pass, for every direction of the batch
        (a single request larger than --max-batch-tokens is split by the translator)."""
        return self.translator.translate(texts, srcs, tgts, beam=self.config.beam,
                                         max_tokens=self.config.max_batch_tokens, max_sentences=len(texts))


def json_error(status: int, message: str, field=None) -> web.Response:
    return web.json_response({"error": message, "field": field}, status=status)


@web.middleware
async def errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every error leaves as ``{"error": ..., "field": ...}``; none stops the server."""
    try:
        return await handler(request)
    except RequestError as e:
        return web.json_response(e.to_json(), status=e.status)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        message = e.reason if not e.text or e.text.startswith(str(e.status)) else e.text
        return json_error(e.status, message, "body" if e.status == 413 else None)
    except Exception:  # a bug of ours or the translator's: answer 500, keep serving
        log.exception("%s %s failed", request.method, request.path)
        return json_error(500, "internal error while translating (see the server's log)")


async def translate(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    try:
        body = await request.json(loads=json.loads)
    except (ValueError, UnicodeDecodeError) as e:
        raise RequestError("body", f"malformed JSON: {e}") from None
    t = service.translator
    req = parse_translate_request(body, service.languages, service.directions, t.count_tokens,
                                  service.config.max_input_tokens)
    translations = await service.batcher.submit(req.texts, req.srcs, req.tgts, req.lengths)
    return web.json_response({"translations": translations})


async def languages(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    return web.json_response({"languages": service.languages, "directions": service.directions})


async def health(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    b = service.batcher
    return web.json_response({"status": "stopping" if service.stopping else "ok", "queued": b.queued,
                              "translating": b.running, "batches": b.batches, "sentences": b.sentences})


def build_app(service: Service, client_max_size: int = 1 << 20) -> web.Application:
    app = web.Application(middlewares=[errors_as_json], client_max_size=client_max_size)
    app[SERVICE] = service
    app.router.add_post("/translate", translate)
    app.router.add_get("/languages", languages)
    app.router.add_get("/health", health)

    async def start_batcher(app: web.Application) -> None:
        service.batcher.start()

    async def stop_batcher(app: web.Application) -> None:
        service.stopping = True
        await service.batcher.close()

    app.on_startup.append(start_batcher)
    app.on_cleanup.append(stop_batcher)
    return app
