"""Prompt text and weighted prompts as users give them (flags, control commands, schedule
files), checked and normalised in one place."""
from __future__ import annotations

import typing as tp

from .config import MAX_PROMPT_CHARS

#: The most prompts one mix may hold, the largest weight, and the longest morph.
MAX_PROMPTS = 4
MAX_WEIGHT = 1000.0
MAX_MORPH_SECONDS = 600.0

WeightedPrompts = tp.Tuple[tp.Tuple[str, float], ...]


class PromptError(ValueError):
    """A prompt or a weighted prompt list that cannot be used; the message says why."""


def number(value: tp.Any, name: str, integer: bool = False) -> float:
    """A JSON/TOML number (not a boolean), or PromptError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        raise PromptError(f"{name} must be {'an integer' if integer else 'a number'} (got {value!r})")
    return value


def prompt_text(prompt: tp.Any, name: str = "prompt") -> str:
    """Any text → one line (newlines, tabs and runs of spaces become one space), non-empty,
    at most MAX_PROMPT_CHARS."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise PromptError(f"{name} must be a non-empty text")
    prompt = " ".join(prompt.split())
    if len(prompt) > MAX_PROMPT_CHARS:
        raise PromptError(f"{name} is {len(prompt)} characters; the limit is {MAX_PROMPT_CHARS}")
    return prompt


def weighted_prompts(prompts: tp.Any, name: str = "prompts") -> WeightedPrompts:
    """[{text, weight?}, ...] (1 to MAX_PROMPTS, weights > 0, default 1) → ((text, weight / Σ), ...);
    the same text twice adds up."""
    usage = f'{name} is a list of 1 to {MAX_PROMPTS} {{"text": "...", "weight": 1.0}}'
    if not isinstance(prompts, list) or not 1 <= len(prompts) <= MAX_PROMPTS:
        raise PromptError(f"{usage} (got {len(prompts) if isinstance(prompts, list) else type(prompts).__name__})")
    weights: tp.Dict[str, float] = {}
    for entry in prompts:
        if not isinstance(entry, dict) or set(entry) - {"text", "weight"}:
            raise PromptError(usage)
        weight = number(entry.get("weight", 1.0), "weight")
        if not 0 < weight <= MAX_WEIGHT:
            raise PromptError(f"each weight must be above 0 (and at most {MAX_WEIGHT:g}); got {weight:g}")
        text = prompt_text(entry.get("text"), "text")
        weights[text] = weights.get(text, 0.0) + weight
    total = sum(weights.values())
    return tuple((text, weight / total) for text, weight in weights.items())


def morph_seconds(value: tp.Any) -> float:
    seconds = number(value, "morph_seconds")
    if not 0 <= seconds <= MAX_MORPH_SECONDS:
        raise PromptError(f"morph_seconds must be between 0 and {MAX_MORPH_SECONDS:g} (got {seconds:g})")
    return float(seconds)
