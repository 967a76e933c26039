"""A local Azure OpenAI chat-completions server that judges like a scripted LLM, for the
cold path's AI-assisted text evaluators (see script.py for the markers)."""

from tests.emulators.openai.script import DEFAULT_SCORE
from tests.emulators.openai.server import DEFAULT_KEY, JudgeRequest, JudgeServer

__all__ = ["DEFAULT_KEY", "DEFAULT_SCORE", "JudgeRequest", "JudgeServer"]
