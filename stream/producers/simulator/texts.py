"""Prompt and answer texts: sentences built from a small built-in vocabulary (with non-ASCII
words on purpose), joined into per-simulator pools."""

from __future__ import annotations

import functools
import re
from typing import Final

import numpy as np

PROMPT_POOL: Final = 1024
ANSWER_POOL: Final = 2048


def count_tokens(text: str) -> int:
    # Roughly what BPE tokenisers give for English prose: ~4 characters per token.
    return max(1, round(len(text) / 4))


def text_pools(rng: np.random.Generator) -> tuple[list[str], list[str]]:
    """Prompts and answers for one simulator: joins of sentences from the shared pools."""
    statements, questions = _sentences()
    prompts = []
    for _ in range(PROMPT_POOL):
        k = int(rng.integers(1, 4))
        picked = [statements[i] for i in rng.integers(0, len(statements), k).tolist()]
        picked.append(questions[int(rng.integers(0, len(questions)))])
        prompts.append(" ".join(picked))
    answers = []
    for _ in range(ANSWER_POOL):
        k = int(rng.integers(3, 12))
        answers.append(
            " ".join(statements[i] for i in rng.integers(0, len(statements), k).tolist())
        )
    return prompts, answers


def _capitalise(sentence: str) -> str:
    sentence = _A_BEFORE_VOWEL.sub(r"\1n \2", sentence)
    return sentence[0].upper() + sentence[1:]


_A_BEFORE_VOWEL: Final = re.compile(r"\b([Aa]) ([aeiou])")


def _third_person(verb: str) -> str:
    if verb.endswith("y") and verb[-2] not in "aeiou":
        return verb[:-1] + "ies"
    if verb.endswith(("s", "sh", "ch", "x", "z")):
        return verb + "es"
    return verb + "s"


@functools.cache
def _sentences() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Sentence pools built once per process from the built-in vocabulary (fixed seed)."""
    rng = np.random.default_rng(20_241_122)

    def pick(words: tuple[str, ...]) -> str:
        return words[int(rng.integers(0, len(words)))]

    statements = []
    for _ in range(1536):
        template = pick(_STATEMENT_TEMPLATES)
        sentence = template.format(
            adj=pick(_ADJECTIVES),
            adj2=pick(_ADJECTIVES),
            noun=pick(_NOUNS),
            noun2=pick(_NOUNS),
            noun3=pick(_NOUNS),
            verb=pick(_VERBS),
            verbs=_third_person(pick(_VERBS)),
            adv=pick(_ADVERBS),
            prep=pick(_PREPOSITIONS),
            place=pick(_PLACES),
        )
        statements.append(_capitalise(sentence))
    questions = []
    for _ in range(512):
        template = pick(_QUESTION_TEMPLATES)
        sentence = template.format(
            adj=pick(_ADJECTIVES),
            noun=pick(_NOUNS),
            noun2=pick(_NOUNS),
            verb=pick(_VERBS),
            prep=pick(_PREPOSITIONS),
            place=pick(_PLACES),
        )
        questions.append(_capitalise(sentence))
    return tuple(statements), tuple(questions)


_STATEMENT_TEMPLATES: Final = (
    "the {adj} {noun} should {verb} the {noun2} {prep} the {noun3}.",
    "you can {verb} the {noun} {adv} if the {noun2} is {adj}.",
    "in {place}, the {noun} is usually {adj} and {adj2}.",
    "our {noun} team will {verb} the {adj} {noun2} before the next {noun3}.",
    "to {verb} a {noun}, open the {noun2} settings and select {adj} {noun3}.",
    "the {noun2} {verbs} {adv} when the {adj} {noun} changes {prep} the {noun3}.",
    "according to the {noun} policy, every {adj} {noun2} must {verb} {adv}.",
    "please note that the {noun} for {place} can {verb} the {noun2} {adv}.",
    "if the {noun} does not {verb}, check the {adj} {noun2} and try again.",
    "the {adj} {noun} and the {adj2} {noun2} both {verb} {prep} the {noun3}.",
)
_QUESTION_TEMPLATES: Final = (
    "how do I {verb} the {adj} {noun} {prep} my {noun2}?",
    "why does the {noun} not {verb} in {place}?",
    "can you explain the {adj} {noun} policy for {noun2}?",
    "what is the fastest way to {verb} a {noun}?",
    "is it possible to {verb} the {noun} {prep} the {noun2}?",
    "which {noun} should I choose for a {adj} {noun2}?",
    "when will the {adj} {noun} be available in {place}?",
)
_NOUNS: Final = (
    "account", "invoice", "subscription", "order", "refund", "password", "device", "report",
    "dashboard", "contract", "shipment", "warranty", "policy", "balance", "payment", "profile",
    "router", "license", "ticket", "schedule", "appointment", "delivery", "plan", "upgrade",
    "credit", "statement", "claim", "address", "catalogue", "discount", "voucher", "backup",
    "firmware", "calendar", "workspace", "pipeline", "dataset", "model", "quota", "budget",
    "résumé", "café", "façade", "smörgåsbord",
)  # fmt: skip
_VERBS: Final = (
    "update", "cancel", "renew", "verify", "reset", "transfer", "export", "import", "review",
    "approve", "schedule", "configure", "install", "restore", "merge", "submit", "track",
    "compare", "download", "upload", "migrate", "archive", "activate", "replace",
)  # fmt: skip
_ADJECTIVES: Final = (
    "new", "previous", "monthly", "annual", "premium", "basic", "shared", "private", "secure",
    "pending", "overdue", "default", "custom", "regional", "corporate", "temporary", "primary",
    "backup", "international", "digital", "refurbished", "naïve", "expired", "active",
)  # fmt: skip
_ADVERBS: Final = (
    "quickly", "automatically", "manually", "safely", "immediately", "usually", "directly",
    "online", "later", "again",
)  # fmt: skip
_PREPOSITIONS: Final = ("for", "with", "from", "into", "after", "before", "under", "within")
_PLACES: Final = (
    "Berlin", "Paris", "Madrid", "Tokyo", "São Paulo", "Zürich", "London", "Seattle",
    "Toronto", "Sydney", "Montréal", "Kraków",
)  # fmt: skip
