"""Field validators that give a finance person a message they can act on."""

from django.core.validators import RegexValidator

openmeter_slug = RegexValidator(
    r"^[a-z0-9]+(?:_[a-z0-9]+)*$",
    "Use lowercase letters and digits separated by single underscores (e.g. api_calls), "
    "exactly as the meter's slug in OpenMeter.",
)
event_name = RegexValidator(
    r"^[A-Za-z0-9_.:-]{1,100}$",
    "Use up to 100 letters, digits, '_', '-', '.' or ':'.",
)
currency_code = RegexValidator(
    r"^[a-z]{3}$", "Enter a three-letter ISO currency code in lowercase, e.g. usd or eur."
)


def stripe_id(prefix: str, label: str) -> RegexValidator:
    return RegexValidator(
        rf"^{prefix}[A-Za-z0-9]+$",
        f"A Stripe {label} id starts with '{prefix}' (copy it from the Stripe dashboard).",
    )


stripe_meter_id = stripe_id("mtr_", "meter")
stripe_customer_id = stripe_id("cus_", "customer")
stripe_product_id = stripe_id("prod_", "product")
stripe_price_id = stripe_id("price_", "price")
stripe_subscription_id = stripe_id("sub_", "subscription")
