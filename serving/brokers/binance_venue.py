"""python-binance calls made safe to repeat: an order is sent once, whatever the network does.

:meth:`FuturesVenue.send` looks an order's client id up on the venue before every send, and
sends only when the venue says it has no such order: after a timeout, a 5xx or "execution
status unknown" (``-1007``) the next try looks again, so a request that landed after all is
found instead of sent twice. :meth:`FuturesVenue.call` maps the venue's answers to our
errors: ``-1021`` (timestamp outside ``recvWindow``) resyncs the clock from ``/time`` and
retries once; 5xx, ``-1007`` and timeouts are :class:`~core.errors.RetryableError`; any other
refusal is an :class:`~serving.brokers.base.OrderRefusedError` naming Binance's code.
:class:`SpotVenue` is the same over the spot endpoints.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from core.errors import RetryableError
from serving.brokers.base import OrderRefusedError, OrderRequest
from serving.brokers.binance_api import CONDITIONAL, order_params, spot_order_params

log = logging.getLogger(__name__)
_UNCLEAR = {-1007}  # "Timeout waiting for response from backend server. Send status unknown"
_NO_SUCH_ORDER = -2013


class FuturesVenue:
    """A python-binance ``Client`` behind retry-safe calls.

    Args:
        client: the python-binance ``Client``.
        tries: sends per order while the venue does not answer (looked up before each).
        on_resync: told the new clock offset (ms) after a ``-1021`` resync.
    """

    def __init__(self, client: Any, tries: int, on_resync: Callable[[int], None]) -> None:
        self.client, self.tries, self.on_resync = client, tries, on_resync

    def call(self, method: Callable[..., Any], **params: Any) -> Any:
        """One venue call, its answer mapped to our errors (``-1021``: resync, retry once)."""
        import requests
        from binance.exceptions import BinanceAPIException

        resynced = False
        while True:
            try:
                return method(**params)
            except BinanceAPIException as err:
                if err.code == -1021 and not resynced:
                    self.resync()
                    resynced = True
                    continue
                if err.status_code >= 500 or err.code in _UNCLEAR:
                    raise RetryableError(f"exchange error {err.code}: {err.message}") from err
                raise OrderRefusedError(
                    f"{params.get('symbol', '')}: Binance refused ({err.code}: {err.message})"
                ) from err
            except (requests.Timeout, requests.ConnectionError) as err:
                raise RetryableError(f"exchange unreachable: {type(err).__name__}") from err

    def send(self, order: OrderRequest, create: Callable[[], Any] | None = None) -> dict[str, Any]:
        """Create the order unless the venue already has its id; never without asking first.

        ``create`` sends something else that carries the order's id (a spot OCO); by
        default the order itself.
        """
        last: Exception | None = None
        for _ in range(self.tries):
            try:
                known = self.lookup(order)
                if known is not None:
                    return known
                return dict(create() if create is not None else self._create(order))
            except RetryableError as err:
                last = err
                log.warning("%s: %s; looking it up before trying again", order.client_order_id, err)
        try:
            known = self.lookup(order)
        except RetryableError as err:
            last = err
            known = None
        if known is not None:
            return known
        raise RetryableError(
            f"{order.client_order_id}: the exchange did not answer {self.tries} times ({last})"
        )

    def lookup(self, order: OrderRequest) -> dict[str, Any] | None:
        """The venue's record of the order's client id; None when it has none.

        Raises:
            RetryableError: the venue could not say (the caller must not send meanwhile).
        """
        from binance.exceptions import BinanceAPIException

        try:
            return dict(self._get(order))
        except OrderRefusedError as err:
            cause = err.__cause__
            if isinstance(cause, BinanceAPIException) and cause.code == _NO_SUCH_ORDER:
                return None
            raise OrderRefusedError(f"looking up {order.client_order_id}: {err}") from err

    def _create(self, order: OrderRequest) -> Any:
        return self.call(self.client.futures_create_order, **order_params(order))

    def _get(self, order: OrderRequest) -> Any:
        key = "clientAlgoId" if order.type in CONDITIONAL else "origClientOrderId"
        return self.call(self.client.futures_get_order, symbol=order.symbol, **{key: order.client_order_id})

    def resync(self) -> None:
        """Align the client's timestamps with the venue's clock."""
        server = int(self.client.get_server_time()["serverTime"])
        self.client.timestamp_offset = server - int(time.time() * 1000)
        self.on_resync(self.client.timestamp_offset)


class SpotVenue(FuturesVenue):
    """The same retry-safe calls over Binance's spot endpoints (``/api/v3/order``)."""

    def _create(self, order: OrderRequest) -> Any:
        return self.call(self.client.create_order, **spot_order_params(order))

    def _get(self, order: OrderRequest) -> Any:
        return self.call(self.client.get_order, symbol=order.symbol, origClientOrderId=order.client_order_id)
