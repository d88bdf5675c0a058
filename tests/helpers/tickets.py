"""Support tickets as chat examples: a small routing task for fine-tuning the tiny model quickly."""

from __future__ import annotations

import json

TEAMS = {"invoice": "billing", "password": "access", "crash": "engineering", "parcel": "shipping"}


def ticket_chats(count: int) -> bytes:
    """`count` chat examples as JSONL (ticket n asks which team; the subjects take turns)."""
    rows = []
    for n in range(count):
        subject = list(TEAMS)[n % len(TEAMS)]
        turns = [
            {"role": "user", "content": f"Ticket {n}: my {subject} issue, which team?"},
            {"role": "assistant", "content": TEAMS[subject]},
        ]
        rows.append(json.dumps({"messages": turns}))
    return ("\n".join(rows) + "\n").encode()
