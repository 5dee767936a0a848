"""What usage is worth: the price that bills a customer's usage of a meter, and quantities as
money in that price's currency, for the pages where a person decides (preview, run, dashboard).

The price of a (customer, meter) is the one on the customer's subscription, the one Stripe bills;
without a subscription, the meter's active price (what usage would be billed at)."""

from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal

from billing.formatting import EMPTY, money
from billing.models import ENDED_SUBSCRIPTION, PriceMapping, Subscription

ZERO = Decimal(0)


@dataclass
class PriceBook:
    """Prices looked up once for many rows: two queries, then dictionary reads."""

    by_meter: dict[int, PriceMapping] = field(default_factory=dict)
    by_customer_meter: dict[tuple[int, int], PriceMapping] = field(default_factory=dict)

    @classmethod
    def load(cls, *, customer_ids: Iterable[int] | None = None) -> "PriceBook":
        """Every active price by meter, and the subscription prices of `customer_ids` (None:
        of every customer)."""
        book = cls()
        for price in PriceMapping.objects.filter(active=True).order_by("-pk"):
            book.by_meter[price.meter_id] = price  # the oldest active price wins
        links = Subscription.prices.through.objects.exclude(
            subscription__status__in=ENDED_SUBSCRIPTION
        )
        if customer_ids is not None:
            links = links.filter(subscription__customer_id__in=list(customer_ids))
        pairs = list(
            links.order_by("subscription_id").values_list(
                "subscription__customer_id", "pricemapping_id"
            )
        )
        prices = PriceMapping.objects.in_bulk({price_id for _, price_id in pairs})
        for customer_id, price_id in pairs:  # the newest subscription wins
            price = prices[price_id]
            book.by_customer_meter[(customer_id, price.meter_id)] = price
        return book

    def price(self, *, meter_id: int, customer_id: int | None = None) -> PriceMapping | None:
        if customer_id is not None:
            found = self.by_customer_meter.get((customer_id, meter_id))
            if found is not None:
                return found
        return self.by_meter.get(meter_id)

    def value(
        self, *, quantity: Decimal, meter_id: int, customer_id: int | None = None
    ) -> "Amounts":
        """`quantity` of the meter as money (empty when no price is known)."""
        amounts = Amounts()
        price = self.price(meter_id=meter_id, customer_id=customer_id)
        if price is not None:
            amounts.add(quantity=quantity, price=price)
        return amounts


@dataclass
class Amounts:
    """Money in one or more currencies (customers of one meter may pay in several)."""

    minor_units: dict[str, Decimal] = field(default_factory=dict)  # currency -> amount

    def add(self, *, quantity: Decimal, price: PriceMapping) -> None:
        value = quantity * price.unit_amount_decimal
        self.minor_units[price.currency] = self.minor_units.get(price.currency, ZERO) + value

    def __iadd__(self, other: "Amounts") -> "Amounts":
        for currency, value in other.minor_units.items():
            self.minor_units[currency] = self.minor_units.get(currency, ZERO) + value
        return self

    def text(self, *, signed: bool = False) -> str:
        """ "12.34 USD", "+12.34 USD" when signed, a dash when no price is known."""
        if not self.minor_units:
            return EMPTY
        parts = []
        for currency, value in sorted(self.minor_units.items()):
            shown = money(minor_units=value, currency=currency)
            parts.append(f"+{shown}" if signed and value > 0 else shown)
        return ", ".join(parts)

    def __str__(self) -> str:
        return self.text()
