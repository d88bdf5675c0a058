"""The path one completion request takes through the gateway, in the order it meets each part.

`pipeline` (key, body, limits, model, admission) -> `limits` -> `hooks` (prompt embeddings) -> `proxy`
(to the engine, streamed) -> `call` (closed once: metrics, capture) -> `capture` (the record kept).
"""
