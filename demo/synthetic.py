"""Synthetic customer-support questions and the drifts that move them, for benchmarks and tests.

`support` is the traffic an adapter was trained on; `cooking` (a new topic), `pasted_context` (the
same topic, three times longer) and `new_products` (the same templates, unseen product names) are
what arrives after a drift. Each takes a seeded numpy Generator, so a stream is reproducible.
"""

from __future__ import annotations

import numpy as np

OPENERS = ["How do I", "Can you help me", "Please explain how to", "What is the fastest way to", "I need to"]
OPENERS += ["Is it possible to", "Tell me how to", "Why can't I"]
VERBS = ["reset", "update", "cancel", "find", "change", "download", "check", "fix", "renew", "close"]
SUBJECTS = ["my account", "the invoice", "my password", "the billing page", "my subscription", "the refund"]
SUBJECTS += ["two-factor login", "the mobile app", "my order", "the delivery address", "the payment method"]
TAILS = ["today", "on my phone", "before Friday", "for my team", "without losing data", "", "right now"]
COOK_VERBS = ["bake", "season", "grill", "marinate", "slice", "roast", "simmer", "whisk"]
COOK_SUBJECTS = ["a sourdough loaf", "the risotto", "salmon fillets", "a lemon tart", "fresh pasta"]
COOK_SUBJECTS += ["a curry"]
COOK_TAILS = ["for dinner", "for six guests", "in a cast iron pan", "without an oven", "", "the Italian way"]
NEW_PRODUCTS = ["zentrix", "quorbal", "hyloflux", "vantium", "plexora", "dravik", "omnisync", "kelvora"]


def support(rng: np.random.Generator) -> str:
    """A support question; 30% carry an order number (out of vocabulary even without drift)."""
    text = f"{rng.choice(OPENERS)} {rng.choice(VERBS)} {rng.choice(SUBJECTS)} {rng.choice(TAILS)}".strip()
    if rng.random() < 0.3:
        text += f" (order {rng.integers(10_000, 99_999)})"
    return text + "?"


def cooking(rng: np.random.Generator) -> str:
    """A new topic: the vocabulary and the embeddings shift."""
    verb, subject, tail = rng.choice(COOK_VERBS), rng.choice(COOK_SUBJECTS), rng.choice(COOK_TAILS)
    return f"{rng.choice(OPENERS)} {verb} {subject} {tail}".strip() + "?"


def pasted_context(rng: np.random.Generator) -> str:
    """The same topic with pasted context: the length shifts, the vocabulary barely does."""
    return " ".join(support(rng) for _ in range(3))


def new_products(rng: np.random.Generator) -> str:
    """The same templates about unseen products: the vocabulary shifts, the length barely does."""
    return f"{rng.choice(OPENERS)} {rng.choice(VERBS)} my {rng.choice(NEW_PRODUCTS)} {rng.choice(TAILS)}?"
