"""Orchestration: screening every frame, events, explanations (the LLM agent builds on this)."""
