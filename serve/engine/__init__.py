"""The engine side of a serving replica: the vLLM process and what is loaded into it."""
