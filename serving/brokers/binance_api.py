"""How Binance's APIs (USD-M futures and spot) spell our orders, and how we read its answers.

Pure translation, no I/O. Futures: :func:`order_params` for ``futures_create_order``,
:func:`venue_order` / :func:`venue_algo` for its order and algo-order JSON; conditional legs
(stops, take-profits) carry our id as ``clientAlgoId``: python-binance 1.0.37 routes them to
``/fapi/v1/algoOrder`` and drops ``newClientOrderId``. Spot: :func:`spot_order_params`,
:func:`oco_params` (a take-profit ``LIMIT_MAKER`` and a ``STOP_LOSS_LIMIT`` sharing one
quantity) and :func:`venue_spot_order`. Both: :func:`symbol_rules` for ``exchangeInfo`` and
:func:`trade_totals` for the trades of one order.
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
            _min_notional(filters),
        )
    return rules


def _min_notional(filters: dict[str, dict[str, Any]]) -> Decimal:
    if "NOTIONAL" in filters:  # spot
        return Decimal(filters["NOTIONAL"].get("minNotional", "0"))
    return Decimal(filters.get("MIN_NOTIONAL", {}).get("notional", "0"))


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


SPOT_TYPES = {"market": "MARKET", "stop_loss_limit": "STOP_LOSS_LIMIT", "limit_maker": "LIMIT_MAKER"}


def spot_order_params(order: OrderRequest) -> dict[str, Any]:
    """The spot ``create_order`` parameters of an order (``FULL`` answers for market orders)."""
    params: dict[str, Any] = {
        "symbol": order.symbol,
        "side": order.side.upper(),
        "type": SPOT_TYPES[order.type],
        "quantity": str(order.quantity),
        "newClientOrderId": order.client_order_id,
    }
    if order.type == "market":
        return params | {"newOrderRespType": "FULL"}
    params["price"] = str(order.price)
    if order.type == "stop_loss_limit":
        params |= {"stopPrice": str(order.stop_price), "timeInForce": "GTC"}
    return params


def oco_params(take_profit: OrderRequest, stop: OrderRequest) -> dict[str, Any]:
    """The ``create_oco_order`` parameters of a sell OCO: take-profit above, stop-loss-limit below."""
    if take_profit.quantity != stop.quantity or take_profit.side != "sell" or stop.side != "sell":
        raise ValueError("an OCO's two legs sell one quantity")
    return {
        "symbol": stop.symbol,
        "side": "SELL",
        "quantity": str(stop.quantity),
        "aboveType": "LIMIT_MAKER",
        "abovePrice": str(take_profit.price),
        "aboveClientOrderId": take_profit.client_order_id,
        "belowType": "STOP_LOSS_LIMIT",
        "belowStopPrice": str(stop.stop_price),
        "belowPrice": str(stop.price),
        "belowTimeInForce": "GTC",
        "belowClientOrderId": stop.client_order_id,
        "newOrderRespType": "RESULT",
    }


def venue_spot_order(o: dict[str, Any]) -> Order:
    """A spot order's JSON (``/api/v3/order``, ``openOrders``) as an :class:`Order`."""
    filled = Decimal(str(o.get("executedQty", "0")))
    quote = Decimal(str(o.get("cummulativeQuoteQty", "0")))
    kind = {v: k for k, v in SPOT_TYPES.items()}.get(str(o.get("type")), "market")
    stop = Decimal(str(o.get("stopPrice", "0")))
    return Order(
        client_order_id=str(o.get("clientOrderId")),
        symbol=str(o["symbol"]),
        side="buy" if o.get("side") == "BUY" else "sell",
        type=kind,  # type: ignore[arg-type]
        quantity=Decimal(str(o.get("origQty", "0"))),
        status=STATUS.get(str(o.get("status")), "new"),  # type: ignore[arg-type]
        filled_quantity=filled,
        average_price=quote / filled if filled else None,
        stop_price=stop or None,
        reduce_only=o.get("side") == "SELL",
        venue_order_id=str(o.get("orderId")),
    )


def trade_totals(trades: list[dict[str, Any]], quote: str) -> tuple[Decimal, Decimal, Decimal, Decimal]:
    """One order's trades (``myTrades`` / ``userTrades``) as (quantity, average price, quote fee, base fee).

    ``quote fee`` is the commission charged in the quote asset; ``base fee`` the part charged
    in the base asset (spot buys pay their fee in what they bought).
    """
    quantity = sum((Decimal(t["qty"]) for t in trades), Decimal(0))
    notional = sum((Decimal(t["qty"]) * Decimal(t["price"]) for t in trades), Decimal(0))
    quote_fee = sum((Decimal(t["commission"]) for t in trades if t["commissionAsset"] == quote), Decimal(0))
    base_fee = sum((Decimal(t["commission"]) for t in trades if t["commissionAsset"] != quote), Decimal(0))
    return quantity, (notional / quantity if quantity else Decimal(0)), quote_fee, base_fee
