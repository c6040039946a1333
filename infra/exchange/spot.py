"""The spot order side: orders, OCO lists, cancels, balances and the account."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from infra.exchange.base import _ExchangeBase
from infra.exchange.model import (
    _LIMITS,
    _SPOT_TYPES,
    ZERO,
    Fill,
    Order,
    _ApiError,
    _assets,
    _dec,
    _mandatory,
    _need,
    _required,
    _s,
    _touch_now,
)


class _SpotOrders(_ExchangeBase):
    """Spot order endpoints, their filter and funds checks, and spot fills."""

    # ----- spot ---------------------------------------------------------------------------------
    def free(self, asset: str) -> Decimal:
        """A spot asset's balance not locked by open orders."""
        return self.spot_balances.get(asset, ZERO) - self._locked(asset)

    def _spot_new_order(self, params: dict[str, str], path: str) -> dict[str, Any]:
        symbol, side, kind = self._order_basics("spot", params)
        if kind not in _SPOT_TYPES:
            raise _ApiError(-1116, "Invalid orderType.")
        client_id = self._client_id("spot", params.get("newClientOrderId"), -2010, "Duplicate order sent.")
        now_price, f = self.price(symbol, "spot"), self.filters(symbol, "spot")
        qty, quote_qty = _dec(params, "quantity"), _dec(params, "quoteOrderQty")
        if qty is None and quote_qty is not None and kind == "MARKET":
            qty = (quote_qty / now_price // f.step_size) * f.step_size
        order = Order(
            "spot",
            symbol,
            0,
            client_id,
            side,
            kind,
            _required(qty, "quantity"),
            price=_dec(params, "price") or ZERO,
            stop_price=_dec(params, "stopPrice") or ZERO,
            time_in_force=params.get("timeInForce", "GTC"),
        )
        self._check_spot(order, now_price)
        self._place(order)
        crosses = kind in _LIMITS and (
            order.price >= now_price if side == "BUY" else order.price <= now_price
        )
        if kind == "MARKET" or crosses:
            self._spot_fill(order, order.quantity, now_price, False, order.time)
        default = "FULL" if kind in ("MARKET", "LIMIT") else "ACK"
        return self._spot_answer(order, params.get("newOrderRespType", default))

    def _check_spot(self, order: Order, now_price: Decimal) -> None:
        """Filters, trigger side and funds, with Binance's spot codes."""
        f = self.filters(order.symbol, "spot")
        needs_price = order.type in _LIMITS or order.type.endswith("_LIMIT")
        if needs_price and order.price <= 0:
            raise _ApiError(-1102, _mandatory("price"))
        if order.type not in _LIMITS and order.type != "MARKET" and order.stop_price <= 0:
            raise _ApiError(-1102, _mandatory("stopPrice"))
        for value in (order.price, order.stop_price):
            if value < 0 or (value and value % f.tick_size):
                raise _ApiError(-1013, "Filter failure: PRICE_FILTER")
        if order.quantity < f.min_qty or (order.quantity - f.min_qty) % f.step_size:
            raise _ApiError(-1013, "Filter failure: LOT_SIZE")
        ref = order.price or order.stop_price or now_price
        if order.quantity * ref < f.min_notional:
            raise _ApiError(-1013, "Filter failure: NOTIONAL")
        if order.type == "LIMIT_MAKER" and (
            order.price >= now_price if order.side == "BUY" else order.price <= now_price
        ):
            raise _ApiError(-2010, "Order would immediately match and take.")
        if order.stop_price and _touch_now(order, now_price):
            raise _ApiError(-2010, "Order would trigger immediately.")
        base, quote = _assets(order.symbol)
        if order.side == "SELL" and order.quantity > self.free(base):
            raise _ApiError(-2010)
        if order.side == "BUY" and order.quantity * ref > self.free(quote):
            raise _ApiError(-2010)

    def _locked(self, asset: str) -> Decimal:
        locked, lists = ZERO, set()
        for o in self.open_orders("spot"):
            base, quote = _assets(o.symbol)
            if o.order_list_id >= 0:
                if o.order_list_id in lists:
                    continue
                lists.add(o.order_list_id)
            left = o.quantity - o.executed_qty
            if o.side == "SELL" and asset == base:
                locked += left
            elif o.side == "BUY" and asset == quote:
                locked += left * (o.price or o.stop_price)
        return locked

    def _spot_fill(self, order: Order, qty: Decimal, price: Decimal, maker: bool, at: int) -> None:
        base, quote = _assets(order.symbol)
        notional, rate = self._record(order, qty, price, maker, at)
        bal = self.spot_balances
        if order.side == "BUY":
            fee, fee_asset = qty * rate, base
            bal[quote] = bal.get(quote, ZERO) - notional
            bal[base] = bal.get(base, ZERO) + qty - fee
        else:
            fee, fee_asset = notional * rate, quote
            bal[base] = bal.get(base, ZERO) - qty
            bal[quote] = bal.get(quote, ZERO) + notional - fee
        self.fills.append(
            Fill(
                next(self._ids),
                "spot",
                order.symbol,
                order.order_id,
                order.client_id,
                order.side,
                price,
                qty,
                fee,
                fee_asset,
                maker,
                ZERO,
                at,
            )
        )
        if order.order_list_id >= 0:
            for other in self.open_orders("spot", order.symbol):
                if other.order_list_id == order.order_list_id:
                    other.status, other.update_time = "EXPIRED", at

    def _spot_cancel(self, params: dict[str, str], path: str) -> dict[str, Any]:
        order = self._find("spot", params, unknown=-2011)
        if not order.is_open:
            raise _ApiError(-2011)
        legs = [
            o
            for o in self.open_orders("spot")
            if order.order_list_id >= 0 and o.order_list_id == order.order_list_id
        ]
        for o in legs or [order]:
            o.status, o.update_time = "CANCELED", self.clock()
        return self._spot_json(order) | {"origClientOrderId": order.client_id}

    def _spot_new_oco(self, params: dict[str, str], path: str) -> dict[str, Any]:
        symbol, side = self._symbol("spot", params), _need(params, "side").upper()
        qty, now_price = _required(_dec(params, "quantity"), "quantity"), self.price(symbol, "spot")
        list_id = next(self._ids)
        legs = []
        for leg in ("above", "below"):
            kind = _need(params, f"{leg}Type").upper()
            client_id = self._client_id(
                "spot", params.get(f"{leg}ClientOrderId"), -2010, "Duplicate order sent."
            )
            legs.append(
                Order(
                    "spot",
                    symbol,
                    0,
                    client_id,
                    side,
                    kind,
                    qty,
                    price=_dec(params, f"{leg}Price") or ZERO,
                    stop_price=_dec(params, f"{leg}StopPrice") or ZERO,
                    order_list_id=list_id,
                )
            )
        for order in legs:
            self._check_spot(order, now_price)
        for order in legs:
            self._place(order)
        return {
            "orderListId": list_id,
            "contingencyType": "OCO",
            "listStatusType": "EXEC_STARTED",
            "listOrderStatus": "EXECUTING",
            "listClientOrderId": params.get("listClientOrderId", f"fake-list-{list_id}"),
            "transactionTime": self.clock(),
            "symbol": symbol,
            "orders": [{"symbol": symbol, "orderId": o.order_id, "clientOrderId": o.client_id} for o in legs],
            "orderReports": [self._spot_json(o) for o in legs],
        }

    def _spot_account(self) -> dict[str, Any]:
        rates = {"maker": _s(self.maker_fee), "taker": _s(self.taker_fee), "buyer": "0", "seller": "0"}
        return {
            "makerCommission": int(self.maker_fee * 10_000),
            "takerCommission": int(self.taker_fee * 10_000),
            "commissionRates": rates,
            "canTrade": True,
            "canWithdraw": True,
            "canDeposit": True,
            "updateTime": self.clock(),
            "accountType": "SPOT",
            "balances": [
                {"asset": a, "free": _s(self.free(a)), "locked": _s(self._locked(a))}
                for a in sorted(self.spot_balances)
            ],
            "permissions": ["SPOT"],
        }

    def _spot_json(self, o: Order) -> dict[str, Any]:
        return {
            "symbol": o.symbol,
            "orderId": o.order_id,
            "orderListId": o.order_list_id,
            "clientOrderId": o.client_id,
            "price": _s(o.price),
            "origQty": _s(o.quantity),
            "executedQty": _s(o.executed_qty),
            "cummulativeQuoteQty": _s(o.cum_quote),
            "status": o.status,
            "timeInForce": o.time_in_force,
            "type": o.type,
            "side": o.side,
            "stopPrice": _s(o.stop_price),
            "time": o.time,
            "updateTime": o.update_time,
            "isWorking": o.type in _LIMITS or o.triggered or o.type == "MARKET",
            "workingTime": o.time,
            "origQuoteOrderQty": "0",
            "selfTradePreventionMode": "EXPIRE_MAKER",
        }

    def _spot_answer(self, o: Order, resp_type: str) -> dict[str, Any]:
        if resp_type == "ACK":
            return {
                "symbol": o.symbol,
                "orderId": o.order_id,
                "orderListId": -1,
                "clientOrderId": o.client_id,
                "transactTime": o.time,
            }
        answer = self._spot_json(o) | {"transactTime": o.time}
        if resp_type == "FULL":
            answer["fills"] = [
                {
                    "price": _s(f.price),
                    "qty": _s(f.qty),
                    "commission": _s(f.fee),
                    "commissionAsset": f.fee_asset,
                    "tradeId": f.trade_id,
                }
                for f in self.fills
                if f.market == "spot" and f.order_id == o.order_id
            ]
        return answer
