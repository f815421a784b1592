"""The explorer served on a free loopback port for the browser and load tests.

``explorer_server`` runs ``make_app("toy-icl")`` in werkzeug's threaded server (what ``app.run``
uses) on ``127.0.0.1`` port 0 in a background thread, in this process (so a test can read the
server's memory and caches), and shuts it down when the tests of the session are done.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

import pytest


@dataclass(frozen=True)
class Served:
    """A running explorer: the app (``app.explorer`` its ``Explorer``) and its base URL."""

    app: Any
    url: str


@pytest.fixture(scope="session")
def explorer_server():
    pytest.importorskip("dash", reason="the explorer needs Dash: pip install -e '.[explore]'")
    from werkzeug.serving import make_server

    from icl_circuits.explorer.app import LOCALHOST, make_app

    app = make_app("toy-icl")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not one line per request
    server = make_server(LOCALHOST, 0, app.server, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="explorer-server", daemon=True)
    thread.start()
    try:
        yield Served(app, f"http://{LOCALHOST}:{server.server_port}")
    finally:
        server.shutdown()  # returns once serve_forever has stopped
        server.server_close()
        thread.join(timeout=10)
