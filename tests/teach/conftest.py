"""The bundled toy model once per session for the teach checks (about 5 s to load)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def toy():
    from icl_circuits.core.models import load_model
    from tests.conftest import TEST_DEVICE

    return load_model("toy-icl", device=TEST_DEVICE)
