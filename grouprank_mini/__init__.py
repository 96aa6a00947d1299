"""grouprank-mini: learn and reproduce GroupRank, groupwise LLM reranking trained with RL."""
from .runtime import configure_environment

configure_environment()

from .config import PRESETS, Preset, get_preset  # noqa: E402

__all__ = ["PRESETS", "Preset", "get_preset"]
