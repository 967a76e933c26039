"""What the judge answers: scripted by markers inside the evaluated text.

The evaluators put the response (and query, context) into the prompt they send, so a test
steers the judge by writing a marker into a document's ``output_text``:

- ``[[judge:score=N]]``  answer score N (1-5); without a marker the judge answers ``DEFAULT_SCORE``
- ``[[judge:timeout]]``  hold the request (longer than any test's call timeout)
- ``[[judge:throttle]]`` 429 with ``Retry-After`` on every attempt
- ``[[judge:throttle-once]]`` 429 on the first attempt for this prompt, an answer after
- ``[[judge:malformed]]`` a 200 whose content is not the JSON the prompt asks for
- ``[[doc:ID]]`` names the document in the server's request log (any ID without ``]``)

Answers follow the ``json_object`` output the evaluators' prompty files ask for:
``{"reason": ..., "score": N, "status": "completed"}``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Literal

DEFAULT_SCORE = 3
TRAITS = ("groundedness", "relevance", "coherence", "fluency")

Action = Literal["answer", "timeout", "throttle", "throttle-once", "malformed"]

_JUDGE = re.compile(r"\[\[judge:(score=[1-5]|timeout|throttle-once|throttle|malformed)\]\]")
_ACTIONS: dict[str, Action] = {
    "timeout": "timeout",
    "throttle": "throttle",
    "throttle-once": "throttle-once",
    "malformed": "malformed",
}
_DOC = re.compile(r"\[\[doc:([^\]]+)\]\]")


@dataclass(frozen=True)
class Directive:
    action: Action
    score: int = DEFAULT_SCORE
    doc: str | None = None


def directive(prompt: str) -> Directive:
    """The first judge marker in ``prompt`` (the answer by default) and the document tag."""
    doc_match = _DOC.search(prompt)
    doc = doc_match.group(1) if doc_match else None
    match = _JUDGE.search(prompt)
    if match is None:
        return Directive("answer", doc=doc)
    word = match.group(1)
    if word.startswith("score="):
        return Directive("answer", int(word.removeprefix("score=")), doc)
    return Directive(_ACTIONS[word], doc=doc)


def trait(prompt: str) -> str:
    """Which evaluator is asking: the first trait its prompt names (instructions come before
    the evaluated data)."""
    lowered = prompt.lower()
    found = [(lowered.find(name), name) for name in TRAITS if name in lowered]
    return min(found)[1] if found else "unknown"


def answer_content(score: int) -> str:
    return json.dumps(
        {
            "reason": f"Let's think step by step: scripted score {score}.",
            "score": score,
            "status": "completed",
        }
    )


MALFORMED_CONTENT = "I would rate this response quite highly, maybe four or so."
