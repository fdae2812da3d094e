"""`llmkeys portal`: settings from the environment, the portal's own Kubernetes login, and serving.

Called by `cli`. The portal logs in to the API server as its ServiceAccount in a cluster (or with
the kubeconfig for local use) and then only ever impersonates signed-in users (`kubeapi`).
"""

from __future__ import annotations

import argparse
import asyncio
import logging

import kopf
from aiohttp import web

from llmkeys_operator.portal import app, kubeapi, oidc, settings

logger = logging.getLogger("llmkeys.portal")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="listen address (LLMKEYS_HOST)")
    parser.add_argument("--port", type=int, help="listen port (LLMKEYS_PORTAL_PORT)")
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING ... (LLMKEYS_LOG_LEVEL)")


async def portal_connection() -> kopf.ConnectionInfo:
    """The portal's own credentials: in-cluster ServiceAccount, else the kubeconfig."""
    config = kopf.OperatorSettings()
    info = kopf.login_with_service_account(settings=config) or kopf.login_with_kubeconfig(settings=config)
    if info is None:
        raise kopf.LoginError("no Kubernetes credentials: neither a service account nor a kubeconfig")
    return info


def run(args: argparse.Namespace) -> int:
    try:
        config = settings.PortalSettings.from_env(
            host=getattr(args, "host", None),
            portal_port=getattr(args, "port", None),
            log_level=(getattr(args, "log_level", None) or "").upper() or None,
        )
    except ValueError as exc:
        print(f"llmkeys portal: {exc}")
        return 2
    logging.basicConfig(level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logger.info("portal settings: %r", config)
    application = app.create_app(config, kubeapi.KubeAsUser(portal_connection), oidc.OidcClient(config))
    web.run_app(
        application,
        host=config.host,
        port=config.portal_port,
        access_log_class=app.AccessLogger,
        print=None,
        loop=asyncio.new_event_loop(),
    )
    return 0
