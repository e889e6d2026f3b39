"""NVIDIA Nemotron (Llama-Nemotron, Nemotron Nano v2/v3): think tags, toggled per request."""

from __future__ import annotations

from herdsman.parsers.reasoning import ThinkTagReasoningParser


class NemotronReasoningParser(ThinkTagReasoningParser):
    name = "nemotron"
    aliases = ("nano_v3", "nemotron_v3", "nemotron_nano")
