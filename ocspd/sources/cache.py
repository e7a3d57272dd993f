"""In-process cache of signed responses, invalidated by the change feed."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from itertools import islice

from ocspd.config import NoncePolicy
from ocspd.errors import Unavailable
from ocspd.metrics import ResponderMetrics
from ocspd.protocol.request import OcspRequest
from ocspd.sources.base import Response, Source
from ocspd.sources.issuers import IssuerTable
from ocspd.store.feed import Changed


class CacheSource:
    """Serves single-CertID requests from memory until the response is due for refresh.

    A response never outlives the status it shows: `invalidate` (fed by the change feed)
    drops it, and a response signed while an invalidation arrived is not kept, since it may
    show the status from before.
    """

    def __init__(
        self,
        inner: Source,
        issuers: IssuerTable,
        clock: Callable[[], dt.datetime],
        refresh_after: dt.timedelta,
        max_entries: int,
        nonce: NoncePolicy,
        metrics: ResponderMetrics,
        status_current: Callable[[], bool] = lambda: True,
        catch_up: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        self._inner = inner
        # True while the change feed's view is within max_status_age. Only then is a
        # cached answer known to show the current status. Otherwise the request waits for
        # the feed to `catch_up` (one poll answers for every waiting request); if it cannot,
        # the database is asked, and the cached answer serves only if the database cannot
        # answer (an outage, when no status can change either).
        self._status_current = status_current
        self._catch_up = catch_up
        self._issuers = issuers
        self._clock = clock
        self._refresh_after = refresh_after
        self._max_entries = max_entries
        self._nonce = nonce
        self._hit = metrics.tally(metrics.cache.labels("hit"))
        self._stale = metrics.tally(metrics.cache.labels("stale"))
        self._miss = metrics.tally(metrics.cache.labels("miss"))
        self._unconfirmed = metrics.tally(metrics.cache.labels("feed_behind"))
        self._entries: OrderedDict[bytes, tuple[Response, Changed]] = OrderedDict()
        # (issuer_id, serial) -> CertID DERs cached for it (one per hash algorithm used).
        self._keys: dict[Changed, set[bytes]] = {}
        self._epoch = 0
        self._pending: dict[bytes, asyncio.Future[Response]] = {}
        # Request DER (or a GET path that decodes to it) -> CertID key, for lookup_request.
        self._by_request: OrderedDict[bytes | str, bytes] = OrderedDict()

    async def response(self, request: OcspRequest) -> Response:
        if len(request.cert_ids) != 1:
            return await self._inner.response(request)
        key = request.cert_ids[0].der
        if request.nonce is not None:
            if self._nonce is NoncePolicy.ECHO:
                return await self._inner.response(request)
            request = replace(request, nonce=None)  # RFC 5019: answer from cache, no nonce
        elif self._max_entries > 0:
            self._remember(request.der, key)
        entry = self._entries.get(key)
        if entry is not None and self._fresh(entry[0]):
            if not self._status_current():
                self._unconfirmed.inc()
                if self._catch_up is None or not await self._catch_up():
                    return await self._confirm(request, entry[0])
                entry = self._entries.get(key)  # the poll may have dropped it
            if entry is not None:
                self._hit.inc()
                return entry[0]
            self._miss.inc()
        elif entry is not None:
            self._stale.inc()
        else:
            self._miss.inc()
        # One lookup per key at a time: concurrent requests for a key being fetched wait for
        # that fetch instead of each reading the database and signing (a hot key at start-up
        # or at refresh would otherwise queue dozens of signatures).
        pending = self._pending.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        try:
            epoch = self._epoch
            response = await self._inner.response(request)
            if response.cacheable and epoch == self._epoch:
                self._put(key, request, response)
            future.set_result(response)
            return response
        except BaseException as e:
            future.set_exception(e)
            future.exception()  # retrieved here, so a fetch nobody waited on logs nothing
            raise
        finally:
            del self._pending[key]

    def _fresh(self, cached: Response) -> bool:
        now = self._clock()
        return now < cached.this_update + self._refresh_after and now < cached.next_update

    async def _confirm(self, request: OcspRequest, cached: Response) -> Response:
        """The feed cannot catch up: ask the database; keep the cached answer if it cannot
        say."""
        try:
            return await self._inner.response(request)
        except Unavailable:
            return cached

    def lookup_request(self, body: bytes | str) -> Response | None:
        """The cached answer to exactly these request bytes, without parsing them again.

        Clients repeat byte-identical requests (no nonce), so the HTTP edge tries this before
        parsing. Only requests this cache has parsed and accepted before are known here, and
        the answer is the same entry `response` would return, fresh or not at all.
        """
        key = self._by_request.get(body)
        if key is None:
            return None
        entry = self._entries.get(key)
        if entry is None:
            return None
        cached = entry[0]
        if self._fresh(cached) and self._status_current():
            self._hit.inc()
            return cached
        return None

    def alias_request(self, alias: str, body: bytes) -> None:
        """Makes a GET path known as another spelling of request `body`, so a repeated GET is
        answered without decoding its base64 again. Does nothing for unknown bodies."""
        key = self._by_request.get(body)
        if key is not None:
            self._remember(alias, key)

    def _remember(self, body: bytes | str, key: bytes) -> None:
        if body in self._by_request:
            return
        self._by_request[body] = key
        # Bounded like the entries: a few request encodings per CertID at most.
        while len(self._by_request) > 2 * self._max_entries:
            self._by_request.popitem(last=False)

    def _put(self, key: bytes, request: OcspRequest, response: Response) -> None:
        if self._max_entries <= 0:
            return
        cert_id = request.cert_ids[0]
        issuer = self._issuers.find(cert_id)
        if issuer is None:
            return
        item = (issuer.id, cert_id.serial)
        self._entries[key] = (response, item)
        self._entries.move_to_end(key)
        self._keys.setdefault(item, set()).add(key)
        while len(self._entries) > self._max_entries:
            old_key, (_, old_item) = self._entries.popitem(last=False)
            keys = self._keys.get(old_item)
            if keys is not None:
                keys.discard(old_key)
                if not keys:
                    del self._keys[old_item]

    def invalidate(self, changed: Sequence[Changed]) -> None:
        self._epoch += 1
        for item in changed:
            for key in self._keys.pop(item, ()):
                self._entries.pop(key, None)

    def clear(self) -> None:
        """Forget every entry: the change feed saw more changes than it hands over one by
        one (a bulk import or a mass revocation)."""
        self._epoch += 1
        self._entries.clear()
        self._keys.clear()
        self._by_request.clear()

    def oldest_this_update(self, sample: int = 64) -> dt.datetime | None:
        """thisUpdate of the oldest entries, the ones at the front of the insertion order.

        Only the front is looked at, so a metrics pass never walks a large cache on the event
        loop; a response taken later from the shared store can be a little older, but every
        entry is younger than refresh_after whatever this reports.
        """
        return min((r.this_update for r, _ in islice(self._entries.values(), sample)), default=None)

    def __len__(self) -> int:
        return len(self._entries)
