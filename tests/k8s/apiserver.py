"""A Kubernetes API server stand-in for tests: kmock's stateful emulator served over real HTTP.

No API server can run here. kmock (PyPI) emulates one; the subclass below closes the gaps the provider
meets (server-filled metadata and resourceVersions, label selectors on list and watch, watches resumed
from a resourceVersion). Not emulated: garbage collection of owned objects,
field selectors, PUT, optimistic concurrency. The official (synchronous) client talks to it from other
threads; `call` runs code in the server's event loop, where kmock's state lives.
"""

from __future__ import annotations

import asyncio
import datetime
import itertools
import re
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import kmock

_REQ = re.compile(r'^\s*(?P<neg>!)?\s*(?P<key>[A-Za-z0-9_./-]+)\s*'
                  r'(?:(?P<op>==|=|!=)\s*(?P<val>[A-Za-z0-9_.-]*)|\s+(?P<setop>in|notin)\s*\((?P<set>[^)]*)\))?\s*$')


def parse_label_selector(selector: str) -> list[tuple[str, str, Any]]:
    """'a=b,c!=d,e,!f,g in (x,y)' -> [(key, op, value)]; raises ValueError on bad syntax."""
    reqs: list[tuple[str, str, Any]] = []
    for term in re.split(r',(?![^()]*\))', selector or ''):
        if not term.strip():
            continue
        m = _REQ.match(term)
        if not m:
            raise ValueError(f'bad label selector term: {term!r}')
        if m['neg']:
            reqs.append((m['key'], '!exists', None))
        elif m['op']:
            reqs.append((m['key'], '!=' if m['op'] == '!=' else '=', m['val']))
        elif m['setop']:
            reqs.append((m['key'], m['setop'], {v.strip() for v in m['set'].split(',') if v.strip()}))
        else:
            reqs.append((m['key'], 'exists', None))
    return reqs


def labels_match(labels: dict[str, str] | None, reqs: list[tuple[str, str, Any]]) -> bool:
    labels = labels or {}
    for key, op, val in reqs:
        present, cur = key in labels, labels.get(key)
        if op == "=":
            ok = present and cur == val
        elif op == "!=":
            ok = cur != val
        elif op == "exists":
            ok = present
        elif op == "!exists":
            ok = not present
        elif op == "in":
            ok = present and cur in val
        else:  # notin
            ok = cur not in val
        if not ok:
            return False
    return True


def _rv(obj: Any) -> int:
    try:
        return int(((obj or {}).get('metadata') or {}).get('resourceVersion') or 0)
    except (TypeError, ValueError):
        return 0


class ProviderEmulator(kmock.KubernetesEmulator):
    _rv_counter = itertools.count(1)  # process-wide, monotonic; fine for tests

    async def _handle(self, request: kmock.Request) -> Any:
        # NB: must mutate request.data in place: kmock matches reactions by request identity.
        if request.resource is not None and isinstance(request.data, dict):
            if request.action == kmock.action.CREATE:
                meta = request.data.setdefault('metadata', {})
                if request.namespace and not meta.get('namespace'):
                    meta['namespace'] = request.namespace
                meta.setdefault('uid', str(uuid.uuid4()))
                meta.setdefault('creationTimestamp',
                                datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%dT%H:%M:%SZ'))
                meta.setdefault('generation', 1)
                meta['resourceVersion'] = str(next(self._rv_counter))
            elif request.action == kmock.action.UPDATE and request.name is not None:
                request.data.setdefault('metadata', {})['resourceVersion'] = str(next(self._rv_counter))
        return await super()._handle(request)

    async def _serve_list(self, request: kmock.Request) -> Any:
        result = await super()._serve_list(request)
        reqs = parse_label_selector(request.params.get('labelSelector', ''))
        items = [o for o in result['items'] if labels_match((o.get('metadata') or {}).get('labels'), reqs)]
        rv = max([_rv(o) for o in result['items']] + [0])
        return {'kind': 'List', 'apiVersion': 'v1', 'metadata': {'resourceVersion': str(rv)}, 'items': items}

    async def _serve_watch(self, request: kmock.Request) -> AsyncIterator[Any]:
        reqs = parse_label_selector(request.params.get('labelSelector', ''))
        since = request.params.get('resourceVersion', '')
        since_rv = int(since) if since.isdigit() else 0
        async for event in super()._serve_watch(request):
            if isinstance(event, dict):
                obj = event.get('object') or {}
                if not labels_match((obj.get('metadata') or {}).get('labels'), reqs):
                    continue
                if since_rv and event.get('type') != 'DELETED' and _rv(obj) <= since_rv:
                    continue
            yield event




class KMockThread:
    def __init__(self, *, cls: type = ProviderEmulator, host: str = '127.0.0.1',
                 port: int | None = None, start_timeout: float = 10.0,
                 shutdown_timeout: float = 1.0) -> None:
        self._shutdown_timeout = shutdown_timeout
        self._cls, self._host, self._port = cls, host, port
        self._start_timeout = start_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._exc: BaseException | None = None
        self.handler: Any = None
        self.url: str = ''

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        try:
            async with self._cls() as handler, kmock.Server(handler, host=self._host, port=self._port) as srv:
                self.handler = handler
                # aiohttp waits up to 60s for open requests (e.g. watches) on shutdown; cap it.
                srv.server.runner._shutdown_timeout = self._shutdown_timeout  # private aiohttp attr
                self.url = str(srv.url).rstrip('/')
                handler.resources.load_bundled()  # core/v1 kinds known: empty lists answer 200, not 404
                self._ready.set()
                await self._stop.wait()
        except BaseException as e:  # surface startup failures to the caller
            self._exc = e
            self._ready.set()

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        try:
            self._loop.run_until_complete(self._main())
        finally:
            self._loop.close()

    def start(self) -> KMockThread:
        self._thread = threading.Thread(target=self._run, name='kmock', daemon=True)
        self._thread.start()
        if not self._ready.wait(self._start_timeout):
            raise TimeoutError('kmock did not start in time')
        if self._exc is not None:
            raise self._exc
        return self

    def call(self, fn: Callable[[Any], Any], timeout: float = 5.0) -> Any:
        """Run fn(handler) inside the server's loop (sync fn or coroutine fn) and return its result."""
        async def wrapper() -> Any:
            result = fn(self.handler)
            if asyncio.iscoroutine(result):
                result = await result
            return result
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(wrapper(), self._loop).result(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        if self._loop is not None and self._stop is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise RuntimeError('kmock thread did not stop')

    def once(self, criteria: str, payload: Any, op: str = "<<", times: int = 1) -> None:
        """Answer the next `times` requests matching `criteria` (e.g. "create v1/pods") with `payload` (an
        error, a tuple of watch events) or, with op ">>", run `payload` before answering (a delay)."""

        def inject(h: Any) -> None:
            n = len(h[criteria])  # kmock counts matching requests from the first ever made
            view = h[criteria][n : n + times]
            if op == "<<":
                view << payload
            else:
                view >> payload

        self.call(inject)

    def verbs(self, exclude_agent: str | None = None) -> dict[str, set[str]]:
        """The RBAC verbs, per resource[/subresource], of every request seen so far (but those made with
        User-Agent `exclude_agent`)."""

        def collect(h: Any) -> dict[str, set[str]]:
            out: dict[str, set[str]] = {}
            for r in h:
                if r.resource is None or not r.resource.plural:
                    continue
                if exclude_agent and r.headers.get("User-Agent") == exclude_agent:
                    continue
                method = str(r.method.value).upper()
                if method == "GET":
                    verb = "watch" if r.params.get("watch") in ("true", "1") else "get" if r.name else "list"
                elif method == "DELETE" and not r.name:
                    verb = "deletecollection"
                else:
                    verb = {"POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}[method]
                out.setdefault(r.resource.plural + (f"/{r.subresource}" if r.subresource else ""), set()).add(verb)
            return out

        return self.call(collect)

    def kubeconfig(self, path: Any) -> Any:
        """A kubeconfig file for the official client (plain HTTP, no credentials: a stand-in)."""
        path.write_text(
            "apiVersion: v1\nkind: Config\ncurrent-context: standin\n"
            f"clusters: [{{name: standin, cluster: {{server: '{self.url}'}}}}]\n"
            "users: [{name: standin, user: {}}]\n"
            "contexts: [{name: standin, context: {cluster: standin, user: standin}}]\n"
        )
        return path

    def __enter__(self) -> KMockThread:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
