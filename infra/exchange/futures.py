"""The USD-M futures order side: orders, algo (conditional) orders, positions and the wallet."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from infra.exchange.base import _ExchangeBase
from infra.exchange.model import (
    _FUTURES_ALGO_TYPES,
    ZERO,
    Fill,
    Order,
    _ApiError,
    _dec,
    _flag,
    _int,
    _mandatory,
    _need,
    _required,
    _s,
    _touch_now,
)


class _FuturesOrders(_ExchangeBase):
    """USD-M futures order endpoints (one-way mode), margin checks and futures fills."""

    # ----- USD-M futures ------------------------------------------------------------------------
    def _futures_new_order(self, params: dict[str, str], path: str) -> dict[str, Any]:
        symbol, side, kind = self._order_basics("futures", params)
        if kind in _FUTURES_ALGO_TYPES:
            msg = (
                "Order type not supported for this endpoint. Please use the Algo Order API endpoints instead."
            )
            raise _ApiError(-4120, msg)
        if kind not in ("MARKET", "LIMIT"):
            raise _ApiError(-1116, "Invalid orderType.")
        client_id = self._client_id("futures", params.get("newClientOrderId"), -4116)
        order = Order(
            "futures",
            symbol,
            0,
            client_id,
            side,
            kind,
            _required(_dec(params, "quantity"), "quantity"),
            price=_dec(params, "price") or ZERO,
            reduce_only=_flag(params, "reduceOnly"),
            time_in_force=params.get("timeInForce", "GTC"),
        )
        if kind == "LIMIT" and order.price <= 0:
            raise _ApiError(-1102, _mandatory("price"))
        now_price = self.price(symbol, "futures")
        self._check_futures(order, order.price, now_price)
        crosses = kind == "LIMIT" and (
            order.price >= now_price if side == "BUY" else order.price <= now_price
        )
        qty = self._fillable(order, now_price) if kind == "MARKET" or crosses else order.quantity
        self._place(order)
        if kind == "MARKET" or crosses:
            self._futures_fill(order, qty, now_price, False, order.time)
        return self._futures_json(order, ack=params.get("newOrderRespType", "ACK") == "ACK")

    def _check_futures(self, order: Order, price: Decimal, now_price: Decimal) -> None:
        f = self.filters(order.symbol, "futures")
        if price < 0 or (price and price % f.tick_size):
            raise _ApiError(-4014, "Price not increased by tick size.")
        if order.close_position:
            return
        if order.quantity <= 0:
            raise _ApiError(-4003, "Quantity less than or equal to zero.")
        if order.quantity % f.step_size:
            raise _ApiError(-1111, "Precision is over the maximum defined for this asset.")
        if order.quantity < f.min_qty:
            raise _ApiError(-4005, f"Quantity less than min quantity {_s(f.min_qty)}.")
        if not order.reduce_only and order.quantity * (price or now_price) < f.min_notional:
            least = _s(f.min_notional)
            msg = f"Order's notional must be no smaller than {least} (unless you choose reduce only)."
            raise _ApiError(-4164, msg)

    def _fillable(self, order: Order, price: Decimal) -> Decimal:
        """The quantity a fill now would take: reduce-only capped; margin checked (-2019)."""
        pos = self.position(order.symbol)
        signed = order.quantity if order.side == "BUY" else -order.quantity
        if order.reduce_only:
            if pos.amount == 0 or (pos.amount > 0) == (signed > 0):
                raise _ApiError(-2022)
            return min(order.quantity, abs(pos.amount))
        new_amount = pos.amount + signed
        if abs(new_amount) > abs(pos.amount):
            others = sum(
                (abs(p.amount) * p.entry_price / p.leverage for p in self.positions.values() if p is not pos),
                ZERO,
            )
            need = abs(new_amount) * price / pos.leverage + order.quantity * price * self.taker_fee
            if need > self.futures_wallet + self._unrealized() - others:
                raise _ApiError(-2019)
        return order.quantity

    def _unrealized(self, symbol: str | None = None) -> Decimal:
        total = ZERO
        for p in self.positions.values():
            if p.amount and (symbol is None or p.symbol == symbol):
                total += p.amount * (self.price(p.symbol, "futures") - p.entry_price)
        return total

    def _futures_fill(self, order: Order, qty: Decimal, price: Decimal, maker: bool, at: int) -> None:
        pos = self.position(order.symbol)
        signed = qty if order.side == "BUY" else -qty
        realized, new_amount = ZERO, pos.amount + signed
        if pos.amount and (pos.amount > 0) != (signed > 0):
            closing = min(qty, abs(pos.amount))
            realized = closing * (price - pos.entry_price) * (1 if pos.amount > 0 else -1)
            if new_amount == 0:
                pos.entry_price = ZERO
            elif (new_amount > 0) != (pos.amount > 0):
                pos.entry_price = price
        else:
            pos.entry_price = (abs(pos.amount) * pos.entry_price + qty * price) / abs(new_amount)
        notional, rate = self._record(order, qty, price, maker, at)
        order.status = "FILLED"  # a reduce-only order capped to the position is done
        fee = notional * rate
        pos.amount, pos.update_time = new_amount, at
        self.futures_wallet += realized - fee
        self.fills.append(
            Fill(
                next(self._ids),
                "futures",
                order.symbol,
                order.order_id,
                order.client_id,
                order.side,
                price,
                qty,
                fee,
                "USDT",
                maker,
                realized,
                at,
            )
        )

    def _futures_new_algo(self, params: dict[str, str], path: str) -> dict[str, Any]:
        if _need(params, "algoType").upper() != "CONDITIONAL":
            raise _ApiError(-1116, "Invalid algoType.")
        symbol, side, kind = self._order_basics("futures", params)
        if kind not in _FUTURES_ALGO_TYPES:
            raise _ApiError(-1116, "Invalid orderType.")
        client_id = self._client_id("algo", params.get("clientAlgoId"), -4116)
        close_position, reduce_only = _flag(params, "closePosition"), _flag(params, "reduceOnly")
        qty = _dec(params, "quantity")
        for sent, name in ((qty is not None, "quantity"), (reduce_only, "reduceOnly")):
            if close_position and sent:
                raise _ApiError(-1106, f"Parameter '{name}' sent when not required.")
        order = Order(
            "futures",
            symbol,
            0,
            client_id,
            side,
            kind,
            ZERO if close_position else _required(qty, "quantity"),
            price=_dec(params, "price") or ZERO,
            stop_price=_required(_dec(params, "triggerPrice"), "triggerPrice"),
            reduce_only=reduce_only,
            close_position=close_position,
            algo=True,
            time_in_force=params.get("timeInForce", "GTC"),
        )
        if order.stop_price <= 0:
            raise _ApiError(-4013, "Price less than min price.")
        now_price = self.price(symbol, "futures")
        self._check_futures(order, order.stop_price, now_price)
        if _touch_now(order, now_price):
            raise _ApiError(-2021)
        return self._algo_json(self._place(order))

    def _futures_cancel(self, params: dict[str, str], path: str) -> dict[str, Any]:
        order = self._find("futures", params, unknown=-2011)
        if not order.is_open:
            raise _ApiError(-2011)
        order.status, order.update_time = "CANCELED", self.clock()
        return self._futures_json(order)

    def _futures_cancel_algo(self, params: dict[str, str], path: str) -> dict[str, Any]:
        order = self._find("algo", params, unknown=-2011)
        if not order.is_open:
            raise _ApiError(-2011)
        order.status, order.update_time = "CANCELED", self.clock()
        return {"algoId": order.order_id, "clientAlgoId": order.client_id, "code": "200", "msg": "success"}

    def _futures_leverage(self, params: dict[str, str], path: str) -> dict[str, Any]:
        symbol, leverage = self._symbol("futures", params), _int(params, "leverage")
        if not 1 <= leverage <= 125:
            raise _ApiError(-4028, f"Leverage {leverage} is not valid")
        self.position(symbol).leverage = leverage
        return {"leverage": leverage, "maxNotionalValue": "1000000", "symbol": symbol}

    def _futures_margin_type(self, params: dict[str, str], path: str) -> dict[str, Any]:
        symbol, wanted = self._symbol("futures", params), _need(params, "marginType").upper()
        if wanted not in ("ISOLATED", "CROSSED"):
            raise _ApiError(-1116, "Invalid marginType.")
        pos = self.position(symbol)
        if pos.margin_type == wanted:
            raise _ApiError(-4046, "No need to change margin type.")
        if pos.amount:
            raise _ApiError(-4048, "Margin type cannot be changed if there exists position.")
        if self.open_orders("futures", symbol):
            raise _ApiError(-4047, "Margin type cannot be changed if there exists open orders.")
        pos.margin_type = wanted
        return {"code": 200, "msg": "success"}

    def _futures_positions(self, params: dict[str, str], path: str) -> list[dict[str, Any]]:
        wanted = params.get("symbol")
        symbols = sorted({s for (m, s) in self._filters if m == "futures"})
        if wanted is not None:
            self.filters(wanted, "futures")
            symbols = [wanted]
        answer = []
        for symbol in symbols:
            pos = self.position(symbol)
            if "/v3/" in path and not pos.amount and not self.open_orders("futures", symbol):
                continue  # v3 lists only symbols with a position or open orders
            mark = self.price(symbol, "futures")
            margin = abs(pos.amount) * mark / pos.leverage
            row = {
                "symbol": symbol,
                "positionSide": "BOTH",
                "positionAmt": _s(pos.amount),
                "entryPrice": _s(pos.entry_price),
                "breakEvenPrice": _s(pos.entry_price),
                "markPrice": _s(mark),
                "unRealizedProfit": _s(pos.amount * (mark - pos.entry_price)),
                "liquidationPrice": "0",
                "notional": _s(pos.amount * mark),
                "marginAsset": "USDT",
                "initialMargin": _s(margin),
                "positionInitialMargin": _s(margin),
                "isolatedMargin": "0",
                "updateTime": pos.update_time,
            }
            if "/v2/" in path:
                row |= {"leverage": str(pos.leverage), "marginType": pos.margin_type.lower()}
            answer.append(row)
        return answer

    def _futures_balance(self) -> list[dict[str, Any]]:
        margin = sum((abs(p.amount) * p.entry_price / p.leverage for p in self.positions.values()), ZERO)
        upnl = self._unrealized()
        available = self.futures_wallet + upnl - margin
        return [
            {
                "accountAlias": "fake",
                "asset": "USDT",
                "balance": _s(self.futures_wallet),
                "crossWalletBalance": _s(self.futures_wallet),
                "crossUnPnl": _s(upnl),
                "availableBalance": _s(available),
                "maxWithdrawAmount": _s(available),
                "marginAvailable": True,
                "updateTime": self.clock(),
            }
        ]

    def _futures_json(self, o: Order, ack: bool = False) -> dict[str, Any]:
        done = not ack  # an ACK answer shows the order as accepted, before its fill
        return {
            "orderId": o.order_id,
            "symbol": o.symbol,
            "status": o.status if done else "NEW",
            "clientOrderId": o.client_id,
            "price": _s(o.price),
            "avgPrice": _s(o.avg_price) if done else "0.00",
            "origQty": _s(o.quantity),
            "executedQty": _s(o.executed_qty) if done else "0",
            "cumQty": _s(o.executed_qty) if done else "0",
            "cumQuote": _s(o.cum_quote) if done else "0",
            "timeInForce": o.time_in_force,
            "type": o.type,
            "reduceOnly": o.reduce_only,
            "closePosition": o.close_position,
            "side": o.side,
            "positionSide": "BOTH",
            "stopPrice": _s(o.stop_price),
            "workingType": "CONTRACT_PRICE",
            "priceProtect": False,
            "origType": o.orig_type,
            "time": o.time,
            "updateTime": o.update_time,
        }

    def _algo_json(self, o: Order) -> dict[str, Any]:
        return {
            "algoId": o.order_id,
            "clientAlgoId": o.client_id,
            "algoType": "CONDITIONAL",
            "orderType": o.type,
            "symbol": o.symbol,
            "side": o.side,
            "positionSide": "BOTH",
            "timeInForce": o.time_in_force,
            "quantity": _s(o.quantity),
            "algoStatus": o.status,
            "triggerPrice": _s(o.stop_price),
            "price": _s(o.price),
            "workingType": "CONTRACT_PRICE",
            "closePosition": o.close_position,
            "priceProtect": False,
            "reduceOnly": o.reduce_only,
            "createTime": o.time,
            "updateTime": o.update_time,
            "triggerTime": o.update_time if o.triggered else 0,
            "actualOrderId": "" if o.actual_order_id is None else str(o.actual_order_id),
            "actualPrice": _s(o.avg_price),
            "executedQty": _s(o.executed_qty),
        }
