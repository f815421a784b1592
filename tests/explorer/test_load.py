"""The explorer under load: 20 sessions at once against the loopback server, each a scripted walk
through the page sent the way Dash's renderer sends it (POST ``/_dash-update-component`` with the
callback's output, inputs and state exactly as ``/_dash-dependencies`` lists them), each on its own
prompt so the per-prompt caches fill, evict and are read concurrently.

Every answer must be 200 with every output of the callback (no error message for good inputs, the
input error for the one bad input of each session), the run must finish in bounded time, and the
server's memory must not grow past the bounded caches (``Explorer(cache_size=16)``).
"""

from __future__ import annotations

import gc
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest

requests = pytest.importorskip("requests")

from icl_circuits.explorer.inputs import ExplorerInputError  # noqa: E402

SESSIONS = 20
TOTAL_SECONDS = 120  # the whole concurrent run on toy-icl with 2 cores (it takes a few seconds)
RSS_GROWTH = 0.20  # RSS after the run within 20% of RSS after the warm-up: only bounded caches grow
REQUEST_TIMEOUT = 60


def rss_bytes() -> int:
    """This process's resident set size (the server runs in it), from /proc/self/status."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    pytest.skip("no /proc/self/status VmRSS here (not Linux)")


# ----------------------------------------------------------------------------- Dash's protocol
def split_outputs(output: str) -> list[dict[str, str]]:
    """A dependency's ``output`` string as the renderer splits it: ``..a.b...c.d..`` (several
    outputs) or ``a.b`` (one); each ``id.property`` at its last dot (``property`` may carry the
    ``@hash`` of an ``allow_duplicate`` output, which the renderer sends as it is)."""
    parts = output[2:-2].split("...") if output.startswith("..") else [output]
    return [{"id": p[:p.rindex(".")], "property": p[p.rindex(".") + 1:]} for p in parts]


@dataclass(frozen=True)
class Callback:
    """One entry of ``/_dash-dependencies``."""

    dep: dict[str, Any]

    @property
    def outputs(self) -> list[dict[str, str]]:
        return split_outputs(self.dep["output"])

    def body(self, values: dict[str, Any], changed: list[str]) -> dict[str, Any]:
        """The renderer's request body: ``values`` maps ``"id.property"`` to every input's and
        state's value, ``changed`` the inputs that triggered it."""
        def fill(items):
            return [{**i, "value": values[f"{i['id']}.{i['property']}"]} for i in items]
        multi = self.dep["output"].startswith("..")
        out = {"output": self.dep["output"], "outputs": self.outputs if multi else self.outputs[0],
               "inputs": fill(self.dep["inputs"]), "changedPropIds": changed, "parsedChangedPropsIds": changed}
        if self.dep["state"]:
            out["state"] = fill(self.dep["state"])
        return out


def callbacks(url: str) -> dict[str, Callback]:
    """The app's callbacks by the id of their first output."""
    deps = requests.get(f"{url}/_dash-dependencies", timeout=REQUEST_TIMEOUT).json()
    return {split_outputs(d["output"])[0]["id"]: Callback(d) for d in deps}


def call(http, url: str, cb: Callback, values: dict[str, Any], changed: list[str]) -> dict[str, dict[str, Any]]:
    """POST one callback; its outputs as ``{id: {property: value}}``, every declared output
    present (a view that answers leaves none unchanged)."""
    r = http.post(f"{url}/_dash-update-component", json=cb.body(values, changed), timeout=REQUEST_TIMEOUT)
    assert r.status_code == 200, (cb.dep["output"], r.status_code, r.text[:500])
    got = r.json()["response"]
    for o in cb.outputs:
        prop = o["property"].split("@")[0]
        assert prop in got.get(o["id"], {}), f"{cb.dep['output']}: no {o['id']}.{prop} in {list(got)}"
    return got


# ----------------------------------------------------------------------------- one session
@dataclass(frozen=True)
class Script:
    """One session's prompt and choices."""

    task: str
    seed: int
    demos: int
    layer: int
    head: int
    how: str


def scripts(ex) -> list[Script]:
    """A prompt per session, each with its own seed: the tasks in turn, skipping a prompt without a
    source task for the interventions view (country-capital has none on toy-icl); the explorer's
    caches are cleared after the choosing."""
    out: list[Script] = []
    seed = 100
    while len(out) < SESSIONS:
        seed += 1
        i = len(out)
        task, demos = ex.tasks[seed % len(ex.tasks)], 4 + i % 5
        if ex.sources(ex.settings(task, demos, seed)):
            out.append(Script(task, seed, demos, i % ex.n_layers, i % ex.n_heads, ("zero", "mean")[i % 2]))
        assert seed < 100 + 20 * SESSIONS, f"only {len(out)} prompts with a source task"
    ex.clear()
    return out


def bad_input_message(ex, s: Script) -> str:
    """What the page must say for 99 demos (more than the page allows)."""
    try:
        ex.settings(s.task, 99, s.seed)
    except ExplorerInputError as e:
        return str(e)
    raise AssertionError("99 demos was accepted")


def run_session(url: str, cbs: dict[str, Callback], s: Script, bad_message: str) -> list[float]:
    """The page's walk: controls -> prompt -> attention -> interventions -> heads (a head clicked),
    then one bad input. Returns each request's seconds."""
    times: list[float] = []
    with requests.Session() as http:
        def post(first_output: str, values: dict[str, Any], changed: list[str]) -> dict[str, dict[str, Any]]:
            t = time.perf_counter()
            got = call(http, url, cbs[first_output], values, changed)
            times.append(time.perf_counter() - t)
            return got

        controls = {"task.value": s.task, "demos.value": s.demos, "seed.value": s.seed,
                    "template.value": "default", "pairs.value": ""}
        got = post("settings", controls, ["task.value"])
        assert got["prompt-message"]["children"] == ""
        stored = got["settings"]["data"]
        assert (stored["task"], stored["n_demos"], stored["seed"]) == (s.task, s.demos, s.seed)

        got = post("token-strip", {"settings.data": stored}, ["settings.data"])
        assert got["prompt-message"]["children"] == ""
        assert len(got["token-strip"]["children"]) == len(got["roles"]["data"]) > 2 * s.demos
        assert "Top-5" in got["top-tokens"]["figure"]["layout"]["title"]["text"]

        got = post("attention", {"settings.data": stored, "att-layer.value": s.layer, "att-head.value": s.head,
                                 "tabs.value": "attention"}, ["tabs.value"])
        assert got["att-message"]["children"] == ""
        assert f"L{s.layer}H{s.head}" in got["attention"]["figure"]["layout"]["title"]["text"]

        got = post("source", {"settings.data": stored, "tabs.value": "interventions", "source.value": None},
                   ["tabs.value"])
        assert got["int-message"]["children"] == "" and got["source"]["options"]
        source = got["source"]["value"]
        values = {"settings.data": stored, "source.value": source, "position-set.value": "all answers",
                  "selection.data": [], "int-layer.value": s.layer, "tabs.value": "interventions"}
        got = post("int-outcome", values, ["source.value"])
        assert got["int-message"]["children"] == ""
        assert got["int-outcome"]["children"]["props"]["id"] == "int-outcome-text"
        assert source in got["int-curve"]["figure"]["layout"]["title"]["text"]

        got = post("heads-grid", {"settings.data": stored, "how.value": s.how, "tabs.value": "heads"},
                   ["tabs.value"])
        assert got["heads-message"]["children"] == ""
        click = {"points": [{"x": f"H{s.head}", "y": f"L{s.layer}", "curveNumber": 0}]}
        got = post("head-outcome", {"settings.data": stored, "how.value": s.how, "heads-grid.clickData": click,
                                    "tabs.value": "heads"}, ["heads-grid.clickData"])
        assert got["heads-message"]["children"] == ""
        outcome = got["head-outcome"]["children"]
        assert outcome["props"]["id"] == "head-outcome-text", outcome
        assert f"L{s.layer}H{s.head}, {s.how}-ablated" in str(outcome)

        # a bad input (more demos than allowed): still 200, the message says why, nothing else changes
        r = http.post(f"{url}/_dash-update-component", timeout=REQUEST_TIMEOUT,
                      json=cbs["settings"].body({**controls, "demos.value": 99}, ["demos.value"]))
        assert r.status_code == 200, r.text[:500]
        assert r.json()["response"] == {"prompt-message": {"children": bad_message}}
    return times


def run_all(url: str, cbs: dict[str, Callback], plan: list[Script], bad: list[str], workers: int) -> list[float]:
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(run_session, url, cbs, s, m) for s, m in zip(plan, bad)]
        return [t for f in futures for t in f.result()]


# ----------------------------------------------------------------------------- the test
def test_twenty_concurrent_sessions(explorer_server):
    url, ex = explorer_server.url, explorer_server.app.explorer
    assert ex.cache_size == 16
    cbs = callbacks(url)
    assert {"settings", "token-strip", "attention", "source", "int-outcome", "heads-grid",
            "head-outcome"} <= set(cbs), sorted(cbs)
    plan = scripts(ex)
    bad = [bad_input_message(ex, s) for s in plan]
    assert all(re.search(r"demos.*99", m) for m in bad), bad[0]

    # warm-up: the same 20 sessions at once, so imports, first-call costs, the server's threads and their
    # allocator arenas, and a full cache (16 prompts) are all in the baseline; then the cache is emptied so
    # that the measured run computes every prompt again and fills it back to its bound
    run_all(url, cbs, plan, bad, SESSIONS)
    ex.clear()
    gc.collect()
    warm = rss_bytes()

    start = time.perf_counter()
    times = run_all(url, cbs, plan, bad, SESSIONS)
    took = time.perf_counter() - start
    gc.collect()
    after = rss_bytes()

    assert len(times) == SESSIONS * 7
    assert took < TOTAL_SECONDS, f"{SESSIONS} sessions took {took:.1f} s"
    assert after <= warm * (1 + RSS_GROWTH), (
        f"RSS grew from {warm / 2**20:.0f} MiB after the warm-up to {after / 2**20:.0f} MiB after the run")
    print(f"\n{SESSIONS} sessions x 8 requests in {took:.1f} s (slowest request {max(times):.2f} s); "
          f"RSS {warm / 2**20:.0f} -> {after / 2**20:.0f} MiB")
