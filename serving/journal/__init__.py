"""The transactional trade journal: tables, migrations, queries (see :class:`Journal`)."""

from serving.journal.journal import Journal, mask_url
from serving.journal.models import (
    OPEN_ORDER_STATUSES,
    Base,
    Decision,
    EquitySnapshot,
    Event,
    Fill,
    Order,
    Position,
    ProtectiveOrder,
    Signal,
    Veto,
)

__all__ = [
    "OPEN_ORDER_STATUSES",
    "Base",
    "Decision",
    "EquitySnapshot",
    "Event",
    "Fill",
    "Journal",
    "Order",
    "Position",
    "ProtectiveOrder",
    "Signal",
    "Veto",
    "mask_url",
]
