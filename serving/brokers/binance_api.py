"""How Binance's USD-M futures API spells our orders, and how we read its answers.

Pure translation, no I/O: :func:`order_params` for ``futures_create_order``,
:func:`venue_order` / :func:`venue_algo` for its order and algo-order JSON, and
:func:`symbol_rules` for ``exchangeInfo``. Conditional legs (stops, take-profits) carry our id
as ``clientAlgoId``: python-binance 1.0.37 routes them to ``/fapi/v1/algoOrder`` and drops
``newClientOrderId``.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from serving.brokers.base import Order, OrderRequest, SymbolRules

CONDITIONAL = {"stop_market": "STOP_MARKET", "take_profit_market": "TAKE_PROFIT_MARKET"}
STATUS = {
    "NEW": "new",
    "PARTIALLY_FILLED": "new",
    "FILLED": "filled",
    "CANCELED": "canceled",
    "EXPIRED": "expired",
    "REJECTED": "rejected",
    "FINISHED": "filled",
    "TRIGGERED": "new",
}


def symbol_rules(info: dict[str, Any]) -> dict[str, SymbolRules]:
    """Each symbol's PRICE_FILTER / LOT_SIZE / MIN_NOTIONAL from ``futures_exchange_info``."""
    rules = {}
    for symbol in info["symbols"]:
        filters = {f["filterType"]: f for f in symbol["filters"]}
        rules[symbol["symbol"]] = SymbolRules(
            symbol["symbol"],
            Decimal(filters["PRICE_FILTER"]["tickSize"]).normalize(),
            Decimal(filters["LOT_SIZE"]["stepSize"]).normalize(),
            Decimal(filters["LOT_SIZE"]["minQty"]),
            Decimal(filters.get("MIN_NOTIONAL", {}).get("notional", "0")),
        )
    return rules


def order_params(order: OrderRequest) -> dict[str, Any]:
    """The ``futures_create_order`` parameters of an order (a stop closes the whole position)."""
    params: dict[str, Any] = {"symbol": order.symbol, "side": order.side.upper()}
    if order.type in CONDITIONAL:
        params |= {
            "type": CONDITIONAL[order.type],
            "stopPrice": str(order.stop_price),
            "clientAlgoId": order.client_order_id,
            "workingType": "CONTRACT_PRICE",
        }
        if order.leg == "stop" or order.quantity == 0:
            params["closePosition"] = "true"
        else:
            params |= {"quantity": str(order.quantity), "reduceOnly": "true"}
        return params
    params |= {"type": "MARKET", "quantity": str(order.quantity), "newClientOrderId": order.client_order_id}
    if order.reduce_only:
        params["reduceOnly"] = "true"
    return params


def venue_order(o: dict[str, Any]) -> Order:
    """A regular order's JSON (``/fapi/v1/order``) as an :class:`Order`."""
    filled = Decimal(str(o.get("executedQty", "0")))
    average = Decimal(str(o.get("avgPrice", "0")))
    kind = {"MARKET": "market", "STOP_MARKET": "stop_market"}.get(str(o.get("type", "MARKET")), "market")
    return Order(
        client_order_id=str(o.get("clientOrderId")),
        symbol=str(o["symbol"]),
        side="buy" if o.get("side") == "BUY" else "sell",
        type=kind,  # type: ignore[arg-type]
        quantity=Decimal(str(o.get("origQty", "0"))),
        status=STATUS.get(str(o.get("status")), "new"),  # type: ignore[arg-type]
        filled_quantity=filled,
        average_price=average if filled else None,
        reduce_only=bool(o.get("reduceOnly")),
        venue_order_id=str(o.get("orderId")),
    )


def venue_algo(o: dict[str, Any]) -> Order:
    """An algo (conditional) order's JSON (``/fapi/v1/algoOrder``) as an :class:`Order`."""
    kind = "stop_market" if o.get("orderType") == "STOP_MARKET" else "take_profit_market"
    return Order(
        client_order_id=str(o.get("clientAlgoId")),
        symbol=str(o.get("symbol", "")),
        side="buy" if o.get("side") == "BUY" else "sell",
        type=kind,  # type: ignore[arg-type]
        quantity=Decimal(str(o.get("quantity") or "0")),
        status=STATUS.get(str(o.get("algoStatus", "NEW")), "new"),  # type: ignore[arg-type]
        stop_price=Decimal(str(o["triggerPrice"])) if o.get("triggerPrice") else None,
        reduce_only=True,
        venue_order_id=str(o.get("algoId")),
    )
