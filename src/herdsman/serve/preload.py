"""What the fork server loads once for every gateway process it starts (and what an inline gateway,
``--start-method inline``, loads ahead for itself the same way: ``load_ahead``).

The supervisor starts gateway processes with multiprocessing's ``forkserver``: a process that
imports ``herdsman.serve.forkserver_preload`` (which runs ``preload`` here) once, then forks a
gateway process on each request. So every gateway process (and the warm spare) starts with the
serving code imported and the models' tokenizers loaded, and shares those pages with the fork
server copy-on-write instead of holding its own copies: the vocabularies and merges live in Rust
heaps that nothing writes after loading, and the Python objects are frozen out of the garbage
collector's reach (``gc.freeze``), whose passes would otherwise write to every object and so copy
every page.

The supervisor names the tokenizers in ``HERDSMAN_PRELOAD`` (JSON: ``{"tokenizers": [dir, ...],
"chat_template": str | null, "modules": [name, ...]}``) before the fork server starts.
fastokens' first encode builds ~40 MB of tables; with one BPE thread it starts no thread (a
thread does not survive a fork), so it runs here once (``fast_backend.warm``) and every process
shares the tables. Each process still checks its fast encoder itself (``load_model_tokenizer``),
against the ids the reference gave the probes here: where fastokens decodes alike, the reference
(``tokenizers``) was let go while loading, before the heap is trimmed and any process forked. A
tokenizer that fails to load here is loaded, and its error reported, by the gateway process as
before; one whose files changed since is read again (``load_model_tokenizer`` checks).

The serving code leaves out what only some gateways use: the image processors (numpy and
Pillow), numpy for pooling outputs, the prefix index of cache-aware routing (numpy), and grpcio
for its transport (~22 MB of a gateway process together). Where the supervisor's configuration
(``modules``: ``config_modules``) or a model's directory (``model_modules``) says a gateway will
use them, they are imported here and shared like the rest; a gateway that finds it needs one
later imports it itself.
"""

from __future__ import annotations

import gc
import importlib
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from herdsman.config import GatewayConfig
from herdsman.serve.heap import trim_heap
from herdsman.settings import PRELOAD_ENV as ENV

log = logging.getLogger(__name__)

_IMAGE_MODULES = ("herdsman.multimodal.registry", "herdsman.multimodal.service")
_INDEX_MODULE = "herdsman.routing.kv_index"
_GRPCIO_MODULE = "herdsman.engines.transport.grpcio"
# Architectures of models that generate text: any other is probably served by a pooling runner,
# whose outputs are numpy arrays.
_GENERATING = ("ForCausalLM", "ForConditionalGeneration", "LMHeadModel")


def config_modules(policies: set[str], grpc_transport: str) -> list[str]:
    """What the routing policies and the engine transport in use import beyond the serving
    code."""
    modules = [_INDEX_MODULE] if "cache_aware" in policies else []
    if grpc_transport == "grpcio":
        modules.append(_GRPCIO_MODULE)
    return modules


def model_modules(directory: Path) -> list[str]:
    """What the gateways serving the model in ``directory`` will import beyond the serving code,
    as far as its files tell: the image processors for a model with one, numpy for a model that
    does not generate text."""
    if (directory / "preprocessor_config.json").is_file():
        return list(_IMAGE_MODULES)
    try:
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
        architectures = config.get("architectures") or []
    except (OSError, ValueError, AttributeError):
        return []
    if architectures and not any(str(a).endswith(_GENERATING) for a in architectures):
        return ["numpy"]
    return []


def planned(config: GatewayConfig) -> tuple[list[str], str | None, list[str]]:
    """What a gateway of ``config`` loads ahead: the tokenizers of the models known now, the chat
    template, and the optional modules its configuration uses."""
    dirs = [spec.tokenizer_dir for spec in config.worker_specs]
    return dirs, config.chat_template, config_modules(config.policies(), config.grpc_transport)


def preload_spec(
    tokenizer_dirs: list[str], chat_template: str | None, modules: Iterable[str] = ()
) -> str:
    return json.dumps(
        {
            "tokenizers": sorted(set(tokenizer_dirs)),
            "chat_template": chat_template,
            "modules": sorted(set(modules)),
        }
    )


def preload() -> None:
    """The fork server's start: import the serving code and load ahead what ``ENV`` names."""
    # Imported here, in the fork server: the supervisor imports this module for ENV and
    # preload_spec, and must stay small. The serving code, once for all processes (the processes'
    # target, and yaml, which every process needs to read a YAML --api-keys-file, included):
    import yaml  # noqa: F401

    # A forked process runs the supervisor's main script again (multiprocessing's `prepare`),
    # which imports the CLI: imported here, it is shared too.
    import herdsman.cli
    import herdsman.serve.entry
    import herdsman.serve.gateway  # noqa: F401

    try:
        spec = json.loads(os.environ.get(ENV) or "{}")
    except ValueError:
        spec = {}
    load_ahead(spec.get("tokenizers", []), spec.get("chat_template"), spec.get("modules", []))


def load_ahead(tokenizer_dirs: list[str], chat_template: str | None, modules: list[str]) -> None:
    """Load the tokenizers (fastokens warmed on this thread) and import the modules, then freeze
    the heap: in the fork server, for every process it forks; inline, for the one process."""
    from herdsman.tokenizer.loader import preload_model_tokenizers

    modules = list(modules)
    try:
        for directory in tokenizer_dirs:
            try:
                preload_model_tokenizers([directory], chat_template)
            except Exception:  # the gateway loads it again and reports the error
                log.debug("preloading %s failed", directory, exc_info=True)
            modules += model_modules(Path(directory))
        for name in dict.fromkeys(modules):
            try:
                importlib.import_module(name)
            except Exception:  # imported again, and any error reported, where it is used
                log.debug("preloading %s failed", name, exc_info=True)
    finally:
        gc.collect()
        gc.freeze()
        trim_heap()
