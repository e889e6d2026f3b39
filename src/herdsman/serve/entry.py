"""The entry point the supervisor gives its gateway processes.

``multiprocessing`` pickles a process's target by reference (module and name), and the supervisor
imports that module: this one is small, so the supervisor does not import the serving code
(``herdsman.serve.gateway``: the API, the pipeline, tokenizers, image processing). The gateway
process imports it when it starts: a process forked from the fork server finds it preloaded
(``herdsman.serve.preload``); a spawned one (``--start-method spawn``) imports it then.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

    from herdsman.config import GatewayConfig


def gateway_process(config: GatewayConfig, conn: Connection, index: int | None) -> None:
    """Run one gateway process (``herdsman.serve.gateway.gateway_process_main``)."""
    from herdsman.serve.gateway import gateway_process_main

    gateway_process_main(config, conn, index)
