"""The console's ASGI application (Starlette, Jinja2 templates rendered on the server).

Pages read the Redis review log through ``service.review`` and the Kafka-fed overview state (``console.feeds``).
Every state-changing request is a POST carrying the CSRF field (``console.security``); GET never changes
anything. Input-derived strings are escaped by Jinja2's autoescape, and control characters are first written as
``\\xNN`` by the environment's ``finalize`` (so an ESC or CR in an id shows as text and cannot act on anything).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import math
import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from typing import Any, Protocol
from urllib.parse import quote, urlencode

import orjson
import redis
import structlog
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from console import chart, export
from console.feeds import OverviewData
from console.security import AUTH_COOKIE, REVIEWER_COOKIE, Guard, GuardMiddleware, clean_name
from console.settings import ConsoleSettings
from service import secrets
from service.review import VERDICTS, RedisReviewStore, ReviewFilter

log = structlog.get_logger("zeroproof.console")
PACKAGE = resources.files("console")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
#: Fixed texts for the ``msg`` query parameter: nothing a link carries is ever echoed into a page.
FLASH = {
    "verdict": "Verdict saved.",
    "acked": "Acknowledged.",
    "already": "Already acknowledged.",
    "replayed": "Replayed: the input is back on the input topic and the worker will answer it again.",
    "reviewer": "Reviewer name saved.",
    "bulk": "Bulk acknowledgement done.",
}


def visible(value: Any) -> Any:
    """Control characters as ``\\xNN`` text (Jinja2 ``finalize``: applied to every ``{{ }}`` output)."""
    if isinstance(value, Markup) or not isinstance(value, str):
        return value
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", value)


class Feeds(Protocol):
    """What the app needs from the Kafka side (``console.feeds.KafkaFeeds``; tests give a fixed one)."""

    def view(self) -> OverviewData: ...


class Replayer(Protocol):
    def __call__(self, topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> str: ...


class KafkaReplayer:
    """Re-publishes inputs (same key, same id, a ``zeroproof-replay-of`` header) with one lazy producer."""

    def __init__(self, settings: ConsoleSettings) -> None:
        self.s = settings
        self._producer: Any = None
        self._lock = threading.Lock()

    def __call__(self, topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> str:
        from kafka import KafkaProducer

        with self._lock:
            if self._producer is None:
                timeout_ms = int(self.s.kafka_timeout * 1000)
                self._producer = KafkaProducer(
                    acks="all",
                    request_timeout_ms=timeout_ms,
                    client_id="zeroproof-console",
                    **self.s.kafka_python_client(),
                )
            producer = self._producer
        meta = producer.send(topic, value=value, key=key, headers=headers).get(timeout=self.s.kafka_timeout)
        return f"{topic}:{meta.partition}:{meta.offset}"

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close(timeout=5)


@dataclass
class Console:
    settings: ConsoleSettings
    store: RedisReviewStore
    feeds: Feeds
    replayer: Replayer
    guard: Guard
    env: Environment
    _dims: tuple[float, list[str]] = (0.0, [])

    # -- helpers ------------------------------------------------------------------------------------------
    def dims(self) -> list[str]:
        """Filter choices, cached for a few seconds (one SMEMBERS; entities may be many)."""
        at, dims = self._dims
        if time.monotonic() - at > 5.0:
            dims = self.store.dims()
            self._dims = (time.monotonic(), dims)
        return dims

    def reviewer(self, request: Request) -> str:
        user = request.state.user
        if user:
            return f"console:{clean_name(user)}"
        cookie = request.state.cookies.get(REVIEWER_COOKIE)
        name = clean_name(_unquote(cookie)) if cookie else ""
        return f"console:{name or clean_name(self.settings.default_reviewer())}"

    def render(self, request: Request, template: str, status: int = 200, **ctx: Any) -> HTMLResponse:
        msg = request.query_params.get("msg")
        flash = FLASH.get(msg or "")
        if msg == "bulk":
            n = request.query_params.get("n", "")
            flash = f"Acknowledged {int(n)} records." if n.isdigit() else flash
        base = {
            "request": request,
            "csrf": self.guard.csrf_token(request.state.session),
            "read_only": self.settings.console_read_only,
            "reviewer": self.reviewer(request).removeprefix("console:"),
            "basic_user": request.state.user,
            "flash": flash,
            "verdicts": VERDICTS,
            "refresh_s": self.settings.console_refresh_s,
            "token_login": self.settings.console_token is not None,
        }
        html = self.env.get_template(template).render(**base, **ctx)
        return HTMLResponse(html, status_code=status)

    async def form(self, request: Request) -> dict[str, str]:
        """The POST's fields after the CSRF and read-only checks (403 otherwise)."""
        form = await request.form()
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        if not self.guard.csrf_ok(request.state.session, fields.get("csrf")):
            raise HTTPException(403, "missing or invalid CSRF token: reload the page and try again")
        return fields


def _unquote(text: str) -> str:
    from urllib.parse import unquote

    return unquote(text)


def parse_time(text: str | None, name: str) -> float | None:
    """Epoch seconds, or an ISO date/time (no zone: this machine's local time)."""
    if text is None or not text.strip():
        return None
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        try:
            value = dt.datetime.fromisoformat(text).timestamp()
        except ValueError:
            raise HTTPException(400, f"{name}: not a time (epoch seconds or YYYY-MM-DDTHH:MM)") from None
    if not math.isfinite(value):
        raise HTTPException(400, f"{name}: not a finite time")
    return value


def parse_filter(params: Any, default_state: str = "pending") -> ReviewFilter:
    def get(name: str) -> str | None:
        v = params.get(name)
        return v if v else None

    label = None
    if get("label"):
        name, sep, value = str(get("label")).partition("=")
        if not sep or not name:
            raise HTTPException(400, "label: write it as name=value")
        label = (name, value)
    try:
        return ReviewFilter(
            state=get("state") or default_state,
            model_version=get("model"),
            entity=get("entity"),
            label=label,
            verdict=get("verdict"),
            since=parse_time(get("since"), "since"),
            until=parse_time(get("until"), "until"),
        )
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None


def filter_params(flt: ReviewFilter, **extra: Any) -> dict[str, str]:
    """The query parameters that select ``flt`` (links keep the filter across pages and actions)."""
    out: dict[str, str] = {"state": flt.state}
    if flt.model_version is not None:
        out["model"] = flt.model_version
    if flt.entity is not None:
        out["entity"] = flt.entity
    if flt.label is not None:
        out["label"] = f"{flt.label[0]}={flt.label[1]}"
    if flt.verdict is not None:
        out["verdict"] = flt.verdict
    if flt.since is not None:
        out["since"] = repr(flt.since)
    if flt.until is not None:
        out["until"] = repr(flt.until)
    out.update({k: str(v) for k, v in extra.items() if v is not None})
    return out


def describe(flt: ReviewFilter) -> str:
    parts = [flt.state]
    if flt.model_version is not None:
        parts.append(f"model {flt.model_version}")
    if flt.entity is not None:
        parts.append(f"entity {flt.entity}")
    if flt.label is not None:
        parts.append(f"label {flt.label[0]}={flt.label[1]}")
    if flt.verdict is not None:
        parts.append(f"verdict {flt.verdict}")
    if flt.since is not None:
        parts.append(f"since {_fmt_time(flt.since)}")
    if flt.until is not None:
        parts.append(f"until {_fmt_time(flt.until)}")
    return ", ".join(parts)


def _fmt_time(t: Any) -> str:
    if not isinstance(t, int | float) or not math.isfinite(t):
        return "–"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _pct(v: Any, digits: int = 2) -> str:
    return "–" if v is None else f"{100 * float(v):.{digits}f}%"


def _num(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "NaN"
        return f"{v:.6g}"
    return str(v)


def make_env() -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(PACKAGE / "templates")),
        autoescape=select_autoescape(default=True, default_for_string=True),
        finalize=visible,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(time=_fmt_time, pct=_pct, num=_num, q=lambda v: quote(str(v), safe=""))
    env.globals.update(urlencode=urlencode, static=lambda name: f"/static/{name}?v=1")
    return env


# -- pages ---------------------------------------------------------------------------------------------------
def build_routes(c: Console) -> list[Route | Mount]:
    s = c.settings

    def overview_context() -> dict[str, Any]:
        data = c.feeds.view()
        pipe = c.store.client.pipeline(transaction=False)
        pipe.zcard(c.store.pending_key)
        for v in data.versions:
            pipe.zcard(c.store.ix_key("pending", "m:" + v.model_version))
        counts = pipe.execute()
        charts = {v.model_version: chart.render(v.chart, v.model_version) for v in data.versions}
        pending = {v.model_version: int(n) for v, n in zip(data.versions, counts[1:], strict=True)}
        return {"data": data, "charts": charts, "pending_total": int(counts[0]), "pending": pending}

    def overview(request: Request) -> Response:
        return c.render(request, "overview.html", **overview_context())

    def overview_fragment(request: Request) -> Response:
        return c.render(request, "overview_body.html", **overview_context())

    def overview_json(request: Request) -> Response:
        data = c.feeds.view()
        ctx = overview_context()
        versions = [
            {
                "model_version": v.model_version,
                "tau_infer": v.tau_infer,
                "tau_train": v.tau_train,
                "pending": ctx["pending"].get(v.model_version, 0),
                **{
                    f"{name}_{attr}": getattr(w, attr)
                    for name, w in (("short", v.short), ("long", v.long))
                    for attr in ("coverage", "gap_rate", "bottom_rate", "total")
                },
            }
            for v in data.versions
        ]
        return JSONResponse(
            {
                "evaluated_at": data.evaluated_at,
                "pending_total": ctx["pending_total"],
                "versions": versions,
                "firing": [a.to_dict() for a in data.firing],
                "resolved": [a.to_dict() for a in data.resolved],
                "dlq_total": data.dlq_total,
                "dlq_recent": data.dlq_recent,
                "kafka_connected": data.connected,
                "caught_up": data.caught_up,
                "kafka_error": data.error,
                "stats_records": data.stats_records,
            }
        )

    def queue(request: Request) -> Response:
        flt = parse_filter(request.query_params)
        try:
            page = max(1, int(request.query_params.get("page", "1")))
        except ValueError:
            raise HTTPException(400, "page: not a number") from None
        size = s.console_page_size
        total, sources = c.store.query(flt, (page - 1) * size, size)
        rows = c.store.rows(sources)
        dims = c.dims()
        pages = max(1, math.ceil(total / size))
        return c.render(
            request,
            "queue.html",
            flt=flt,
            rows=rows,
            total=total,
            page=page,
            pages=pages,
            params=filter_params(flt),
            models=[d[2:] for d in dims if d.startswith("m:")],
            entities=[d[2:] for d in dims if d.startswith("e:")][:500],
            labels=_labels(dims)[:500],
            since_text=request.query_params.get("since", ""),
            until_text=request.query_params.get("until", ""),
        )

    def queue_json(request: Request) -> Response:
        flt = parse_filter(request.query_params)
        page = max(1, int(request.query_params.get("page", "1") or 1))
        total, sources = c.store.query(flt, (page - 1) * s.console_page_size, s.console_page_size)
        return JSONResponse({"total": total, "rows": c.store.rows(sources)})

    def find(request: Request) -> Response:
        ident = request.query_params.get("id", "")
        sources = c.store.sources_for(ident) if ident else []
        if len(sources) == 1:
            return RedirectResponse(f"/record/{quote(sources[0], safe=':')}", status_code=303)
        return c.render(request, "find.html", ident=ident, rows=c.store.rows(sources))

    def record(request: Request) -> Response:
        source = request.path_params["source"]
        rec = c.store.get(source)
        if rec is None:
            raise HTTPException(404, "no such review record")
        r = rec.record
        n, d = r.get("N") or [], r.get("D") or []
        value, bottom, gap = r.get("value") or [], r.get("bottom") or [], r.get("gap") or []
        elements = [
            {
                "i": i,
                "N": n[i] if i < len(n) else None,
                "D": d[i] if i < len(d) else None,
                "value": value[i] if i < len(value) else None,
                "bottom": bool(bottom[i]) if i < len(bottom) else None,
                "gap": bool(gap[i]) if i < len(gap) else None,
            }
            for i in range(max(len(n), len(d), len(bottom)))
        ]
        features = (r.get("input") or {}).get("features") or []
        return c.render(
            request,
            "record.html",
            rec=rec,
            r=r,
            elements=elements,
            features=features,
            labels=(r.get("input") or {}).get("labels") or {},
            audit=list(reversed(rec.audit)),
        )

    def replay_confirm(request: Request) -> Response:
        rec = c.store.get(request.path_params["source"])
        if rec is None:
            raise HTTPException(404, "no such review record")
        return c.render(request, "replay.html", rec=rec, topic=s.input_topic)

    async def verdict(request: Request) -> Response:
        source = request.path_params["source"]
        fields = await c.form(request)
        _writable(s)
        name = fields.get("verdict", "")
        if name not in VERDICTS:
            raise HTTPException(400, "choose one of the verdicts")
        note = fields.get("note", "").strip()[:2000] or None
        ok = await run_in_threadpool(c.store.set_verdict, source, name, c.reviewer(request), note)
        if not ok:
            raise HTTPException(404, "no such review record")
        if fields.get("ack"):
            await run_in_threadpool(c.store.ack, source, c.reviewer(request), note)
        return _back(source, "verdict")

    async def ack(request: Request) -> Response:
        source = request.path_params["source"]
        fields = await c.form(request)
        _writable(s)
        rec = await run_in_threadpool(c.store.get, source)
        if rec is None:
            raise HTTPException(404, "no such review record")
        if rec.status == "acked":
            return _back(source, "already")
        note = fields.get("note", "").strip()[:2000] or None
        await run_in_threadpool(c.store.ack, source, c.reviewer(request), note)
        return _back(source, "acked")

    async def replay(request: Request) -> Response:
        source = request.path_params["source"]
        fields = await c.form(request)
        _writable(s)
        if fields.get("confirm") != "yes":
            raise HTTPException(400, "replay needs the confirmation step")
        rec = await run_in_threadpool(c.store.get, source)
        if rec is None:
            raise HTTPException(404, "no such review record")
        payload = orjson.dumps(rec.record.get("input", {}))
        key = rec.record.get("key")
        try:
            target = await run_in_threadpool(
                c.replayer,
                s.input_topic,
                key.encode() if isinstance(key, str) else None,
                payload,
                [("zeroproof-replay-of", source.encode())],
            )
        except Exception as exc:  # the broker refused or is down: say so, change nothing
            raise HTTPException(502, f"replay failed: {type(exc).__name__}: {exc}") from None
        await run_in_threadpool(c.store.mark_replayed, source, c.reviewer(request), target)
        log.info("replayed", source=source, target=target, by=c.reviewer(request))
        return _back(source, "replayed")

    def bulk_confirm(request: Request) -> Response:
        flt = parse_filter(request.query_params)
        if flt.state != "pending":
            raise HTTPException(400, "bulk acknowledge applies to pending records")
        # Freeze the selection's end: what arrives after the count was shown is not acknowledged with it.
        until = flt.until if flt.until is not None else time.time()
        frozen = dataclasses.replace(flt, until=until)
        total, _ = c.store.query(frozen, 0, 0)
        return c.render(
            request, "bulk.html", flt=frozen, total=total, params=filter_params(frozen), description=describe(frozen)
        )

    async def bulk_ack(request: Request) -> Response:
        fields = await c.form(request)
        _writable(s)
        flt = parse_filter(fields)
        if flt.state != "pending" or flt.until is None:
            raise HTTPException(400, "bulk acknowledge needs the confirmation step (it fixes the selection)")
        _, sources = await run_in_threadpool(c.store.query, flt, 0, None)
        note = (fields.get("note", "").strip()[:2000] or None, describe(flt))
        text = f"bulk acknowledge ({note[1]})" + (f": {note[0]}" if note[0] else "")
        done = await run_in_threadpool(c.store.ack_many, sources, c.reviewer(request), text)
        log.info("bulk acknowledged", count=done, selection=note[1], by=c.reviewer(request))
        return RedirectResponse(f"/queue?{urlencode({'msg': 'bulk', 'n': done})}", status_code=303)

    def export_page(request: Request) -> Response:
        flt = parse_filter(request.query_params, default_state="pending")
        states = _export_states(request)
        sources = export.reviewed_sources(c.store, flt, states)
        dims = c.dims()
        params = filter_params(flt)
        params["states"] = request.query_params.get("states", "all")
        return c.render(
            request,
            "export.html",
            flt=flt,
            count=len(sources),
            params=params,
            states=params["states"],
            models=[d[2:] for d in dims if d.startswith("m:")],
        )

    def export_jsonl(request: Request) -> Response:
        flt = parse_filter(request.query_params)
        sources = export.reviewed_sources(c.store, flt, _export_states(request))

        def body() -> Iterator[bytes]:
            yield from export.jsonl(c.store, sources)

        name = f"reviewed-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
        return StreamingResponse(
            body(),
            media_type="application/x-ndjson",
            headers={"content-disposition": f'attachment; filename="{name}"'},
        )

    def export_npz(request: Request) -> Response:
        flt = parse_filter(request.query_params)
        sources = export.reviewed_sources(c.store, flt, _export_states(request))
        try:
            data = export.dataset(c.store, sources)
        except export.ExportError as exc:
            raise HTTPException(409, str(exc)) from None
        name = f"reviewed-{time.strftime('%Y%m%d-%H%M%S')}.npz"
        return Response(
            data,
            media_type="application/octet-stream",
            headers={"content-disposition": f'attachment; filename="{name}"'},
        )

    async def set_reviewer(request: Request) -> Response:
        fields = await c.form(request)
        name = clean_name(fields.get("reviewer", ""))
        back = fields.get("back", "/")
        back = back if back.startswith("/") and not back.startswith("//") else "/"
        response = RedirectResponse(back, status_code=303)
        if name:
            response.set_cookie(
                REVIEWER_COOKIE, quote(name, safe=""), max_age=365 * 86400, httponly=True, samesite="strict"
            )
        return response

    def login_page(request: Request) -> Response:
        return c.render(request, "login.html", error=None)

    async def login(request: Request) -> Response:
        fields = await c.form(request)
        if s.console_token is None or not c.guard.token_ok(fields.get("token", "")):
            return c.render(request, "login.html", status=401, error="wrong token")
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(AUTH_COOKIE, c.guard.auth_cookie(), httponly=True, samesite="strict")
        return response

    def healthz(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    return [
        Route("/", overview),
        Route("/overview/fragment", overview_fragment),
        Route("/overview.json", overview_json),
        Route("/queue", queue),
        Route("/queue.json", queue_json),
        Route("/find", find),
        Route("/record/{source}", record),
        Route("/record/{source}/verdict", verdict, methods=["POST"]),
        Route("/record/{source}/ack", ack, methods=["POST"]),
        Route("/record/{source}/replay", replay_confirm, methods=["GET"]),
        Route("/record/{source}/replay", replay, methods=["POST"]),
        Route("/bulk-ack", bulk_confirm, methods=["GET"]),
        Route("/bulk-ack", bulk_ack, methods=["POST"]),
        Route("/export", export_page),
        Route("/export.jsonl", export_jsonl),
        Route("/export.npz", export_npz),
        Route("/reviewer", set_reviewer, methods=["POST"]),
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/healthz", healthz),
        Mount("/static", app=StaticFiles(directory=str(PACKAGE / "static")), name="static"),
    ]


def _labels(dims: list[str]) -> list[str]:
    out = []
    for d in dims:
        if d.startswith("l:"):
            try:
                name, value = orjson.loads(d[2:])
            except (ValueError, TypeError):
                continue
            out.append(f"{name}={value}")
    return out


def _export_states(request: Request) -> list[str]:
    chosen = request.query_params.get("states", "all")
    if chosen == "all":
        return ["pending", "acked"]
    if chosen in ("pending", "acked"):
        return [chosen]
    raise HTTPException(400, "states: all, pending or acked")


def _writable(s: ConsoleSettings) -> None:
    if s.console_read_only:
        raise HTTPException(403, "this console is read-only (ZEROPROOF_CONSOLE_READ_ONLY)")


def _back(source: str, msg: str) -> Response:
    return RedirectResponse(f"/record/{quote(source, safe=':')}?msg={msg}", status_code=303)


def create_app(
    settings: ConsoleSettings,
    store: RedisReviewStore,
    feeds: Feeds,
    replayer: Replayer | None = None,
    on_shutdown: Callable[[], None] | None = None,
) -> Starlette:
    guard = Guard(settings)
    c = Console(settings, store, feeds, replayer or KafkaReplayer(settings), guard, make_env())

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return c.render(request, "error.html", status=exc.status_code, message=secrets.scrub(str(exc.detail)))

    async def redis_error(request: Request, exc: Exception) -> Response:
        message = f"Redis is unavailable: {secrets.scrub(str(exc))[:300]}"
        log.warning("redis error", error=message, path=request.url.path)
        return c.render(request, "error.html", status=503, message=message)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        yield
        if on_shutdown is not None:
            on_shutdown()

    app = Starlette(
        routes=build_routes(c),
        middleware=[Middleware(GuardMiddleware, guard=guard)],
        exception_handlers={HTTPException: http_error, redis.RedisError: redis_error},
        lifespan=lifespan,
    )
    app.state.console = c
    return app
